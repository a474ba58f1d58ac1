"""Slow tier of the agent: the methods that compile topologies of their own
(hand-designed hybrid, unstructured expressions, pure neural ODE) end to end on tiny
data, and a run that survives SIGKILL mid-round (subprocesses). The grammar methods,
ablations, LLM policy and CLI run in the default suite (tests/test_agent_discover.py).
Run with ``pytest -m slow tests/test_agent_methods.py``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

from leads_jax.agent import Budget, discover
from leads_jax.datasets import make_dataset, save_dataset
from leads_jax.fit import FitConfig, load_results
from leads_jax.geometry import Geometry
from leads_jax.structure import Catalog

CONFIG = FitConfig(steps=30, learning_rate=0.03, eval_every=10, patience=None, dt=0.25)
CATALOG = dataclasses.replace(
    Catalog.default().only("aliev-panfilov", "fitzhugh-nagumo", "mitchell-schaeffer"),
    closures=(), diffusions=("laplacian",))
TINY = Budget(rounds=2, candidates=3, k=3)
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data():
    return make_dataset("aliev-panfilov", Geometry.cable(32), t_train=36.0, save_every=2.0,
                        noise=0.01, seed=1, dt=0.25, parameters={"a": 0.13, "k": 9.0})


@pytest.mark.parametrize("method", ["hand-hybrid", "unstructured", "no-structure",
                                    "neural"])
def test_every_method_runs_end_to_end(method, data, tmp_path):
    catalog = CATALOG if method not in ("hand-hybrid",) else Catalog.default()
    res = discover(data, method=method, budget=TINY, key=jax.random.key(1),
                   out=tmp_path / method, catalog=catalog, config=CONFIG, progress=False)
    assert res.history, method
    assert len(res.history) <= TINY.candidates
    assert (tmp_path / method / "report.md").exists()
    ds = load_results(tmp_path / method / "results.nc")
    assert ds.sizes["candidate"] == len(res.history)
    if method == "one-round":
        assert res.rounds == 1 and len(res.history) == TINY.candidates
    if method in ("unstructured", "no-structure"):
        assert all(o.reaction is None for o in res.history)
        assert any("random_program" in n for n in res.notes)
    if method == "hand-hybrid":
        assert res.rounds == 1 and res.history[0].closure_rms >= 0
        assert "closure" in res.history[0].origin or "add_closure" in res.history[0].origin
    if res.best is not None:
        assert math.isfinite(res.observation.val_rmse)


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


def test_resume_after_sigkill_mid_round(data, tmp_path):
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
    proc = subprocess.Popen([sys.executable, str(script), path, str(out)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 600
    killed_in = None
    while time.time() < deadline and proc.poll() is None:
        prog = out / "progress.json"
        if prog.exists():
            try:
                p = json.loads(prog.read_text())
            except ValueError:
                p = {}
            if p.get("round") == 1 and p.get("phase") == "fit":
                proc.send_signal(signal.SIGKILL)
                killed_in = p
                break
        time.sleep(0.05)
    proc.wait(timeout=60)
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


