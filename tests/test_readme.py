"""The README's promises: its tour runs, and `make demo`'s entry point works."""

import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _env():
    return dict(os.environ, LITELLM_LOCAL_MODEL_COST_MAP="True", MPLBACKEND="Agg")


@pytest.mark.slow  # ~2 min (three topologies compile); `make test-all` runs it
def test_readme_tour_runs(tmp_path):
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "README.md has no python block"
    script = tmp_path / "tour.py"
    script.write_text(blocks[0])
    out = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=_env(),
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "QTcF before" in out.stdout and "val_rmse" in out.stdout


def test_readme_commands_and_ci():
    text = (ROOT / "README.md").read_text()
    assert "make demo" in text and "make test" in text
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_demo_help():
    out = subprocess.run([sys.executable, "-m", "leads_jax.demo", "--help"], env=_env(),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "--out" in out.stdout


@pytest.mark.slow
def test_demo_quick_end_to_end(tmp_path):
    out = subprocess.run([sys.executable, "-m", "leads_jax.demo", "--quick", "--out",
                          str(tmp_path)], env=_env(), capture_output=True, text=True,
                         timeout=1500)
    assert out.returncode == 0, out.stderr[-3000:]
    for name in ("ecg_cohort.nc", "ecg_cohort.png", "leads_ground_truth.nc",
                 "leads_run/report.md", "ecg_world_cohort.nc", "leads_run/results.nc",
                 "world_rollouts/rollouts.nc", "world_rollouts/rollouts.png"):
        assert (tmp_path / name).exists(), name
