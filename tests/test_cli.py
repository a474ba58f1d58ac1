"""The `leads` console script: simulate / info / measure / catalog, and its errors."""

import json
import subprocess
import sys

import pytest

from leads_jax.cli import main
from leads_jax.datasets import load_dataset
from leads_jax.structure import Structure


@pytest.fixture(scope="module")
def dataset_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "data.nc"
    rc = main(
        [
            "simulate",
            "--model",
            "AP",
            "--geometry",
            "cable",
            "--n-nodes",
            "24",
            "--t-train",
            "30",
            "--sites",
            "left,right",
            "--param",
            "D=0.001,0.0015",
            "--param",
            "a=0.12",
            "--out",
            str(path),
            "--quiet",
        ]
    )
    assert rc == 0
    return path


def test_simulate_writes_a_valid_dataset(dataset_path):
    ds = load_dataset(dataset_path)
    assert ds.sizes["sample"] == 2 and ds.sizes["node"] == 24
    assert ds["split"].values.tolist() == ["train", "test"]
    assert json.loads(ds.attrs["parameters"])["a"] == pytest.approx(0.12)
    assert ds.attrs["t_test"] == pytest.approx(90.0)
    # per-region ground truth: D differs between the two halves of the cable
    d = ds["true_parameters"].sel(parameter="D").values
    assert d[0] == pytest.approx(0.001, rel=1e-4) and d[-1] == pytest.approx(0.0015, rel=1e-4)
    s = Structure.from_json(ds.attrs["structure"])
    assert {p.name: p.mode for p in s.parameters}["D"] == "per-region"


def test_info_and_measure(dataset_path, capsys):
    assert main(["info", str(dataset_path)]) == 0
    out = capsys.readouterr().out
    assert "aliev-panfilov" in out and "sample 1: site right" in out
    assert main(["measure", str(dataset_path), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["pacing_site"] for r in rows] == ["left", "right"]
    assert all(r["activated_fraction"] > 0.9 for r in rows)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["simulate", "--model", "hodgkin-huxley", "--out", "x.nc"], "unknown reaction model"),
        (["simulate", "--sites", "apex", "--out", "x.nc"], "unknown pacing site 'apex'"),
        (["simulate", "--sites", "99", "--n-nodes", "10", "--out", "x.nc"], "off the mesh"),
        (["simulate", "--param", "a", "--out", "x.nc"], "NAME=VALUE"),
        (["simulate", "--geometry", "sheet", "--n-nodes", "5", "--out", "x.nc"], "--nx/--ny"),
        (["info", "does-not-exist.nc"], "no dataset"),
    ],
)
def test_errors_are_clear(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("leads: error:") and message in err


def test_console_entry_point_help():
    out = subprocess.run(
        [sys.executable, "-m", "leads_jax.cli", "simulate", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "--geometry" in out and "--model" in out
