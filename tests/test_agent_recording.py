"""Discovery on a user's recording: a single-cell action-potential train made by a
separate, hand-written simulator (below, not ``make_dataset``), imported with
``from_recording`` / ``leads import`` and searched with ``discover`` / ``leads
discover``. A recording has no fixed map to mV, so every candidate is fitted through
the bounded observation gain and offset (``with_observation_gain``), warm started by a
``refine``; validation and held-out scores are finite.

One topology (Aliev-Panfilov, no diffusion, observed through the map): the Python run
compiles it, the command-line run on the same recording reuses the programs.
"""

from __future__ import annotations

import dataclasses
import json
import math

import equinox as eqx
import jax
import numpy as np
import pytest

from leads_jax.agent import Budget, discover
from leads_jax.agent._data import discovery_data
from leads_jax.agent._loop import _fit_inputs
from leads_jax.cli import main
from leads_jax.datasets import FitData, make_dataset
from leads_jax.fit import FitConfig, load_results
from leads_jax.geometry import Geometry
from leads_jax.recording import ObservedModel, from_recording
from leads_jax.structure import Catalog, Structure

CONFIG = FitConfig(steps=30, learning_rate=0.05)  # what the CLI builds from its flags
ONLY_AP = Catalog.default().only("aliev-panfilov")
BUDGET = Budget(rounds=2, candidates=2, k=1, patience=5)


def aliev_panfilov_cell(period=500.0, beats=4, dt=0.02, every=4.0):
    """Aliev & Panfilov (1996) in one cell (k = 9, a = 0.13, 12.9 ms per model time
    unit), forward Euler at 20 us in plain numpy, paced with 2 ms pulses of 0.5 / ms,
    scaled to -90 + 110 u mV (not the catalog model's fixed -80 + 100 u)."""
    k, a, eps0, mu1, mu2, scale = 9.0, 0.13, 0.002, 0.2, 0.3, 12.9
    u = v = 0.0
    onsets = 10.0 + period * np.arange(beats)
    every_k = int(round(every / dt))
    ts, out = [], []
    for i in range(int(round(period * beats / dt)) + 1):
        t = i * dt
        if i % every_k == 0:
            ts.append(t)
            out.append(u)
        stim = 0.5 if np.any((t >= onsets) & (t < onsets + 2.0)) else 0.0
        du = (-k * u * (u - a) * (u - 1.0) - u * v) / scale + stim
        dv = (eps0 + mu1 * v / (mu2 + u)) * (-v - k * u * (u - a - 1.0)) / scale
        u, v = u + dt * du, v + dt * dv
    return np.asarray(ts), -90.0 + 110.0 * np.asarray(out), onsets


@pytest.fixture(scope="module")
def cell():
    return aliev_panfilov_cell()


def test_recording_candidates_are_fitted_through_the_gain(cell):
    """Which inputs ``fit`` gets (nothing compiled): wrapped models for a recording,
    plain structures for simulated data, and the switch both ways."""
    t, vm, onsets = cell
    rec = discovery_data(from_recording(vm, time=t, pacing={"times": onsets}))
    assert rec.observation_gain and "fitted gain and offset" in rec.summary()
    sim = discovery_data(make_dataset("aliev-panfilov", Geometry.cable(8), t_train=10.0,
                                      save_every=2.0, seed=0))
    assert not sim.observation_gain
    assert discovery_data(sim, observation_gain=True).observation_gain
    assert not discovery_data(rec, observation_gain=False).observation_gain
    from leads_jax.agent._loop import Candidate
    from leads_jax.agent._methods import resolve_method

    s = Structure.make("aliev-panfilov", "none", free=("a",))
    c = Candidate(1, 1, 0, "", "k", s, None, warm=0)
    params = {"a": 0.2, "obs_gain": 1.3, "obs_offset_mV": -7.0}
    obs = {0: type("O", (), {"params": params})()}
    [m] = _fit_inputs([c], resolve_method("leads"), rec, jax.random.key(0), obs)
    assert isinstance(m, ObservedModel)
    assert float(m.gain()) == pytest.approx(1.3) and float(m.offset()) == pytest.approx(-7.0)
    [plain] = _fit_inputs([c], resolve_method("leads"), sim, jax.random.key(0), obs)
    assert plain is s


def test_discover_on_a_hand_simulated_recording_api_and_cli(cell, tmp_path, capsys):
    t, vm, onsets = cell
    assert vm.max() > 20.0 and vm.min() < -89.0
    data = from_recording(vm, time=t, pacing={"times": onsets, "duration": 2.0})
    res = discover(data, budget=BUDGET, key=jax.random.key(0), out=tmp_path / "api",
                   catalog=ONLY_AP, config=CONFIG, progress=False)
    assert [o.round for o in res.history] == [0, 1]
    for o in res.history:
        assert o.stable, o
        assert math.isfinite(o.train_rmse) and math.isfinite(o.val_rmse), o
        assert math.isfinite(o.heldout_rmse), o  # the val window lies after t_train
        assert {"obs_gain", "obs_offset_mV"} <= set(o.params)
        assert "gain" in o.formula
    assert res.best is not None and math.isfinite(res.test_rmse)
    g, off = res.observation.params["obs_gain"], res.observation.params["obs_offset_mV"]
    assert 0.5 < g < 2.0 and -40.0 < off < 40.0 and (abs(g - 1) > 1e-3 or abs(off) > 0.1)
    assert "refine" in res.history[1].origin  # warm started, the map included
    assert res.timings[1]["fit_n_train_programs"] == 0  # freeing parameters: data
    assert json.loads((tmp_path / "api" / "run.json").read_text())["observation_gain"]

    # the same through the command line: leads import, then leads discover
    csv = tmp_path / "trace.csv"
    np.savetxt(csv, np.stack([t, vm], 1), delimiter=",", header="time,V", comments="")
    rec = tmp_path / "rec.nc"
    assert main(["import", str(csv), "--pacing-times", ",".join(f"{x:g}" for x in onsets),
                 "--duration", "2", "--out", str(rec), "--quiet"]) == 0
    out = tmp_path / "cli"
    assert main(["discover", "--data", str(rec), "--out", str(out), "--budget-rounds", "2",
                 "--budget-candidates", "2", "--per-round", "1", "--patience", "5",
                 "--steps", "30", "--learning-rate", "0.05", "--without",
                 "fitzhugh-nagumo,mitchell-schaeffer,fenton-karma,bueno-orovio",
                 "--quiet", "--no-compile-cache"]) == 0
    text = capsys.readouterr().out
    assert "observed V = offset + gain * V_model" in text and "held-out test RMSE" in text
    ds = load_results(out / "results.nc")
    assert ds.sizes["candidate"] == 2
    for v in ("train_rmse", "val_rmse", "heldout_rmse"):
        assert np.all(np.isfinite(ds[v].values)), v
    assert math.isfinite(float(ds.attrs["test_rmse_mV"]))
    assert json.loads((out / "run.json").read_text())["observation_gain"] is True
    # the CLI run reads the file the API run's data were written as: same scores
    api = load_results(tmp_path / "api" / "results.nc")
    np.testing.assert_allclose(ds["val_rmse"].values, api["val_rmse"].values, rtol=1e-5)


def test_suspicious_inputs_are_errors_or_recorded_warnings(cell):
    """The silent acceptances of the agent issue, at the agent's data input (no fit): a
    disconnected mesh is a recorded warning (and an error in from_recording unless
    allowed), a training horizon past the record's end an error, all-zero pacing sites
    an error in from_recording and a recorded warning in a dataset."""
    t, vm, onsets = cell
    verts = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [5, 5, 0], [6, 5, 0], [5, 6, 0]]) * 0.1
    mesh = {"vertices": verts, "faces": np.array([[0, 1, 2], [3, 4, 5]])}
    v6 = np.tile(vm[:, None], (1, 6))
    pacing = {"sites": [0], "times": onsets}
    with pytest.raises(ValueError, match="disconnected"):
        from_recording(v6, time=t, geometry=mesh, pacing=pacing)
    fd = from_recording(v6, time=t, geometry=mesh, pacing=pacing, allow_disconnected=True)
    d = discovery_data(fd)
    assert [w for w in d.warnings if "disconnected" in w] == [
        "data: the geometry is disconnected: 2 separate components (a wave cannot cross "
        "between them)"]
    # a dataset that does not say so itself (not from from_recording): found here
    quiet = dataclasses.replace(fd, warnings=())
    assert not quiet.warnings
    assert any("disconnected: 2 separate components" in w
               for w in discovery_data(quiet).warnings)
    assert not any("disconnected" in w for w in discovery_data(
        from_recording(vm, time=t, pacing={"times": onsets})).warnings)
    # all-zero pacing of one sample: a recorded warning
    unpaced = dataclasses.replace(fd, stimuli=eqx.tree_at(
        lambda st: st.sites, fd.stimuli, np.zeros_like(np.asarray(fd.stimuli.sites))))
    assert any("zero everywhere" in w for w in discovery_data(unpaced).warnings)
    with pytest.raises(ValueError, match="all zero"):
        from_recording(vm, time=t, pacing={"sites": [0.0], "times": onsets})
    # a training horizon past the record's end: an error, in from_recording and FitData
    with pytest.raises(ValueError, match="past the record's end"):
        from_recording(vm, time=t, pacing={"times": onsets}, split={"times": (1e4, 2e4)})
    with pytest.raises(ValueError, match="t_train"):
        dataclasses.replace(fd, t_train=float(t[-1]) + 100.0)
    assert isinstance(fd, FitData)
