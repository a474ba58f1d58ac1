"""The fitting engine on the real stack: grammar -> compile -> simulate (diffrax) -> fit.

One small Aliev-Panfilov problem (64-node cable, 40 ms training horizon) is fitted
once per module with four candidates of one topology, a quarter of which diverge;
the tests below read that fit. Compilation of the diffrax solve with its reverse
mode dominates the cost, so every fit here reuses one compiled training program.
The acceptance-size parameter recovery lives in tests/test_fit_recovery.py (slow).
"""

from __future__ import annotations

import json
import math
from unittest import mock

import jax
import numpy as np
import pytest

from leads_jax.datasets import geometry_from_dataset, make_dataset
from leads_jax.fit import FitConfig, fit, load_candidate, load_results, read_candidate_header
from leads_jax.geometry import Geometry
from leads_jax.structure import Structure

DT = 0.25  # ms; RK4 is stable here for the physiological conductivity (D/dx^2 = 1.6/ms)
TRUE = {"a": 0.15, "k": 8.0, "eps0": 0.01, "D": 0.001}
# audit=False: the stability audit compiles one more (3x horizon) program; it is covered
# by tests/test_fit_engine.py (audit_members) and tests/test_fit_recovery.py (slow, fit).
CFG = FitConfig(learning_rate=0.03, steps=30, eval_every=10, patience=None, dt=DT,
                aphynity_weight=0.0, audit=False)


def candidate(free, factors, **overrides):
    values = {n: TRUE[n] * f for n, f in zip(("a", "k", "eps0", "D"), factors, strict=True)}
    values.update(overrides)
    return Structure.make("aliev-panfilov", free=free, values=values)


CANDIDATES = [
    candidate(("D",), (1, 1, 1, 0.8)),  # only the conductivity is wrong and free
    candidate(("a", "k", "eps0", "D"), (1.1, 0.9, 1.1, 0.9)),
    candidate(("a", "k", "eps0", "D"), (1, 1, 1, 1), D=0.5),  # absurd: explicit RK4 explodes
    candidate(("k", "D"), (1, 0.9, 1, 1.1)),
]
DIVERGING = 2


@pytest.fixture(scope="module")
def dataset():
    return make_dataset("aliev-panfilov", Geometry.cable(64), t_train=40.0, save_every=2.0,
                        noise=0.01, parameters={"eps0": TRUE["eps0"]}, dt=DT, seed=0)


@pytest.fixture(scope="module")
def fitted(dataset):
    return fit(CANDIDATES, dataset, CFG, key=jax.random.key(0), progress=False)


# ----------------------------------------------------------------------------- bad input
def test_bad_inputs_fail_before_any_compilation(dataset):
    boom = mock.Mock(side_effect=AssertionError("compiled before validating the inputs"))
    with mock.patch("leads_jax.fit._fit.compile_structure", boom):
        with pytest.raises(ValueError, match="candidate list is empty"):
            fit([], dataset, CFG, key=jax.random.key(0))
        nan = dataset.copy(deep=True)
        nan["observed"][1, 3, 5] = np.nan
        with pytest.raises(ValueError, match=r"NaN.*sample\(s\) \[1\]"):
            fit(CANDIDATES[:1], nan, CFG, key=jax.random.key(0))
        with pytest.raises(ValueError, match="geometry mismatch.*32 nodes"):
            fit(CANDIDATES[:1], dataset, CFG, key=jax.random.key(0), geometry=Geometry.cable(32))
        with pytest.raises(ValueError, match="geometry mismatch"):
            fit(CANDIDATES[:1], dataset, CFG, key=jax.random.key(0),
                geometry=Geometry.cable(64, dx=0.05))
        with pytest.raises(ValueError, match="FitConfig.learning_rate"):
            fit(CANDIDATES[:1], dataset, {"learning_rate": -0.1}, key=jax.random.key(0))
        with pytest.raises(ValueError, match=r"unknown FitConfig field\(s\) \['lr'\]"):
            fit(CANDIDATES[:1], dataset, {"lr": 0.1}, key=jax.random.key(0))
        with pytest.raises(ValueError, match="candidate 1 is invalid"):
            fit([CANDIDATES[0], Structure.make("aliev-panfilov", free=("nope",))], dataset,
                CFG, key=jax.random.key(0))
        with pytest.raises(ValueError, match="not a Structure"):
            fit([42], dataset, CFG, key=jax.random.key(0))
        with pytest.raises(ValueError, match="xarray.Dataset or a path"):
            fit(CANDIDATES[:1], {"observed": 1}, CFG, key=jax.random.key(0))
    boom.assert_not_called()


# ----------------------------------------------------------------------------- fitting
def test_results_dataset(fitted):
    ds = fitted.dataset
    assert ds.sizes["candidate"] == len(CANDIDATES)
    assert [Structure.from_json(s) for s in ds["structure"].values] == CANDIDATES
    assert ds["n_params"].values.tolist() == [1, 4, 4, 2]
    assert np.isnan(ds["params"].sel(param="a").values[[0, 3]]).all()
    assert ds["train_curve"].shape[1] == CFG.steps
    assert (ds["eval_step"].values == [0, 10, 20, 30]).all()
    for name in ("train_rmse", "val_rmse", "test_rmse"):
        assert ds[name].attrs["units"] == "mV"
    assert json.loads(ds.attrs["config"])["steps"] == CFG.steps
    ok = np.arange(len(CANDIDATES)) != DIVERGING
    # fitted down to about the noise (1% of the ~105 mV range)
    assert (ds["train_rmse"].values[ok] < 2.5).all()
    assert np.isnan(ds["test_rmse"].values[ok]).all()  # no audit here
    assert fitted.best() in np.flatnonzero(ok)


def test_conductivity_recovered(fitted):
    d = fitted.dataset["params"].sel(param="D").values[0]
    assert d == pytest.approx(TRUE["D"], rel=0.05)


def test_fault_injection_marks_and_isolates(fitted, dataset):
    """A quarter of the batch diverges: marked unstable with a reason, worst score; the
    others' final losses equal fitting them alone at the same padded shape."""
    ds = fitted.dataset
    row = ds.isel(candidate=DIVERGING)
    assert not bool(row["stable"]) and row["fit_status"].item().startswith("diverged")
    assert "bounds" in row["stability_reason"].item() and "t=" in row["stability_reason"].item()
    assert math.isinf(row["test_rmse"].item()) and math.isinf(row["train_rmse"].item())
    assert np.isfinite(row["t_diverged"].item())
    assert ds["stable"].values.tolist() == [True, True, False, True]
    calls = []
    import leads_jax.simulate as sim

    real = sim.simulate

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    cfg = FitConfig(**{**CFG.to_dict(), "min_bucket": len(CANDIDATES)})
    with mock.patch.object(sim, "simulate", counting):
        for i in (1, 3):
            alone = fit([CANDIDATES[i]], dataset, cfg, key=jax.random.key(0), progress=False)
            np.testing.assert_allclose(alone.dataset["train_loss"].values[0],
                                       ds["train_loss"].values[i], rtol=1e-4)
    # one compilation per topology and bucket size: nothing was traced again
    assert calls == []


def test_saved_candidates_reload_to_identical_predictions(fitted, dataset, tmp_path):
    import equinox as eqx

    from leads_jax.fit import SimulateRollout, evaluate_members, prepare, stack_members
    from leads_jax.fit._fit import _max_steps

    fitted.save(tmp_path)
    geo = geometry_from_dataset(dataset)
    back = load_results(tmp_path / "results.nc")
    assert back["stable"].values.tolist() == fitted.dataset["stable"].values.tolist()
    path = tmp_path / "candidate_0003.eqx"
    header = read_candidate_header(path)
    assert header["metadata"]["stable"] is True and "k" in header["metadata"]["params"]
    structure, model, meta = load_candidate(path, geo)
    assert structure == CANDIDATES[3]
    assert bool(eqx.tree_equal(model, fitted.models[3]))
    # predictions through the fit's own (already compiled) evaluation program
    train = prepare(CANDIDATES[:1], dataset, CFG).train
    rollout = SimulateRollout("rk4", DT, _max_steps(train.ts, DT, CFG), False)
    stacked = stack_members([fitted.models[3], model] * 2)
    params, rest = eqx.partition(stacked, model.trainable_filter())
    ev = evaluate_members(params, rest, rollout=rollout, context=geo, data=train, config=CFG)
    assert ev["loss"][0] == ev["loss"][1]
    np.testing.assert_allclose(ev["loss"][0], fitted.dataset["train_loss"].values[3], rtol=1e-6)
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*"))
