"""The methods that compile topologies of their own, end to end on tiny data:
unstructured generation and its ablation twin ``no-structure`` (one expression-
interpreter program for both; default suite), the hand-designed hybrid (Aliev-Panfilov +
MLP closure) and the pure neural ODE (slow tier: each costs a compilation of its own,
~50 s on a loaded 2-core CPU), and the SIGKILL/resume test with the resumption in a
fresh process (slow tier; the default suite's version, resumed in-process, is in
tests/test_agent_discover.py). The grammar methods and ablations (leads, random,
one-round, no-memory, no-reflection), the LLM policy and the CLI share the physics
programs of tests/test_agent_discover.py.

Tiny data: a 16-node cable, a 24 ms training horizon, 20 fitting steps; the cost is the
compilation of each method's topology (one training program each).
Run the slow ones with ``pytest -m slow tests/test_agent_methods.py``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from _kill import kill_during

from leads_jax.agent import Budget, discover
from leads_jax.datasets import make_dataset, save_dataset
from leads_jax.fit import FitConfig, load_results
from leads_jax.geometry import Geometry
from leads_jax.structure import Catalog

CONFIG = FitConfig(steps=20, learning_rate=0.03, eval_every=10, patience=None, dt=0.25,
                   audit=False)
CATALOG = dataclasses.replace(
    Catalog.default().only("aliev-panfilov", "fitzhugh-nagumo", "mitchell-schaeffer"),
    closures=(), diffusions=("laplacian",))


@pytest.fixture(scope="module")
def data():
    return make_dataset("aliev-panfilov", Geometry.cable(16), t_train=24.0, save_every=2.0,
                        noise=0.01, seed=1, dt=0.25, parameters={"a": 0.13, "k": 9.0})


def run(data, method, out, budget, *, catalog=CATALOG, key=1):
    res = discover(data, method=method, budget=budget, key=jax.random.key(key), out=out,
                   catalog=catalog, config=CONFIG, progress=False)
    check_run(res, method, out, budget)
    return res


def check_run(res, method, out, budget):
    """What every method's run must give: its name on the results, a report, every
    candidate in results.nc, finite scores wherever a candidate is stable, and a finite
    validation score for the winner."""
    assert res.method == method
    assert res.history and len(res.history) <= budget.candidates, method
    report = (out / "report.md").read_text()
    assert f"method: **{method}**" in report
    ds = load_results(out / "results.nc")
    assert ds.attrs["method"] == method
    assert ds.sizes["candidate"] == len(res.history)
    for o in res.history:
        if o.stable:
            assert math.isfinite(o.train_rmse) and math.isfinite(o.val_rmse), (method, o)
    if res.best is not None:
        assert res.observation.stable and math.isfinite(res.observation.val_rmse)
        assert not math.isnan(res.test_rmse)  # scored on the test sites (inf: diverged)
        assert ds["selected"].values.sum() == 1


@pytest.mark.slow
def test_hand_designed_hybrid(data, tmp_path):
    budget = Budget(rounds=2, candidates=3, k=3)
    res = run(data, "hand-hybrid", tmp_path / "hh", budget, catalog=Catalog.default())
    assert res.rounds == 1 and len(res.history) == 1  # fitted once, restarts = budget
    o = res.history[0]
    assert o.reaction == "aliev-panfilov" and "add_closure" in o.origin
    assert o.n_params > 100  # the MLP (16, 16) closure's weights are fitted
    assert o.stable and o.closure_rms > 0 and math.isfinite(o.heldout_rmse)
    assert res.best_id == 0 and math.isfinite(res.test_rmse)
    run_json = json.loads((tmp_path / "hh" / "run.json").read_text())
    assert run_json["fit_config"]["restarts"] == 3


def test_unstructured_generation_is_deterministic_and_shares_one_program(data, tmp_path):
    budget = Budget(rounds=2, candidates=4, k=2, patience=None)
    first = run(data, "unstructured", tmp_path / "a", budget)
    assert first.rounds == 2 and len(first.history) == 4
    assert all(o.reaction is None for o in first.history)
    assert any("random_program (offline)" in n for n in first.notes)
    specs = [json.loads(o.spec) for o in first.history]
    assert all(s["kind"] == "expression" for s in specs)
    assert len({json.dumps(s, sort_keys=True) for s in specs}) == 4  # memory: no refits
    # one expression-interpreter program for every candidate of every round
    assert first.timings[0]["fit_n_train_programs"] == 1
    assert first.timings[1]["fit_n_train_programs"] == 0
    # same seed: the same transcript and results
    again = run(data, "unstructured", tmp_path / "b", budget)
    assert (tmp_path / "a" / "transcript.jsonl").read_text() == \
        (tmp_path / "b" / "transcript.jsonl").read_text()
    a, b = (load_results(p / "results.nc") for p in (tmp_path / "a", tmp_path / "b"))
    for v in ("train_rmse", "val_rmse", "heldout_rmse", "n_params", "stable", "selected"):
        np.testing.assert_array_equal(a[v].values, b[v].values)
    assert again.test_rmse == first.test_rmse or (math.isnan(again.test_rmse)
                                                  and math.isnan(first.test_rmse))
    assert sum(t["fit_n_train_programs"] for t in again.timings) == 0
    # the ablation without the structured action space: the same generator and program
    other = run(data, "no-structure", tmp_path / "c", Budget(rounds=1, candidates=2, k=2))
    assert all(o.reaction is None for o in other.history)
    assert sum(t["fit_n_train_programs"] for t in other.timings) == 0
    # another seed draws other programs
    assert [o.spec for o in run(data, "unstructured", tmp_path / "d", Budget(
        rounds=1, candidates=2, k=2), key=2).history] != [o.spec for o in first.history[:2]]


@pytest.mark.slow
def test_pure_neural_ode(data, tmp_path):
    budget = Budget(rounds=2, candidates=2, k=2)
    res = run(data, "neural", tmp_path / "nn", budget)
    assert len(res.history) == 2 and res.rounds == 1
    specs = [json.loads(o.spec) for o in res.history]
    assert len({s["seed"] for s in specs}) == 2 and all(s["kind"] == "neural" for s in specs)
    assert all(o.reaction is None and o.n_params > 1000 for o in res.history)
    assert res.timings[0]["fit_n_train_programs"] == 1  # one width: one program
    assert res.best is not None and math.isfinite(res.test_rmse)
    # dt = 0.25 ms is above these networks' stable step (~0.23 ms): recorded, per id
    assert any(n.startswith("fit, round 0: candidate #0: dt = 0.25 ms is above")
               for n in res.notes), res.notes


RUN = textwrap.dedent("""
    import dataclasses, json, sys
    import jax
    from leads_jax.agent import Budget, discover
    from leads_jax.datasets import load_dataset
    from leads_jax.fit import FitConfig
    from leads_jax.structure import Catalog
    cat = dataclasses.replace(Catalog.default().only("aliev-panfilov"), closures=(),
                              diffusions=("laplacian",))
    cfg = FitConfig(steps=60, learning_rate=0.03, eval_every=10, patience=None, dt=0.25)
    res = discover(load_dataset(sys.argv[1]), budget=Budget(rounds=3, candidates=5, k=3,
                   patience=None), key=jax.random.key(3), out=sys.argv[2], catalog=cat,
                   config=cfg, resume=len(sys.argv) > 3, progress=False)
    print(json.dumps({"fitted": res.fitted_ids, "resumed": res.resumed_rounds}))
""")


@pytest.mark.slow
def test_resume_in_a_fresh_process(tmp_path):
    """Three processes: an uninterrupted run (it fills the persistent compilation
    cache), a run killed with SIGKILL while it fits round 1, and its resumption in a
    fresh process."""
    data = make_dataset("aliev-panfilov", Geometry.cable(32), t_train=36.0, save_every=2.0,
                        noise=0.01, seed=1, dt=0.25, parameters={"a": 0.13, "k": 9.0})
    path = save_dataset(data, tmp_path / "data.nc")
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jaxcache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")
    script = tmp_path / "run.py"
    script.write_text(RUN)
    ref = tmp_path / "ref"
    done = subprocess.run([sys.executable, str(script), path, str(ref)], env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "killed"
    with open(tmp_path / "stderr.txt", "w") as err:
        proc = subprocess.Popen([sys.executable, str(script), path, str(out)], env=env,
                                stdout=subprocess.DEVNULL, stderr=err)
    killed_in = kill_during(proc, out)
    assert killed_in is not None, "the run ended before round 1 started fitting"
    assert (out / "round_000").is_dir() and not (out / "round_001").is_dir()
    round0 = (out / "round_000" / "metrics.json").read_bytes()
    resumed = subprocess.run([sys.executable, str(script), path, str(out), "resume"], env=env,
                             capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    info = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert info["resumed"] == 1 and 0 not in info["fitted"]  # round 0 not refitted
    assert (out / "round_000" / "metrics.json").read_bytes() == round0
    a, b = load_results(ref / "results.nc"), load_results(out / "results.nc")
    for v in ("train_rmse", "val_rmse", "heldout_rmse"):
        np.testing.assert_allclose(b[v].values, a[v].values, rtol=1e-6)
    assert a.attrs["test_rmse_mV"] == pytest.approx(b.attrs["test_rmse_mV"], rel=1e-6)
    assert (ref / "transcript.jsonl").read_text() == (out / "transcript.jsonl").read_text()


def test_neural_baseline_draws_its_initialisations_from_the_key():
    """The pure-neural baseline's networks come from the run's key: the same key proposes
    the same seeds, another key others (fixed seeds made its seed spread zero), and a
    seed already tried is not proposed again."""
    from leads_jax.agent._methods import _NeuralPolicy
    from leads_jax.agent._policy import candidate_key

    class Ctx:
        tried = set()

    pol = _NeuralPolicy()

    def seeds(key, ctx=Ctx):
        return [p.spec["seed"] for p in pol.propose(ctx, 4, key=jax.random.key(key))]

    a, b = seeds(0), seeds(1)
    assert len(set(a)) == 4 and a == seeds(0) and set(a).isdisjoint(b)

    class Tried:
        tried = {candidate_key(p) for p in pol.propose(Ctx, 4, key=jax.random.key(0))[:2]}

    again = seeds(0, Tried)
    assert again[:2] == a[2:] and len(again) == 4 and set(again).isdisjoint(a[:2])
