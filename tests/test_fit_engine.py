"""The fitting engine on a small self-contained model (no grammar, no compile step).

`ToyCable` is an Aliev-Panfilov cable written here in ~40 lines with a plain Euler
`lax.scan` rollout: enough to exercise batching, per-member optimizers and
clipping, masking of diverged members, early stopping, sharding and I/O
independently of the compiled hybrid models.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from leads_jax.fit import (
    FitConfig,
    FitProgress,
    Rollout,
    SplitData,
    bucket_size,
    evaluate_members,
    load_candidate,
    pad_members,
    read_candidate_header,
    save_candidate,
    stack_members,
    train_members,
    unstack_member,
)
from leads_jax.fit._audit import audit_members
from leads_jax.fit._results import CandidateRecord, build_dataset, load_results, save_dataset

N_NODES = 12
DT = 0.05  # model time units
SAVE_EVERY = 10
NAMES = ("a", "k", "eps", "D")
TRUE = (0.15, 8.0, 0.02, 0.5)


class ToyCable(eqx.Module):
    """Aliev-Panfilov on a no-flux cable; parameters stored as logs, `free` as a bool mask."""

    raw: jax.Array
    free: jax.Array

    @staticmethod
    def make(values, free=(True, True, True, True)):
        return ToyCable(jnp.log(jnp.asarray(values, jnp.float32)), jnp.asarray(free))

    def values(self):
        raw = jnp.where(self.free, self.raw, jax.lax.stop_gradient(self.raw))
        return jnp.exp(raw)


class ToyRollout(eqx.Module):
    """Forward Euler with a freeze-on-divergence bound check; hashable (no array fields).
    (Euler keeps the compiled program small: XLA compile time dominates these tests.)"""

    bound: float = eqx.field(static=True, default=5.0)

    def __call__(self, model, context, inputs, ts):
        a, k, eps, d = model.values()

        def rhs(y, t):
            u, v = y
            lap = jnp.concatenate([u[1:2] - u[:1], u[2:] - 2 * u[1:-1] + u[:-2], u[-2:-1] - u[-1:]])
            stim = jnp.where(t < 1.0, inputs, 0.0)
            du = d * lap - k * u * (u - a) * (u - 1) - u * v + stim
            dv = eps * (-v - k * u * (u - a - 1))
            return jnp.stack([du, dv])

        def step(carry, _):
            y, t, bad, t_bad = carry
            y_new = y + DT * rhs(y, t)
            now_bad = ~jnp.all(jnp.isfinite(y_new)) | (jnp.max(jnp.abs(y_new)) > self.bound)
            t_bad = jnp.where(now_bad & ~bad, t + DT, t_bad)
            bad = bad | now_bad
            y_new = jnp.where(bad, y, y_new)
            return (y_new, t + DT, bad, t_bad), None

        def save(carry, _):
            carry, _ = jax.lax.scan(step, carry, None, length=SAVE_EVERY)
            return carry, carry[0][0]

        y0 = jnp.zeros((2, N_NODES))
        init = (y0, jnp.array(0.0), jnp.array(False), jnp.array(jnp.inf))
        (_, _, bad, t_bad), us = jax.lax.scan(save, init, None, length=ts.shape[0])
        return Rollout(
            observed=100.0 * us - 80.0,
            diverged=bad,
            reason=jnp.where(bad, 2, 0).astype(jnp.int32),
            t_diverged=t_bad,
            neural_sq=jnp.array(0.0),
        )


ROLLOUT = ToyRollout()
CONTEXT = jnp.zeros(())


def make_split(n_time=20, sites=(0, N_NODES - 1), noise=0.0, seed=0):
    ts = DT * SAVE_EVERY * jnp.arange(1, n_time + 1, dtype=jnp.float32)
    inputs = jnp.stack([jnp.zeros(N_NODES).at[s].set(1.0) for s in sites])
    true = ToyCable.make(TRUE)
    obs = jax.vmap(lambda i: ROLLOUT(true, CONTEXT, i, ts).observed)(inputs)
    if noise:
        # float32 draw: the same noise realisation whatever JAX_ENABLE_X64 says
        obs = obs + noise * jax.random.normal(jax.random.key(seed), obs.shape, jnp.float32)
    return SplitData(inputs, obs, ts)


def split_members(models):
    stacked = stack_members(models)
    return eqx.partition(stacked, eqx.is_inexact_array)


# ----------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"learning_rate": -1e-3}, "learning_rate"),
        ({"learning_rate": float("nan")}, "learning_rate"),
        ({"steps": 0}, "steps"),
        ({"restarts": 0}, "restarts"),
        ({"clip_norm": 0.0}, "clip_norm"),
        ({"optimizer": "lbfgs-magic"}, "optimizer"),
        ({"curriculum": ((0.5, 10), (0.3, 10))}, "curriculum"),
        ({"curriculum": ((1.5, 10),)}, "curriculum"),
        ({"eval_every": 0}, "eval_every"),
        ({"patience": 0}, "patience"),
        ({"solver": "magic"}, "solver"),
        ({"steps": 1.5}, "steps"),
    ],
)
def test_config_rejects_bad_values(kwargs, field):
    with pytest.raises(ValueError, match=f"FitConfig.{field}"):
        FitConfig(**kwargs)


def test_config_is_frozen_and_jsonable():
    cfg = FitConfig(curriculum=[(0.25, 5), (0.5, 5)])
    assert cfg.curriculum == ((0.25, 5), (0.5, 5))
    json.dumps(cfg.to_dict())
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.steps = 3


# ----------------------------------------------------------------------------- batching
def test_bucket_sizes():
    assert [bucket_size(n) for n in (1, 2, 3, 5, 8, 9, 100)] == [1, 2, 4, 8, 8, 16, 128]
    assert bucket_size(3, multiple_of=4) == 4
    assert bucket_size(5, multiple_of=3) == 9
    assert bucket_size(1, minimum=8) == 8
    with pytest.raises(ValueError, match="n must be >= 0"):
        bucket_size(-1)
    with pytest.raises(ValueError, match="multiple_of"):
        bucket_size(3, multiple_of=0)


def test_stack_pad_unstack():
    ms = [ToyCable.make((0.1 * (i + 1), 8.0, 0.02, 0.5)) for i in range(3)]
    stacked = pad_members(stack_members(ms), 3, 4)
    assert stacked.raw.shape == (4, 4) and stacked.free.shape == (4, 4)
    assert eqx.tree_equal(unstack_member(stacked, 1), ms[1])
    assert eqx.tree_equal(unstack_member(stacked, 3), ms[0])
    with pytest.raises(ValueError, match="topology|shapes"):
        stack_members([ms[0], ToyCable(jnp.zeros(5), jnp.ones(5, bool))])


# ----------------------------------------------------------------------------- engine
# Every engine test below uses 8 members, 2 samples of 20 saved points and the same
# optimizer, so they share one compiled program (XLA CPU compilation dominates here).
CFG = FitConfig(learning_rate=0.02, steps=300, eval_every=10, patience=5, clip_norm=1.0,
                aphynity_weight=0.0)
N_MEMBERS = 8


def perturbed(seed, lo=0.85, hi=1.15):
    rng = np.random.default_rng(seed)
    return [v * f for v, f in zip(TRUE, rng.uniform(lo, hi, 4), strict=True)]


def test_recovers_toy_parameters_and_respects_fixed_mask():
    train = make_split(noise=1.0)
    val = make_split(sites=(N_NODES // 3, 2 * N_NODES // 3), noise=1.0, seed=1)
    init = [v * f for v, f in zip(TRUE, (1.2, 0.8, 1.2, 0.8), strict=True)]
    models = [ToyCable.make(init), ToyCable.make(init, (True, True, False, True))]
    models += [ToyCable.make(perturbed(i)) for i in range(N_MEMBERS - 2)]
    params, rest = split_members(models)
    cfg = dataclasses.replace(CFG, curriculum=((0.5, 50),))
    out = train_members(params, rest, rollout=ROLLOUT, context=CONTEXT, train=train, val=val,
                        config=cfg)
    fitted = np.exp(np.asarray(out.params.raw))
    np.testing.assert_allclose(fitted[0], TRUE, rtol=0.05)
    assert fitted[1, 2] == pytest.approx(init[2], rel=1e-6)  # the fixed parameter never moved
    assert out.status["alive"].all()
    assert out.train_curve.shape[0] == N_MEMBERS
    assert out.val_curve.shape == (N_MEMBERS, len(out.val_steps)) and out.val_steps[0] == 0
    # down to the noise floor, (1 mV / loss_scale)^2 = 1e-4
    assert out.status["best_loss"][0] < 1.5e-4 < 0.1 * out.val_curve[0, 0]


def test_fault_isolation_matches_solo_fits():
    """A quarter of the batch diverges (absurd conductivity): those are stopped and marked;
    the others end exactly where they end when fitted alone at the same padded shape."""
    train = make_split()
    models = []
    for i in range(N_MEMBERS):
        vals = perturbed(10 + i)
        if i % 4 == 3:
            vals[3] = 1e4  # explicit RK4 is unstable at this conductivity
        models.append(ToyCable.make(vals))
    cfg = dataclasses.replace(CFG, steps=30, patience=None)
    params, rest = split_members(models)
    out = train_members(params, rest, rollout=ROLLOUT, context=CONTEXT, train=train, val=None,
                        config=cfg)
    bad = np.array([i % 4 == 3 for i in range(N_MEMBERS)])
    assert (~out.status["alive"] == bad).all()
    assert (out.status["reason"][bad] == 2).all()
    assert np.isfinite(out.status["t_diverged"][bad]).all()
    assert (out.status["steps"][bad] == 0).all() and (out.status["steps"][~bad] == 30).all()
    assert np.isnan(out.train_curve[bad, 1:]).all() and np.isinf(out.train_curve[bad, 0]).all()
    final = evaluate_members(out.params, rest, rollout=ROLLOUT, context=CONTEXT, data=train,
                             config=cfg)
    assert np.isinf(final["loss"][bad]).all() and np.isfinite(final["loss"][~bad]).all()
    for i in (0, 5):
        # alone, padded to the same bucket with copies of itself
        p1, r1 = split_members([models[i]] * N_MEMBERS)
        solo = train_members(p1, r1, rollout=ROLLOUT, context=CONTEXT, train=train, val=None,
                             config=cfg)
        ev = evaluate_members(solo.params, r1, rollout=ROLLOUT, context=CONTEXT, data=train,
                              config=cfg)
        np.testing.assert_allclose(final["loss"][i], ev["loss"][0], rtol=1e-4)


def test_clipping_is_per_member():
    """Member 0 trains identically whether its batch-mates have huge gradients or not."""
    train = make_split()
    cfg = dataclasses.replace(CFG, steps=10, clip_norm=1.0)
    m0 = ToyCable.make(perturbed(3))
    wild = ToyCable.make([0.3, 25.0, 0.1, 3.0])

    def fitted(models):
        params, rest = split_members(models)
        out = train_members(params, rest, rollout=ROLLOUT, context=CONTEXT, train=train, val=None,
                            config=cfg)
        return np.asarray(out.params.raw)

    np.testing.assert_allclose(fitted([m0] + [wild] * 7)[0], fitted([m0] * 8)[0], rtol=1e-6)


def test_unbatched_step_matches_batched_member():
    train = make_split()
    cfg = dataclasses.replace(CFG, steps=10)
    m = ToyCable.make(perturbed(4))
    params, rest = split_members([m] * N_MEMBERS)
    batched = train_members(params, rest, rollout=ROLLOUT, context=CONTEXT, train=train, val=None,
                            config=cfg)
    p1, r1 = eqx.partition(m, eqx.is_inexact_array)
    single = train_members(p1, r1, rollout=ROLLOUT, context=CONTEXT, train=train, val=None,
                           config=cfg, batched=False)
    np.testing.assert_allclose(np.asarray(single.params.raw), np.asarray(batched.params.raw[0]),
                               rtol=1e-5)
    assert single.train_curve.shape == (10,)


def test_early_stopping_stops_members():
    train = make_split()
    params, rest = split_members([ToyCable.make(TRUE)] * N_MEMBERS)  # already optimal
    cfg = dataclasses.replace(CFG, steps=1000, patience=2, min_delta=0.5)
    out = train_members(params, rest, rollout=ROLLOUT, context=CONTEXT, train=train, val=None,
                        config=cfg)
    assert out.status["stopped"].all()
    assert out.train_curve.shape[1] <= 30


def test_audit_marks_unstable_members_worst():
    split = make_split()
    longer = make_split(n_time=60)
    models = [ToyCable.make(TRUE), ToyCable.make((0.15, 8.0, 0.02, 1e4))] * (N_MEMBERS // 2)
    params, rest = split_members(models)
    audit = audit_members(params, rest, rollout=ROLLOUT, context=CONTEXT,
                          splits={"test": longer, "train": split}, config=CFG)
    assert audit["stable"].tolist()[:2] == [True, False]
    assert "bounds" in audit["reason"][1] and audit["reason"][0] == ""
    assert np.isinf(audit["test_rmse"][1]) and audit["test_rmse"][0] < 1e-3


# ----------------------------------------------------------------------------- sharding
SHARD_SCRIPT = r"""
import importlib.util, json, sys
import jax
assert len(jax.devices()) == 4, jax.devices()
spec = importlib.util.spec_from_file_location("toy", sys.argv[1])
toy = importlib.util.module_from_spec(spec)
sys.modules["toy"] = toy
spec.loader.exec_module(toy)
import numpy as np
from leads_jax.fit import FitConfig, candidate_mesh, evaluate_members, train_members
train = toy.make_split(n_time=15)
rng = np.random.default_rng(1)
models = [toy.ToyCable.make([v * f for v, f in zip(toy.TRUE, rng.uniform(0.85, 1.15, 4))])
          for _ in range(8)]
params, rest = toy.split_members(models)
cfg = FitConfig(learning_rate=0.02, steps=20, eval_every=10)
res = {}
for name, mesh in (("single", None), ("sharded", candidate_mesh())):
    out = train_members(params, rest, rollout=toy.ROLLOUT, context=toy.CONTEXT, train=train,
                        val=None, config=cfg, mesh=mesh)
    if mesh is not None:
        res["n_shards"] = len(out.params.raw.sharding.device_set)
    ev = evaluate_members(out.params, rest, rollout=toy.ROLLOUT, context=toy.CONTEXT, data=train,
                          config=cfg, mesh=mesh)
    res[name] = ev["loss"].tolist()
print(json.dumps(res))
"""


def test_sharded_matches_single_device():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", SHARD_SCRIPT, __file__], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["n_shards"] == 4
    np.testing.assert_allclose(res["sharded"], res["single"], rtol=1e-4)


# ----------------------------------------------------------------------------- I/O, results
def test_save_load_candidate_identical_predictions(tmp_path):
    m = ToyCable.make([v * 1.07 for v in TRUE], (True, False, True, True))
    path = save_candidate(tmp_path / "c.eqx", m, {"reaction": "toy"}, metadata={"val_rmse": 1.5})
    assert not list(tmp_path.glob("*.tmp"))
    header = read_candidate_header(path)
    assert header["structure"] == {"reaction": "toy"} and header["metadata"]["val_rmse"] == 1.5
    _, loaded, meta = load_candidate(path, like=ToyCable.make(TRUE))
    assert meta["val_rmse"] == 1.5
    ts = make_split(n_time=5).ts
    inp = jnp.zeros(N_NODES).at[0].set(1.0)
    np.testing.assert_array_equal(ROLLOUT(m, CONTEXT, inp, ts).observed,
                                  ROLLOUT(loaded, CONTEXT, inp, ts).observed)
    with pytest.raises(ValueError, match="candidate file"):
        (tmp_path / "junk.eqx").write_bytes(b"not json\n")
        read_candidate_header(tmp_path / "junk.eqx")


def test_results_dataset_roundtrip(tmp_path):
    recs = []
    for i in range(3):
        recs.append(CandidateRecord(
            structure_json=json.dumps({"i": i}), formula=f"f{i}", topology="t",
            params={"a": 0.1 * i} if i else {"k": 8.0}, n_params=i + 1, train_rmse=1.0,
            val_rmse=2.0 + i, test_rmse=np.inf if i == 2 else 3.0, train_loss=0.1,
            stable=i != 2, stability_reason="boom" if i == 2 else "", fit_status="early-stopped",
            diverged_reason="", t_diverged=np.inf, best_restart=0, best_step=10, fit_seconds=0.5,
            train_curve=np.arange(5 + i, dtype=float), val_curve=np.arange(2, dtype=float),
            val_steps=np.array([0, 10]),
        ))
    ds = build_dataset(recs, {"config": {"steps": 3}})
    assert ds.sizes["candidate"] == 3 and ds.sizes["param"] == 2
    assert np.isnan(ds["params"].sel(param="a").values[0])
    save_dataset(ds, tmp_path / "r.nc")
    back = load_results(tmp_path / "r.nc")
    assert back["stable"].dtype == bool and back["stable"].values.tolist() == [True, True, False]
    assert back["structure"].values[1] == json.dumps({"i": 1})
    np.testing.assert_array_equal(back["train_curve"].values, ds["train_curve"].values)


def test_progress_is_quiet_off_terminal(capsys):
    import io

    stream = io.StringIO()
    with FitProgress(5, enabled=True, stream=stream) as bar:
        bar.update(3, 1.0)
        bar.update(5, 0.5)
    assert stream.getvalue() == "" and not bar.enabled and bar.best == 0.5 and bar.done == 5
    stream = io.StringIO()
    with FitProgress(2, enabled="always", stream=stream) as bar:
        bar.update(2, 0.25)
    assert "2/2" in stream.getvalue()
