"""A user's own recording: made by a separate hand-written simulator (not make_dataset),
imported with from_recording / `leads import`, fitted with finite validation and held-out
scores; the importer's formats and its errors."""

import json
import math
import pathlib
import re
import runpy

import jax
import numpy as np
import pytest
import xarray as xr

from leads_jax import FitConfig, Structure, compile_structure, fit
from leads_jax.cli import main
from leads_jax.datasets import FitData
from leads_jax.geometry import Geometry
from leads_jax.recording import (
    from_recording,
    load_recording,
    recording_dataset,
    save_recording,
    with_observation_gain,
)


def mitchell_schaeffer_cell(period=150.0, beats=4, t_end=600.0, dt=0.01, every=2.0,
                            tau_close=50.0):
    """A single-cell action-potential train: the two-variable Mitchell-Schaeffer model
    (Bull Math Biol 2003) with its original discontinuous gate, forward Euler at 10 us in
    plain numpy, paced with 1 ms pulses, scaled to -85..+33 mV."""
    tau_in, tau_out, tau_open, v_gate = 0.3, 6.0, 120.0, 0.13
    v, h = 0.0, 1.0
    onsets = 10.0 + period * np.arange(beats)
    every_k = int(round(every / dt))
    ts, out = [], []
    for i in range(int(round(t_end / dt)) + 1):
        t = i * dt
        if i % every_k == 0:
            ts.append(t)
            out.append(v)
        stim = 0.5 if np.any((t >= onsets) & (t < onsets + 1.0)) else 0.0
        dv = h * v * v * (1.0 - v) / tau_in - v / tau_out + stim
        dh = (1.0 - h) / tau_open if v < v_gate else -h / tau_close
        v, h = v + dt * dv, h + dt * dh
    return np.asarray(ts), -85.0 + 118.0 * np.asarray(out), onsets


@pytest.fixture(scope="module")
def cell():
    return mitchell_schaeffer_cell()


def test_hand_simulated_recording_fits_with_finite_scores(cell, tmp_path):
    t, vm, onsets = cell
    assert vm.max() > 20.0 and vm.min() < -84.0  # a real AP train, -85..+33 mV scale
    data = from_recording(vm, time=t, pacing={"times": onsets, "duration": 1.0})
    assert isinstance(data, FitData) and data.geometry.kind == "single-cell"
    assert list(data.splits) == ["train", "val", "test"]  # by beat: 2 / 1 / 1
    assert data.splits["val"].t_start == data.t_train == onsets[2] - t[0]
    # through the file, as `leads import` writes it
    data = load_recording(save_recording(data, tmp_path / "rec.nc"))
    s = Structure.make("mitchell-schaeffer", "none", free=("tau_close", "tau_out"),
                       values={"tau_close": 80.0})
    model = with_observation_gain(compile_structure(s, data.geometry, key=jax.random.key(0)))
    # default max_steps: the rollout that scores the validation window (after t_train) is
    # sized by the longer of the train and val windows
    res = fit([model], data, FitConfig(steps=30, eval_every=10, learning_rate=5e-2),
              key=jax.random.key(1), progress=False)
    d = res.dataset
    for k in ("train_rmse", "val_rmse", "test_rmse"):
        assert math.isfinite(float(d[k].values[0])), (k, d)
    assert bool(d["stable"].values[0])
    assert res.best() == 0
    curve = np.asarray(d["train_curve"].values[0], float)
    curve = curve[np.isfinite(curve)]
    assert curve[-1] < curve[0]  # the fit (gain, offset, time constants) improves
    fitted = res.models[0].fitted_values()
    assert {"obs_gain", "obs_offset_mV", "tau_close", "tau_out"} <= set(fitted)
    assert 0.5 < fitted["obs_gain"] < 2.0


def test_formats_agree(cell, tmp_path):
    t, vm, onsets = cell
    pacing = {"times": onsets, "duration": 1.0}
    ref = from_recording(vm, time=t, pacing=pacing)
    np.savetxt(tmp_path / "a.csv", np.stack([t, vm], 1), delimiter=",", header="time,V",
               comments="")
    np.savetxt(tmp_path / "b.csv", np.stack([t / 1000.0, vm / 1000.0], 1), delimiter=" ")
    np.savez(tmp_path / "c.npz", voltage=vm, time=t)
    np.save(tmp_path / "d.npy", vm[:, None])
    xr.Dataset({"voltage": (("time",), vm, {"units": "mV"})},
               coords={"time": ("time", t, {"units": "ms"})}).to_netcdf(
        tmp_path / "e.nc", engine="h5netcdf")
    variants = [
        from_recording(tmp_path / "a.csv", pacing=pacing),
        from_recording(tmp_path / "b.csv", time_unit="s", voltage_unit="V",
                       pacing={"times": onsets / 1000.0, "duration": 1e-3}),
        from_recording(tmp_path / "c.npz", pacing=pacing),
        from_recording(tmp_path / "d.npy", time=2.0, pacing=pacing),
        from_recording(tmp_path / "e.nc", pacing=pacing),
        from_recording(vm, time=2.0, pacing={"period": 150.0, "start": 10.0, "count": 4,
                                             "duration": 1.0}),
    ]
    for v in variants:
        np.testing.assert_allclose(v.observed, ref.observed, rtol=1e-5, atol=1e-3)
        np.testing.assert_allclose(v.time, ref.time, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(np.asarray(v.stimuli.onsets), np.asarray(ref.stimuli.onsets),
                                   atol=1e-3)
        for name, sp in ref.splits.items():
            assert v.splits[name].samples == sp.samples
            assert v.splits[name].t_end == pytest.approx(sp.t_end)


def test_tissue_geometries_regions_and_splits(tmp_path):
    rng = np.random.default_rng(0)
    t = np.arange(0.0, 100.0, 1.0)
    v = -80.0 + rng.normal(0, 1, (t.size, 6))
    cable = from_recording(v, time=t, geometry={"spacing": 0.05},
                           pacing={"sites": [0], "times": [5.0]},
                           regions=["a", "a", "a", "b", "b", "b"])
    assert cable.geometry.kind == "cable" and cable.geometry.region_names == ("a", "b")
    assert cable.splits["train"].t_end == pytest.approx(59.4)  # by time: one beat only
    sheet = from_recording(v, time=t, geometry={"spacing": 0.05, "shape": (3, 2)},
                           pacing={"sites": "left", "times": [5.0]},
                           split={"times": (40.0, 70.0)})
    assert sheet.geometry.kind == "sheet" and sheet.t_train == 40.0
    # a mesh file with region labels: two triangles sharing an edge
    verts = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0]], float) * 0.1
    faces = np.array([[0, 1, 2], [1, 3, 2]])
    np.savez(tmp_path / "mesh.npz", vertices=verts, faces=faces, regions=np.array([0, 0, 1, 1]),
             region_names=np.array(["base", "apex"]))
    mesh = from_recording(v[:, :4], time=t, geometry=tmp_path / "mesh.npz",
                          pacing={"sites": [0, 1], "times": [5.0, 50.0]},
                          split={"times": (40.0, 70.0)})
    assert mesh.geometry.kind == "mesh" and mesh.geometry.region_names == ("base", "apex")
    back = load_recording(recording_dataset(mesh))
    assert back.splits == mesh.splits and back.geometry.region_names == ("base", "apex")
    # whole runs as splits
    three = from_recording(np.stack([v[:, :1]] * 3), time=t, pacing={"times": [5.0]},
                           split={"samples": {"train": [0], "val": [1], "test": [2]}})
    assert three.splits["test"].samples == (2,) and three.n_samples == 3


def test_bad_inputs_are_named(cell, tmp_path):
    t, vm, onsets = cell
    pacing = {"times": onsets, "duration": 1.0}
    cases = [
        (dict(traces=vm, time=t, pacing={"sites": [0.0], "times": onsets}), "all zero"),
        (dict(traces=vm, time=t, pacing=pacing, split={"times": (900.0, 950.0)}),
         "past the record's end"),
        (dict(traces=vm, time=t, pacing=pacing, split={"beats": (3, 2)}), "needs at least 6"),
        (dict(traces=np.where(t > 100, np.nan, vm), time=t, pacing=pacing), "NaN"),
        (dict(traces=vm, time=t[:-1], pacing=pacing), "time points"),
        (dict(traces=vm, pacing=pacing), "no time axis"),
        (dict(traces=vm, time=t, time_unit="min", pacing=pacing), "unknown time unit"),
        (dict(traces=np.stack([vm] * 3, 1), time=t, pacing=pacing), "single-cell"),
        (dict(traces=vm, time=t, pacing={"times": [-5.0]}), "precedes"),
        (dict(traces=vm, time=t, pacing={"site": 0, "times": onsets}), "unknown key"),
        (dict(traces=vm, time=t, pacing={"duration": 1.0}), "needs 'times'"),
        (dict(traces=vm, time=t, pacing={"period": 0.0}), "period must be > 0"),
    ]
    for kw, match in cases:
        with pytest.raises(ValueError, match=match):
            from_recording(kw.pop("traces"), **kw)
    # a disconnected mesh: an error, or a recorded warning when allowed
    verts = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [5, 5, 0], [6, 5, 0], [5, 6, 0]]) * 0.1
    mesh = {"vertices": verts, "faces": np.array([[0, 1, 2], [3, 4, 5]])}
    v6 = np.tile(vm[:, None], (1, 6))
    with pytest.raises(ValueError, match="disconnected"):
        from_recording(v6, time=t, geometry=mesh, pacing={"sites": [0], "times": onsets})
    ok = from_recording(v6, time=t, geometry=mesh, pacing={"sites": [0], "times": onsets},
                        allow_disconnected=True)
    assert any("disconnected" in w for w in ok.warnings)
    # units the file states are checked, values outside mV range are flagged
    xr.Dataset({"voltage": (("time",), vm / 1000.0, {"units": "V"})},
               coords={"time": ("time", t)}).to_netcdf(tmp_path / "v.nc", engine="h5netcdf")
    with pytest.raises(ValueError, match="voltage_unit='V'"):
        from_recording(tmp_path / "v.nc", pacing=pacing)
    flagged = from_recording(vm * 1000.0, time=t, pacing=pacing)
    assert any("voltage_unit" in w for w in flagged.warnings)
    silent = from_recording(vm, time=t, pacing=None)
    assert any("zero everywhere" in w for w in silent.warnings)


def test_stored_splits_are_read_by_from_dataset(cell, tmp_path):
    """The split windows of a saved recording are read by FitData.from_dataset itself: a
    file opened with plain xarray (or its path) gives the splits, provenance and warnings
    that were saved; a damaged ``splits`` attribute is a named error."""
    t, vm, onsets = cell
    data = from_recording(vm, time=t, pacing={"times": onsets, "duration": 1.0})
    path = save_recording(data, tmp_path / "rec.nc")
    with xr.open_dataset(path, engine="h5netcdf") as f:
        ds = f.load()
    for back in (FitData.from_dataset(ds), FitData.from_dataset(path), load_recording(path)):
        assert back.splits == data.splits
        assert back.splits["val"].t_start == data.t_train  # a window in time, not labels
        assert (back.t_train, back.provenance, back.warnings) == (
            data.t_train, data.provenance, data.warnings)
    for bad in ("not json", json.dumps([1, 2]), json.dumps({"train": {"t_end": 5.0}})):
        with pytest.raises(ValueError, match="attribute 'splits' is not valid split JSON"):
            FitData.from_dataset(ds.assign_attrs(splits=bad))
    outside = json.dumps({"train": {"samples": [3], "t_end": 300.0, "t_start": None}})
    with pytest.raises(ValueError, match=r"sample\(s\) \[3\] outside"):
        FitData.from_dataset(ds.assign_attrs(splits=outside))


def test_single_cell_geometry_round_trips():
    g = Geometry.single_cell()
    assert (g.n_nodes, g.n_edges, g.kind) == (1, 0, "single-cell")
    a = g.to_arrays()
    back = Geometry.from_arrays(a["vertices"], a["edges"], a["edge_weights"], a["mass"],
                                a["regions"], kind="single-cell")
    assert back.kind == "single-cell" and back.pacing_site("cell") == (0,)
    with pytest.raises(ValueError, match="single-cell"):
        Geometry.from_arrays(np.zeros((2, 3)), a["edges"], a["edge_weights"], np.ones(2),
                             np.zeros(2, int), kind="single-cell")


def test_cli_import(cell, tmp_path, capsys):
    t, vm, onsets = cell
    np.savetxt(tmp_path / "trace.csv", np.stack([t, vm], 1), delimiter=",", header="time,V",
               comments="")
    out = tmp_path / "data.nc"
    rc = main(["import", str(tmp_path / "trace.csv"), "--pacing-period", "150",
               "--pacing-start", "10", "--pacing-count", "4", "--duration", "1",
               "--out", str(out)])
    assert rc == 0 and "wrote" in capsys.readouterr().out
    data = load_recording(out)
    assert data.n_samples == 1 and list(data.splits) == ["train", "val", "test"]
    ds = xr.open_dataset(out, engine="h5netcdf")
    assert ds["observed"].attrs["units"] == "mV" and json.loads(ds.attrs["splits"])
    ds.close()
    rc = main(["import", str(tmp_path / "trace.csv"), "--pacing-times", "10",
               "--split-times", "900,950", "--out", str(out)])
    assert rc == 2 and "past the record's end" in capsys.readouterr().err


def test_readme_recording_example_runs(tmp_path, monkeypatch, capsys):
    text = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text.split("## Your own recordings", 1)[1]
    block = re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)
    script = tmp_path / "example.py"
    script.write_text(block)
    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(script), run_name="__main__")
    out = capsys.readouterr().out
    assert "train None 310.0" in out and "val 310.0 460.0" in out
    assert load_recording(tmp_path / "recording.nc").t_train == 310.0


def test_agent_reads_an_imported_recording_with_its_windows(cell, tmp_path):
    """`leads discover --data` on a file from `leads import`: the agent's reader keeps the
    recording's validation and held-out time windows (read by FitData.from_dataset, so the
    path and the FitData read from it give the same splits)."""
    from leads_jax.agent._data import discovery_data

    t, vm, onsets = cell
    path = save_recording(from_recording(vm, time=t, pacing={"times": onsets,
                                                             "duration": 1.0}),
                          tmp_path / "rec.nc")
    dd = discovery_data(str(path))
    assert discovery_data(FitData.from_dataset(path)).fit_data.splits == dd.fit_data.splits
    assert list(dd.fit_data.splits) == ["train", "val", "test"]
    assert dd.fit_data.splits["val"].t_start == pytest.approx(dd.t_train)
