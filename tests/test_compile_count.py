"""Compilation is paid once, one contract for every model, and ``fit`` in parts.

One tiny problem (8-node Aliev-Panfilov cable, 8 ms of training record) is fitted
first with three grammar structures and one model from ``compile_vector_field`` in ONE
``fit`` call (two compilation groups). Every later fit in this module changes what
must be data -- the learning rate, the step count (not a multiple of ``eval_every``),
a curriculum, the restarts, the candidates' values and the candidate count within the
bucket -- and JAX's compile log (the ``/jax/core/compile/backend_compile_duration``
monitoring event, one per XLA compilation) must stay silent.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import subprocess
import sys

import equinox._errors
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from leads_jax import _cache
from leads_jax.compile import compile_vector_field
from leads_jax.datasets import FitData, make_dataset
from leads_jax.fit import FitConfig, SimulateRollout, SplitData, _programs, fit, fit_group, prepare
from leads_jax.geometry import Geometry
from leads_jax.structure import Structure

DT = 0.25
TRUE = {"a": 0.15, "k": 8.0, "eps0": 0.01, "D": 0.001}
# audit=False: the audit's longer rollout is one more program per group to compile (it is
# data-independent like the others; tests/test_fit_recovery.py covers fit's audit)
CFG = FitConfig(learning_rate=0.01, steps=6, eval_every=3, patience=None, dt=DT,
                aphynity_weight=0.0, min_bucket=4, audit=False)
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


@contextlib.contextmanager
def compile_log():
    """The names of the XLA programs compiled inside the block."""
    names = []

    def listener(event, duration, **kwargs):
        if event == COMPILE_EVENT:
            names.append(str(kwargs.get("fun_name", "?")))

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield names
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


def ap_field(t, y, logp, geometry):
    """Aliev-Panfilov (the catalog's equations) written as a plain vector field, with
    log-parameters (so a gradient step is a relative change)."""
    p = jax.tree.map(jnp.exp, logp)
    u, v = y
    du = -p["k"] * u * (u - p["a"]) * (u - 1.0) - u * v
    eps = p["eps0"] + 0.2 * v / (0.3 + u)
    dv = eps * (-v - p["k"] * u * (u - p["a"] - 1.0))
    return jnp.stack([du, dv]) / 12.9 + jnp.stack([p["D"] * geometry.laplacian(u), 0 * v])


def field_model(scale=1.1):
    params = {k: jnp.log(jnp.asarray(v * scale, jnp.float32)) for k, v in TRUE.items()}
    return compile_vector_field(ap_field, params, state_names=("u", "v"),
                                state_bounds=((-0.5, 1.5), (-0.5, 5.0)), dt=DT, name="ap_field")


def structure(free, factor):
    return Structure.make("aliev-panfilov", free=free,
                          values={k: v * factor for k, v in TRUE.items()})


@pytest.fixture(scope="module")
def data():
    ds = make_dataset("aliev-panfilov", Geometry.cable(8), t_train=8.0, save_every=2.0,
                      parameters={"eps0": TRUE["eps0"]}, dt=DT, seed=0)
    return FitData.from_dataset(ds)


@pytest.fixture(scope="module")
def first(data):
    cands = [structure(("a", "D"), 1.1), structure(("k",), 0.9), structure(("a", "k"), 1.05),
             field_model()]
    with compile_log() as names:
        res = fit(cands, data, CFG, key=jax.random.key(0), progress=False)
    return res, names


def test_structure_and_vector_field_fit_in_one_call(first):
    res, names = first
    ds = res.dataset
    assert len(names) > 0  # the first fit compiles
    assert ds.attrs["n_groups"] == 2
    assert ds["formula"].values[3].startswith("ap_field")
    assert ds["n_params"].values.tolist() == [2, 1, 2, 4]
    assert np.all(np.isfinite(ds["train_rmse"].values)), ds["train_rmse"].values
    assert ds["stable"].values.all()
    assert np.isfinite(ds["train_curve"].values).all()  # every member trained every step
    # the vector field's fitted (log-)values are reported by name
    assert {"a", "k", "eps0", "D"} <= set(ds["param"].values.tolist())
    assert np.isfinite(ds["params"].sel(candidate=3).values).all()
    assert res.structures[3] is None and res.models[3].name == "ap_field"


def test_second_fit_compiles_nothing(first, data):
    """Other learning rate, step count, curriculum, restarts, values and candidate count
    (same buckets): zero compilations."""
    cfg = dataclasses.replace(CFG, learning_rate=0.011, steps=5, restarts=2,
                              curriculum=((0.5, 2),), restart_noise=0.05)
    cands = [structure(("a", "k"), 0.95), structure(("D",), 1.02), field_model(0.9)]
    with compile_log() as names:
        res = fit(cands, data, cfg, key=jax.random.key(1), progress=False)
    assert names == [], names
    assert res.dataset.sizes["candidate"] == 3
    assert res.dataset["train_curve"].shape[1] == 2 + 5


def test_fit_in_parts_equals_fit(first, data):
    """prepare -> fit_group -> records gives what fit gives (times apart)."""
    res, _ = first
    cands = [structure(("a", "D"), 1.1), structure(("k",), 0.9), structure(("a", "k"), 1.05),
             field_model()]
    plan = prepare(cands, data, CFG)
    assert [g.candidates for g in plan.groups] == [(0, 1, 2), (3,)]
    with compile_log() as names:
        for group in plan.groups:
            out = fit_group(plan, group, key=jax.random.key(0))
            for c, rec in zip(out.candidates, out.records, strict=True):
                row = res.dataset.isel(candidate=c)
                assert rec.formula == row["formula"].item()
                for name in ("train_rmse", "val_rmse", "train_loss", "n_params", "best_step",
                             "stable"):
                    assert getattr(rec, name) == row[name].item(), name
                np.testing.assert_array_equal(rec.train_curve, row["train_curve"].values)
    assert names == [], names


def test_key_must_be_a_prng_key(data):
    with pytest.raises(ValueError, match=r"key must be a JAX PRNG key.*jax.random.key\(0\)"):
        fit([structure(("a",), 1.0)], data, CFG, key=0)


# ------------------------------------------------------------------ exported programs
def _toy(data, scale, n):
    """A small engine-like program: a SplitData and traced values in, a pytree out."""
    y = jnp.tanh(data.targets * scale[0]) * jnp.sum(data.weights) + n
    return y, {"mean": jnp.mean(y), "ts": data.ts * 2}


def test_exported_programs_are_read_back_without_tracing(tmp_path, monkeypatch):
    """With the persistent cache on (and EQX_ON_ERROR=nan), a program is traced and
    exported once; a fresh Program (what a new process has) reads it back and runs it
    without tracing, with the same outputs; other shapes are another program; with
    EQX_ON_ERROR=raise nothing is exported. (benchmarks/fit_compile.py runs fit this way
    in new processes: identical validation errors, cold and warm.)"""
    folder = tmp_path / "exported"
    monkeypatch.setattr(_cache, "exported_programs_folder", lambda: folder)
    monkeypatch.setattr(equinox._errors, "EQX_ON_ERROR", "nan")
    ts = np.linspace(0.0, 4.0, 5, dtype=np.float32)
    split = SplitData(None, np.ones((2, 5, 3), np.float32), ts)
    args = (split, jnp.asarray([0.5], jnp.float32), jnp.asarray(2, jnp.int32))

    def out_structure(*_):
        return jax.tree.structure((0, {"mean": 0, "ts": 0}))

    def program():
        return _programs.Program(_toy, ("toy-test", 1), out_structure)

    want = _toy(*args)
    before = _programs.TRACES["toy-test"]
    got = program()(*args)
    assert _programs.TRACES["toy-test"] == before + 1
    assert len(list(folder.glob("*.jaxexport"))) == 1
    again = program()(*args)  # fresh: read from disk
    assert _programs.TRACES["toy-test"] == before + 1
    for a, b, c in zip(jax.tree.leaves(want), jax.tree.leaves(got), jax.tree.leaves(again),
                       strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-6)
        np.testing.assert_array_equal(c, b)
    other = SplitData(None, np.ones((3, 5, 3), np.float32), ts)
    program()(other, *args[1:])  # another shape: another exported program
    assert len(list(folder.glob("*.jaxexport"))) == 2
    for path in folder.glob("*.jaxexport"):  # damaged files: traced again, rewritten
        path.write_bytes(b"not a program")
    with pytest.warns(UserWarning, match="unreadable"):
        again = program()(*args)
    assert _programs.TRACES["toy-test"] == before + 3
    np.testing.assert_array_equal(again[0], got[0])
    monkeypatch.setattr(equinox._errors, "EQX_ON_ERROR", "raise")
    program()(SplitData(None, np.ones((4, 5, 3), np.float32), ts), *args[1:])
    assert len(list(folder.glob("*.jaxexport"))) == 2


def test_program_identity_is_written_down_or_refused():
    """What keys an exported program: a rollout by its fields, a library function by its
    name; a lambda, a local function or an object with an address has no stable identity
    (such programs are traced as usual, never read back under a wrong key)."""
    a = _programs._encode(SimulateRollout("rk4", 0.25, 34, False))
    b = _programs._encode(SimulateRollout("rk4", 0.5, 34, False))
    assert a != b and "dt=0.25" in json.dumps(a)
    assert _programs._encode(jax.nn.relu) == ["ref", "jax._src.nn.functions.relu"]

    def local(x):
        return x

    for obj in (lambda x: x, local, object(), ap_field):
        with pytest.raises(_programs._Unstable):
            _programs._encode(obj)


_CHILD = """
import json, sys
import jax
from leads_jax import enable_compilation_cache
from leads_jax.datasets import FitData, make_dataset
from leads_jax.fit import FitConfig, fit, _programs
from leads_jax.geometry import Geometry
from leads_jax.structure import Structure
enable_compilation_cache(sys.argv[1])
ds = make_dataset("aliev-panfilov", Geometry.cable(8), t_train=8.0, save_every=2.0,
                  parameters={"eps0": 0.01}, dt=0.25, seed=0)
cfg = FitConfig(learning_rate=0.01, steps=6, eval_every=3, patience=None, dt=0.25,
                aphynity_weight=0.0, min_bucket=4)
s = Structure.make("aliev-panfilov", free=("a", "D"), values={"a": 0.165, "D": 0.0011})
res = fit([s], FitData.from_dataset(ds), cfg, key=jax.random.key(0), progress=False)
d = res.dataset
print("RESULT " + json.dumps({"traces": dict(_programs.TRACES),
      "rmse": [float(d[k].values[0]) for k in ("train_rmse", "val_rmse", "test_rmse")],
      "curve": [float(x) for x in d["train_curve"].values[0]]}))
"""


@pytest.mark.slow
def test_new_process_reads_exported_programs(tmp_path):
    """Two new processes with one persistent cache (EQX_ON_ERROR=nan): the first exports
    the training, evaluation and audit programs, the second traces none of them and gives
    the same records."""
    env = dict(os.environ, EQX_ON_ERROR="nan", JAX_PLATFORMS="cpu")
    env.pop("LEADS_JAX_CACHE_DIR", None)
    out = []
    for _ in range(2):
        run = subprocess.run([sys.executable, "-c", _CHILD, str(tmp_path / "cache")], env=env,
                             capture_output=True, text=True, timeout=900)
        assert run.returncode == 0, run.stderr[-3000:]
        line = [x for x in run.stdout.splitlines() if x.startswith("RESULT ")][-1]
        out.append(json.loads(line[len("RESULT "):]))
    assert out[0]["traces"].get("chunk", 0) >= 1 and out[0]["traces"].get("eval", 0) >= 1
    assert out[1]["traces"] == {}, out[1]["traces"]
    assert out[1]["rmse"] == out[0]["rmse"] and out[1]["curve"] == out[0]["curve"]
    assert len(list((tmp_path / "cache" / "leads_jax_exported").glob("*.jaxexport"))) >= 2


def test_engine_program_factories_build_one_program_per_key_across_threads():
    """``leads_jax.agent.fit_round`` fits topology groups in threads. Two threads that
    miss a factory's cache at once must get the same program (a plain ``lru_cache``
    builds two, keeps one and drops the other with what it compiled, so a later call
    recompiles: seen as a stray ``jit(init_optimizer)`` compilation in a repeat round)."""
    import threading
    import time

    from leads_jax.fit import _engine

    built = []

    @_engine._one_per_key(maxsize=4)
    def slow_factory(key):
        built.append(key)
        time.sleep(0.05)  # wide enough a window that unlocked threads would all miss
        return object()

    barrier = threading.Barrier(8)
    got = []

    def worker():
        barrier.wait()
        got.append(slow_factory("k"))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert built == ["k"] and len({id(g) for g in got}) == 1 and len(got) == 8
    # the engine's own factories are the locked kind
    for f in (_engine._optimizer, _engine._init_fn, _engine._chunk_fn, _engine._eval_fn):
        assert f.__code__ is slow_factory.__code__, f
