"""The discovery loop end to end on a 32-node cable (acceptance of the agent issue).

One process, one fitting configuration, one data shape: the three ground truths
(Aliev-Panfilov, FitzHugh-Nagumo, Mitchell-Schaeffer, each at parameters away from the
catalog defaults) share the compiled programs of the three physics topologies, so the
model-selection runs, the determinism check, the report rebuild and the ablations pay
for compilation once. The catalog has no closures here (closure methods are in
tests/test_agent_methods.py).
"""

from __future__ import annotations

import dataclasses
import json
import math

import jax
import numpy as np
import pytest

from leads_jax.agent import Budget, Observation, Selection, discover, select, write_report
from leads_jax.datasets import make_dataset
from leads_jax.fit import FitConfig, load_results
from leads_jax.geometry import Geometry
from leads_jax.structure import Catalog

TRUTHS = {
    "aliev-panfilov": {"a": 0.13, "k": 9.0},
    "fitzhugh-nagumo": {"a": 0.15, "c1": 0.24},
    "mitchell-schaeffer": {"tau_in": 0.33, "tau_out": 5.5},
}
CONFIG = FitConfig(steps=30, learning_rate=0.03, eval_every=10, patience=None, dt=0.25)
CATALOG = dataclasses.replace(
    Catalog.default().only("aliev-panfilov", "fitzhugh-nagumo", "mitchell-schaeffer"),
    closures=(), diffusions=("laplacian",))
BUDGET = Budget(rounds=2, candidates=5, k=3)


def make(truth):
    return make_dataset(truth, Geometry.cable(32), t_train=36.0, save_every=2.0, noise=0.01,
                        seed=1, dt=0.25, parameters=TRUTHS[truth])


@pytest.fixture(scope="module")
def data():
    return {t: make(t) for t in TRUTHS}


@pytest.fixture(scope="module")
def runs(data, tmp_path_factory):
    out = {}
    for t in TRUTHS:
        folder = tmp_path_factory.mktemp(t)
        out[t] = discover(data[t], budget=BUDGET, key=jax.random.key(0), out=folder,
                          catalog=CATALOG, config=CONFIG, progress=False)
    return out


def test_offline_discovery_selects_the_true_reaction_model(runs):
    for truth, res in runs.items():
        assert res.best is not None, truth
        assert res.best.canonical().reaction == truth, (truth, res.observation.formula)
        assert math.isfinite(res.test_rmse) and res.test_rmse < 10.0, (truth, res.test_rmse)
        assert res.observation.val_rmse < 10.0
        # the held-out score is on the test sites, never seen during the search
        assert all(o.round <= 1 for o in res.history)


def test_compilations_equal_topology_groups_and_repeat_rounds_compile_nothing(runs):
    first = runs["aliev-panfilov"].timings
    # round 0: one training program per topology (3 reaction models); round 1 only
    # frees parameters (data, not topology) and compiles no program at all
    assert first[0]["fit_n_train_programs"] == 3
    for res in runs.values():
        assert res.timings[1]["fit_n_train_programs"] == 0
        assert res.timings[1]["fit_n_programs"] == 0
        assert res.timings[1]["observe_n_programs"] == 0
    for res in list(runs.values())[1:]:  # the other truths reuse every program
        assert res.timings[0]["fit_n_train_programs"] == 0
    report = (runs["aliev-panfilov"].out / "report.md").read_text()
    assert "compile" in report and "train s" in report


def test_memory_topk_reflection_and_transcript(runs):
    res = runs["fitzhugh-nagumo"]
    keys = [json.dumps(o.spec) for o in res.history]
    assert len(keys) == len(set(keys))  # nothing fitted twice
    events = [t["event"] for t in res.transcript]
    assert events.count("reflect") == 2 and "best" in events
    reflect = [t for t in res.transcript if t["event"] == "reflect"][0]["text"]
    assert "plan:" in reflect and "Best so far" in reflect
    o = res.history[0]
    assert o.verdict in ("generalises", "degrades", "fails-to-extrapolate", "unstable")
    assert set(o.rmse_by_phase) == {"upstroke", "plateau", "repolarisation", "rest"}
    assert o.rmse_by_region is not None and len(o.rmse_by_region) == 2
    assert math.isfinite(o.cv_model) and math.isfinite(o.cv_data)


def test_same_seed_same_transcript_and_results(runs, data, tmp_path):
    again = discover(data["aliev-panfilov"], budget=BUDGET, key=jax.random.key(0),
                     out=tmp_path / "again", catalog=CATALOG, config=CONFIG, progress=False)
    first = runs["aliev-panfilov"]
    assert (first.out / "transcript.jsonl").read_text() == \
        (tmp_path / "again" / "transcript.jsonl").read_text()
    a, b = (load_results(p / "results.nc") for p in (first.out, tmp_path / "again"))
    for v in ("train_rmse", "val_rmse", "heldout_rmse", "n_params", "selected"):
        np.testing.assert_array_equal(a[v].values, b[v].values)
    assert again.test_rmse == first.test_rmse


def test_report_rebuilds_identically(runs):
    out = runs["mitchell-schaeffer"].out
    before = (out / "report.md").read_bytes()
    (out / "report.md").unlink()
    from leads_jax.cli import main

    assert main(["report", str(out)]) == 0
    assert (out / "report.md").read_bytes() == before
    paths = write_report(out)
    for name in ("search_tree", "best_traces", "activation_map"):
        assert paths[name].exists()


def _obs(i, val, n_params, closure=0.0):
    return Observation(id=i, round=0, spec="{}", formula="", n_params=n_params,
                       closure_rms=closure, stable=True, train_rmse=val, val_rmse=val,
                       heldout_rmse=val, ratio=1.0, verdict="generalises")


def test_simpler_model_wins_within_noise():
    physics, hybrid = _obs(0, 1.02, 4), _obs(1, 1.00, 600, closure=0.01)
    winner, table = select([physics, hybrid], noise=1.0)
    assert winner == 0  # 0.02 mV better is within noise (margin 0.25 mV)
    assert [row["within_noise"] for row in table] == [True, True]
    winner, _ = select([physics, _obs(1, 0.60, 600, closure=0.01)], noise=1.0)
    assert winner == 1  # clearly better: the hybrid wins
    winner, _ = select([physics, hybrid], noise=0.0, selection=Selection(rel_tol=0.0,
                                                                         noise_tol=0.0))
    assert winner == 1  # no penalty: the lowest validation error wins
    unstable = _obs(2, 0.1, 1).model_copy(update={"stable": False})
    assert select([unstable], noise=1.0) == (None, [])


def test_bad_inputs_fail_before_work(data, tmp_path):
    ds = data["aliev-panfilov"]
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="missing variable"):
        discover(ds.drop_vars("stim_sites"), key=key, catalog=CATALOG)
    with pytest.raises(ValueError, match="Budget.rounds"):
        Budget(rounds=0)
    with pytest.raises(ValueError, match="Budget.candidates"):
        Budget(candidates=0)
    with pytest.raises(ValueError, match="unknown policy"):
        discover(ds, policy="genius", key=key)
    with pytest.raises(ValueError, match="unknown method"):
        discover(ds, method="magic", key=key)
    with pytest.raises(ValueError, match="PRNG key"):
        discover(ds, key=0)
    with pytest.raises(ValueError, match="unknown LLM provider"):
        discover(ds, policy="llm", llm={"model": "no-such-provider-xyz/model"}, key=key)
    with pytest.raises(ValueError, match="needs llm="):
        discover(ds, policy="llm", key=key)
    no_val = ds.isel(sample=np.flatnonzero(ds["split"].values != "val"))
    with pytest.raises(ValueError, match="no validation split"):
        discover(no_val, key=key)


def test_missing_api_key_is_an_error(data, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ValueError, match="OPENAI_API_KEY"):
        discover(data["aliev-panfilov"], policy="llm", llm={"model": "openai/gpt-4o-mini"},
                 key=jax.random.key(0))
