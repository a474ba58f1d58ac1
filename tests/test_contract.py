"""One vocabulary: the compiled-model contract, result codes, the solver table, batching,
the typed fit data, scalars accepted at the boundary, the compilation cache switch.
Fast: nothing here trains."""

from __future__ import annotations

import ast
import inspect
import os
import pathlib
import subprocess
import sys
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import leads_jax
from leads_jax import batching
from leads_jax import compile as lcompile
from leads_jax.codes import ResultCode
from leads_jax.compile import (
    AbstractBoundModel,
    AbstractCompiledModel,
    BoundHybridModel,
    BoundVectorField,
    HybridModel,
    VectorFieldModel,
    compile_structure,
    compile_vector_field,
    replace_parameters,
)
from leads_jax.datasets import DataSplit, FitData, make_dataset
from leads_jax.fit import FitConfig
from leads_jax.geometry import Geometry
from leads_jax.simulate import simulate
from leads_jax.solvers import SOLVERS, solver_spec
from leads_jax.stimulus import Stimulus
from leads_jax.structure import Structure, StructureError, validate

ROOT = pathlib.Path(leads_jax.__file__).parent
GEO = Geometry.cable(8)


def _vf(**kw):
    return compile_vector_field(lambda t, y, p, g: -p["r"] * y, {"r": jnp.asarray(0.1)},
                                state_names=("u",), state_bounds=((-1.0, 2.0),), **kw)


# ------------------------------------------------------------------------- the contract
def test_contract_is_abstract_or_final():
    for abstract in (AbstractCompiledModel, AbstractBoundModel):
        with pytest.raises(TypeError):
            abstract()
    pairs = ((AbstractCompiledModel, (HybridModel, VectorFieldModel)),
             (AbstractBoundModel, (BoundHybridModel, BoundVectorField)))
    for base, concrete in pairs:
        abstract = base.__abstractmethods__
        assert abstract, base
        concrete_in_base = {n for n, v in vars(base).items()
                            if callable(v) and not n.startswith("_") and n not in abstract}
        for cls in concrete:
            assert not cls.__abstractmethods__, (cls, cls.__abstractmethods__)
            # final: nothing concrete of the base is overridden
            assert not concrete_in_base & set(vars(cls)), (cls, concrete_in_base & set(vars(cls)))
    assert "vector_field" in vars(AbstractBoundModel)


def test_no_model_type_branches_in_engine():
    """fit/, simulate.py and the audit use the contract only."""
    names = {"HybridModel", "VectorFieldModel", "BoundHybridModel", "BoundVectorField"}
    files = [*sorted((ROOT / "fit").glob("*.py")), ROOT / "simulate.py"]
    for path in files:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Name) and node.id in names:
                raise AssertionError(f"{path.name}:{node.lineno} names {node.id}")
            if (isinstance(node, ast.Call) and getattr(node.func, "id", "") in ("hasattr",
                                                                                "getattr")
                    and isinstance(node.args[0], ast.Name)
                    and node.args[0].id in ("model", "bound", "m", "members", "reaction_cls")):
                raise AssertionError(f"{path.name}:{node.lineno} inspects a model's attributes")
    assert "getattr(" not in inspect.getsource(HybridModel.default_dt.fget)


def test_models_answer_the_contract():
    s = Structure.make("aliev-panfilov", free=("a", "D"))
    hm = compile_structure(s, GEO, key=jax.random.key(0))
    vf = _vf(stable_dt=0.5, name="decay")
    assert hm.n_params == 2 and vf.n_params == 1
    assert set(hm.fitted_values()) == {"a", "D"}
    assert vf.fitted_values() == {"r": pytest.approx(0.1)}
    assert hm.n_nodes == 8 and vf.n_nodes is None
    assert hm.formula().startswith("aliev-panfilov") and vf.formula().startswith("decay")
    # stable step: the measured reaction limit, capped by explicit diffusion
    rate = lcompile.diffusion_rate(hm, GEO)
    assert hm.stable_dt(GEO, "rk4") == pytest.approx(
        min(hm.reaction_cls.stable_dt_limits["rk4"], 2.785 / rate))
    assert hm.stable_dt(None, "rk4") == hm.reaction_cls.stable_dt_limits["rk4"]
    stiff = replace_parameters(hm, D=0.4)
    assert stiff.stable_dt(GEO, "rk4") < 0.05
    assert stiff.stable_dt(GEO, "euler") < stiff.stable_dt(GEO, "rk4")
    assert vf.stable_dt(GEO) == 0.5 and _vf().stable_dt(GEO) == np.inf
    # perturbation: scale 0 is the identity, fixed parameters never move
    key = jax.random.key(1)
    assert bool(jnp.all(hm.perturb(key, 0.0).params.raw_global == hm.params.raw_global))
    moved = hm.perturb(key, 0.5).params.raw_global != hm.params.raw_global
    assert moved.tolist() == [n in ("a", "D") for n in hm.params.names]
    # bound forms: closures and gates by the contract, not by type
    assert hm.bind(GEO).closure_rates(0.0, hm.initial_state(8)) is None
    assert vf.bind(GEO).gate_names == ()
    with pytest.raises(ValueError, match="gate states"):
        simulate(vf, GEO, None, jnp.linspace(0.0, 1.0, 3), solver="rush-larsen",
                 y0=jnp.zeros((1, 8)))


# ------------------------------------------------------------------------ result codes
def test_one_result_code_enumeration():
    assert [int(c) for c in ResultCode] == [0, 1, 2, 3, 4]
    assert ResultCode.OUT_OF_BOUNDS.message == "state left the model's bounds"
    assert ResultCode.describe(99) == "unknown result code 99"
    hm = compile_structure(Structure.make("aliev-panfilov"), GEO, key=jax.random.key(0))
    bad = replace_parameters(hm, D=0.4)
    tr = simulate(bad, GEO, Stimulus.single(GEO, "left"), jnp.linspace(0.0, 20.0, 5), dt=0.5)
    assert tr.reason_text() == ResultCode(int(tr.reason)).message != "ok"
    for mod in ("simulate", "fit._engine", "fit._audit", "fit._fit"):
        src = (ROOT / (mod.replace(".", "/") + ".py")).read_text()
        assert "REASONS" not in src, mod


# ------------------------------------------------------------------------ solver table
@pytest.mark.parametrize("solver", list(SOLVERS))
def test_fit_config_accepts_every_simulate_solver(solver):
    assert FitConfig(solver=solver).solver == solver
    assert solver_spec(solver).cls is SOLVERS[solver].cls


def test_solver_table_rejects_unknown_names_alike():
    with pytest.raises(ValueError, match="rk45"):
        FitConfig(solver="rk45")
    with pytest.raises(ValueError, match="unknown solver 'rk45'"):
        simulate(_vf(), GEO, None, jnp.linspace(0.0, 1.0, 3), solver="rk45",
                 y0=jnp.zeros((1, 8)))


@pytest.mark.parametrize("solver", [n for n, s in SOLVERS.items() if hasattr(s.cls, "tableau")])
def test_stability_extent_from_the_tableau(solver):
    """|R(z)| <= 1 on [-extent, 0] and > 1 just beyond, R the stability polynomial."""
    tab = SOLVERS[solver].cls.tableau
    s = len(tab.b_sol)
    a = np.zeros((s, s))
    for i, row in enumerate(tab.a_lower):
        a[i + 1, : len(row)] = row

    def r(z):
        return abs(1 + z * np.asarray(tab.b_sol) @ np.linalg.solve(np.eye(s) - z * a, np.ones(s)))

    ext = SOLVERS[solver].stability_extent
    assert all(r(z) <= 1 + 1e-9 for z in np.linspace(-ext * 0.999, -1e-6, 200))
    assert r(-ext * 1.02) > 1


# ----------------------------------------------------------------------------- batching
def test_stacking_is_host_side_and_groups_by_tree():
    s = Structure.make("aliev-panfilov", free=("a",))
    ms = [compile_structure(s, GEO, key=jax.random.key(i)) for i in range(5)]
    other = compile_structure(Structure.make("aliev-panfilov", "none"), GEO, key=jax.random.key(0))
    assert len({batching.group_key(m) for m in ms}) == 1
    assert batching.group_key(other) != batching.group_key(ms[0])
    names = []

    def listener(event, duration, **kw):
        names.append(event)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        for n in (3, 5):
            stacked, mask = batching.stack_models(ms[:n], size=8)
            one = batching.unstack_member(stacked, n - 1)
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert "/jax/core/compile/backend_compile_duration" not in names
    assert mask.tolist() == [True] * 5 + [False] * 3
    assert bool(jnp.all(one.params.raw_global == ms[4].params.raw_global))
    assert lcompile.stack_models is batching.stack_models  # one owner, re-exported


# ------------------------------------------------------------------------------ FitData
@pytest.fixture(scope="module")
def small():
    return make_dataset("aliev-panfilov", GEO, t_train=8.0, save_every=2.0, dt=0.25)


def test_fit_data_reads_a_dataset_once(small):
    fd = FitData.from_dataset(small)
    assert list(fd.splits) == ["train", "val", "test", "train sites, test horizon"]
    assert fd.audit_splits == ("test", "train sites, test horizon")
    assert fd.observed.shape == (3, small.sizes["time"], 8) and fd.dt == 0.25
    stim, targets, ts, w = fd.split_arrays("train")
    assert ts[-1] == 8.0 and w.tolist() == [1.0] * ts.size and targets.shape[0] == 1
    assert stim.sites.shape == (1, 8)
    # one recording split by time: train window, then a later validation window
    late = FitData(fd.geometry, fd.time, fd.observed, fd.stimuli,
                   {"train": DataSplit((0, 1, 2), 8.0), "val": DataSplit((0,), 16.0, 8.0)},
                   t_train=8.0)
    _, _, ts, w = late.split_arrays("val")
    assert ts[-1] == 16.0 and w.tolist() == [float(t > 8.0) for t in ts]
    with pytest.raises(ValueError, match="after the record's end"):
        FitData(fd.geometry, fd.time, fd.observed, fd.stimuli,
                {"train": DataSplit((0,), 99.0)}, t_train=8.0)
    with pytest.raises(ValueError, match="needs a 'train' split"):
        FitData(fd.geometry, fd.time, fd.observed, fd.stimuli,
                {"val": DataSplit((0,), 8.0)}, t_train=8.0)
    no_truth = small.drop_vars(["true_state", "observed_clean", "true_parameters"])
    assert FitData.from_dataset(no_truth).n_samples == 3


# ---------------------------------------------------------------------- scalars accepted
def test_numpy_and_jax_scalars_are_numbers():
    cfg = FitConfig(learning_rate=np.float32(0.02), steps=np.int64(7), dt=jnp.asarray(0.25),
                    curriculum=((np.float32(0.5), np.int32(3)),))
    assert isinstance(cfg.steps, int) and isinstance(cfg.dt, float)
    assert cfg.curriculum == ((0.5, 3),)
    s = Structure.make("aliev-panfilov", free=("a",),
                       values={"a": np.float32(0.15), "k": jnp.asarray(8.0)})
    validate(s)
    assert isinstance(s.to_dict()["parameters"][0]["value"], float)
    with pytest.raises(StructureError, match="strictly inside"):
        validate(Structure.make("aliev-panfilov", values={"a": np.float64(5.0)}))
    with pytest.raises(ValueError, match="FitConfig.steps"):
        FitConfig(steps=np.float32(2.5))


# ------------------------------------------------------------------ compilation cache
def test_compilation_cache_is_off_unless_asked(monkeypatch, tmp_path):
    monkeypatch.delenv("LEADS_JAX_CACHE_DIR", raising=False)
    with mock.patch.object(jax.config, "update") as update:
        assert leads_jax.enable_compilation_cache() is None
        update.assert_not_called()
        monkeypatch.setenv("LEADS_JAX_CACHE_DIR", str(tmp_path / "c"))
        assert leads_jax.enable_compilation_cache() == (tmp_path / "c").resolve()
        update.assert_any_call("jax_compilation_cache_dir", str((tmp_path / "c").resolve()))


def test_cli_cache_makes_runtime_checks_cacheable(tmp_path):
    """``leads --compile-cache DIR``: equinox's runtime checks become NaN in that process,
    so the engine's large programs can be cached and exported (host callbacks never
    are); without the cache nothing changes, a user's own EQX_ON_ERROR is kept, and
    ``discover --no-compile-cache`` keeps the cache off even with $LEADS_JAX_CACHE_DIR."""
    child = ("import sys, jax, equinox._errors as e; from leads_jax import cli; "
             "cli.main(sys.argv[1:]); "
             "print('MODE', e.EQX_ON_ERROR, jax.config.jax_compilation_cache_dir)")

    def mode(argv, **env_extra):
        env = {k: v for k, v in os.environ.items()
               if k not in ("EQX_ON_ERROR", "LEADS_JAX_CACHE_DIR")}
        run = subprocess.run([sys.executable, "-c", child, *argv],
                             env={**env, "JAX_PLATFORMS": "cpu", **env_extra},
                             capture_output=True, text=True, timeout=300)
        line = [x for x in run.stdout.splitlines() if x.startswith("MODE ")]
        assert line, run.stderr[-2000:]
        return line[-1].split()[1:], run.stderr

    cache = str(tmp_path / "cache")
    report = ["report", str(tmp_path)]
    assert mode(["--compile-cache", cache, *report])[0][0] == "nan"
    assert mode(report)[0] == ["raise", "None"]
    kept, err = mode(["--compile-cache", cache, *report], EQX_ON_ERROR="raise")
    assert kept[0] == "raise" and "EQX_ON_ERROR=raise" in err
    # discover opts out (it stops at the missing data file, after the cache decision)
    discover = ["discover", "--data", str(tmp_path / "missing.nc"), "--out",
                str(tmp_path / "run")]
    assert mode([*discover, "--no-compile-cache"], LEADS_JAX_CACHE_DIR=cache)[0] == \
        ["raise", "None"]
    assert mode(discover, LEADS_JAX_CACHE_DIR=cache)[0][0] == "nan"
