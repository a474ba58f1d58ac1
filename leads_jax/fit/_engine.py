"""The batched training engine: one compiled program trains a whole group.

A *group* is a stacked pytree of members (candidate x restart) sharing one
topology. Each member has its own optimizer state, its own gradient clipping and
its own status; members never exchange information (the loss of one member is
never summed with another's), so a member that diverges cannot disturb the
others: its update is masked, it is marked dead with a reason and a time, and
training goes on for the rest.

The rollout contract (what the engine asks of a simulator) is
``rollout(model, context, inputs, ts) -> Rollout`` for ONE member and ONE sample:
`context` is shared data (e.g. the geometry), `inputs` the per-sample inputs
(e.g. the stimulus), `ts` the observation times. See :class:`Rollout`.

Compilation is paid once per (topology, bucket size, rollout): everything that varies
between calls is data. The learning rate lives in the optimizer state
(``optax.inject_hyperparams``), the loss scale and APHYNITY weight are traced
arguments, and training runs a fixed program of ``eval_every`` steps whose number of
active steps is a traced count (``lax.cond`` skips the rest), so any step count,
curriculum or learning rate reuses it. Restarts are members like any other (padded
to the bucket).
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ..batching import replicate, shard_members, to_device
from ..codes import ResultCode
from ._config import FitConfig
from ._programs import Program


class Rollout(eqx.Module):
    """What a rollout returns for one member and one sample.

    - `observed`: ``[time, node]`` observed potential in mV.
    - `diverged`, `reason`, `t_diverged`: divergence as data (`reason`: a
      :class:`~leads_jax.codes.ResultCode` value).
    - `neural_sq`: mean square of the model's neural terms along the trajectory
      (the APHYNITY penalty; 0 for models without neural terms).
    """

    observed: Any
    diverged: Any
    reason: Any
    t_diverged: Any
    neural_sq: Any


class SplitData(eqx.Module):
    """The samples of one split: stacked per-sample `inputs`, `targets` ``[sample, time,
    node]`` (mV), observation times `ts` ``[time]`` and per-time loss `weights` ``[time]``
    (default ones; the horizon curriculum zeroes the late times, so every stage runs the
    same compiled program)."""

    inputs: Any
    targets: Any
    ts: Any
    weights: Any

    def __init__(self, inputs, targets, ts, weights=None):
        self.inputs = inputs
        self.targets = targets if isinstance(targets, jax.Array) else to_device(targets)
        self.ts = ts if isinstance(ts, jax.Array) else to_device(ts)
        w = np.ones(self.ts.shape) if weights is None else weights
        self.weights = (w if isinstance(w, jax.Array) and w.dtype == self.targets.dtype
                        else to_device(w, self.targets.dtype))

    @property
    def n_samples(self) -> int:
        return int(self.targets.shape[0])

    def with_horizon(self, fraction: float) -> "SplitData":
        """The same data with the loss restricted to the first `fraction` of the record."""
        ts = np.asarray(self.ts)
        cut = ts[0] + fraction * (ts[-1] - ts[0])
        w = (ts <= cut + 1e-6 * abs(ts[-1] - ts[0])).astype(np.float32)
        return SplitData(self.inputs, self.targets, self.ts, w * np.asarray(self.weights))


class MemberStatus(eqx.Module):
    """Per-member bookkeeping (each field has a leading member axis when stacked)."""

    alive: Any  # bool: not diverged
    stopped: Any  # bool: early-stopped
    reason: Any  # int
    t_diverged: Any  # float, ms (inf when never)
    steps: Any  # int: updates applied
    best_loss: Any  # float: best monitored loss
    best_step: Any  # int
    bad_evals: Any  # int: evaluations without improvement

    @staticmethod
    def init(n: int) -> "MemberStatus":
        return MemberStatus(
            alive=to_device(np.ones(n, bool)),
            stopped=to_device(np.zeros(n, bool)),
            reason=to_device(np.zeros(n, np.int32)),
            t_diverged=to_device(np.full(n, np.inf, np.float32)),
            steps=to_device(np.zeros(n, np.int32)),
            best_loss=to_device(np.full(n, np.inf, np.float32)),
            best_step=to_device(np.zeros(n, np.int32)),
            bad_evals=to_device(np.zeros(n, np.int32)),
        )


def make_optimizer(config: FitConfig) -> optax.GradientTransformation:
    """The per-member optimizer: clipping by global norm (of this member only), then the
    update rule, whose learning rate is a hyperparameter in the optimizer *state*
    (``optax.inject_hyperparams``): ``init`` writes ``config.learning_rate`` there and
    ``update`` reads it from the state, so every learning rate shares one compiled
    update."""
    return _optimizer(config.optimizer, config.clip_norm, float(config.learning_rate))


def _one_per_key(maxsize: int):
    """``functools.lru_cache``, with one lock around lookup-or-build.

    The engine's jitted programs are built by these factories and hold their compiled
    executables. ``leads_jax.agent.fit_round`` fits topology groups in threads, and a
    plain ``lru_cache`` lets two threads that miss the same key at once each build a
    program: one is kept, the other (with what it compiled) is dropped, and a later
    call recompiles. Building is cheap (no tracing happens here), so the lock costs
    nothing measurable; compilation runs later, outside it.
    """
    def wrap(fn):
        cached = functools.lru_cache(maxsize=maxsize)(fn)
        lock = threading.Lock()

        @functools.wraps(fn)
        def get(*args, **kwargs):
            with lock:
                return cached(*args, **kwargs)

        get.cache_clear = cached.cache_clear
        get.cache_info = cached.cache_info
        return get

    return wrap


_RULES = {"adam": optax.adam, "adabelief": optax.adabelief, "sgd": optax.sgd}


@_one_per_key(maxsize=32)
def _optimizer(name, clip_norm, learning_rate=1.0):
    rule = _RULES[name]

    def factory(learning_rate):
        return rule(learning_rate)

    parts = []
    if clip_norm is not None:
        parts.append(optax.clip_by_global_norm(clip_norm))
    parts.append(optax.inject_hyperparams(factory)(learning_rate=learning_rate))
    return optax.chain(*parts)


def _engine_optimizer(config: FitConfig) -> optax.GradientTransformation:
    """The optimizer the compiled programs close over: one per (rule, clipping)."""
    return _optimizer(*_tx_spec(config))


@_one_per_key(maxsize=32)
def _init_fn(tx, batched):
    def init_optimizer(params, lr):
        return optax.tree_utils.tree_set(tx.init(params), learning_rate=lr)

    fn = jax.vmap(init_optimizer, in_axes=(0, None)) if batched else init_optimizer
    return eqx.filter_jit(fn)


def _loss_args(config: FitConfig):
    """``(loss_scale, aphynity_weight)`` as traced data."""
    return to_device([config.loss_scale, config.aphynity_weight], np.float32)


def _strong(tree):
    """Drop weak types from array leaves: a weakly typed input and the strongly typed
    output of a step would otherwise key two compilations of the same program."""
    return jax.tree.map(
        lambda x: jax.lax.convert_element_type(x, x.dtype)
        if eqx.is_array(x) and getattr(x, "weak_type", False) else x,
        tree,
    )


def _tree_where(cond, new, old):
    return jax.tree.map(lambda a, b: jnp.where(cond, a, b), new, old)


def _all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if eqx.is_inexact_array(x)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def member_loss(params, rest, context, data: SplitData, rollout: Callable,
                loss_scale: float | jax.Array, aphynity_weight: float | jax.Array):
    """Loss of ONE member on one split: trajectory MSE of ``V / loss_scale`` over
    samples, times and nodes, plus the APHYNITY penalty.

    Returns ``(loss, (mse, diverged, reason, t_diverged))``; a member whose rollout
    diverged gets ``loss = inf`` (its gradient is never applied).
    """
    model = eqx.combine(params, rest)
    out = jax.vmap(lambda inp: rollout(model, context, inp, data.ts))(data.inputs)
    err = (out.observed - data.targets) / loss_scale
    finite = jnp.isfinite(err)
    w = data.weights[None, :, None]
    mse = jnp.sum(w * jnp.where(finite, err, 0.0) ** 2) / (
        jnp.sum(data.weights) * err.shape[0] * err.shape[2]
    )
    penalty = jnp.mean(out.neural_sq)
    loss = mse + aphynity_weight * penalty
    diverged = jnp.any(out.diverged) | ~jnp.all(finite) | ~jnp.isfinite(loss)
    sample_reason = jnp.where(out.diverged, out.reason, 0)
    reason = jnp.max(sample_reason)
    reason = jnp.where(diverged & (reason == 0), int(ResultCode.NONFINITE_STATE), reason)
    t_div = jnp.min(jnp.where(out.diverged, out.t_diverged, jnp.inf))
    loss = jnp.where(diverged, jnp.inf, loss)
    mse = jnp.where(diverged, jnp.inf, mse)
    return loss, (mse, diverged, reason.astype(jnp.int32), t_div)


def member_step(params, opt_state, status: MemberStatus, rest, context, data, *, tx, rollout,
                loss_scale, aphynity_weight):
    """One optimisation step of ONE member (the function the engine vmaps)."""
    (loss, (mse, diverged, reason, t_div)), grads = eqx.filter_value_and_grad(
        member_loss, has_aux=True
    )(params, rest, context, data, rollout, loss_scale, aphynity_weight)
    ok = ~diverged & _all_finite(grads)
    active = status.alive & ~status.stopped
    grads = jax.tree.map(lambda g: jnp.where(ok, g, 0.0), grads)
    updates, new_opt = tx.update(grads, opt_state, params)
    do = active & ok
    params = _tree_where(do, eqx.apply_updates(params, updates), params)
    opt_state = _tree_where(do, new_opt, opt_state)
    dies = active & ~ok
    reason = jnp.where(diverged, reason, int(ResultCode.NONFINITE_GRADIENT))
    status = eqx.tree_at(
        lambda s: (s.alive, s.reason, s.t_diverged, s.steps),
        status,
        (
            status.alive & ~dies,
            jnp.where(dies, reason, status.reason).astype(status.reason.dtype),
            # the status keeps its own dtypes (float32), whatever the solver's time dtype
            # (float64 under JAX_ENABLE_X64): it is a scan carry
            jnp.where(dies, t_div, status.t_diverged).astype(status.t_diverged.dtype),
            status.steps + do.astype(jnp.int32),
        ),
    )
    recorded = jnp.where(active, jnp.where(ok, loss, jnp.inf), jnp.nan).astype(jnp.float32)
    return params, opt_state, status, recorded


_in_batched = eqx.if_array(0)


def _step(params, opt_state, status, rest, context, data, loss_args, *, tx, rollout):
    return member_step(params, opt_state, status, rest, context, data, tx=tx, rollout=rollout,
                       loss_scale=loss_args[0], aphynity_weight=loss_args[1])


def _tx_spec(config: FitConfig) -> tuple:
    """What the optimizer the compiled programs close over is made of: (rule, clipping)."""
    return (config.optimizer, config.clip_norm)


@_one_per_key(maxsize=64)
def _chunk_fn(tx_spec, rollout, chunk, batched) -> Program:
    """A jitted function running up to `chunk` optimisation steps (``lax.scan``) for every
    member; the number of steps applied, ``n_active <= chunk``, is a traced argument
    (the remaining steps are skipped by ``lax.cond``, not computed). `tx_spec`:
    :func:`_tx_spec`."""
    step = functools.partial(_step, tx=_optimizer(*tx_spec), rollout=rollout)
    if batched:
        step = eqx.filter_vmap(step, in_axes=(_in_batched,) * 4 + (None, None, None))

    def train_chunk(params, opt_state, status, rest, context, data, n_active, loss_args):
        def body(carry, i):
            def do(c):
                p, o, s, loss = step(*c, rest, context, data, loss_args)
                return (p, o, s), loss

            def skip(c):
                return c, jnp.full(jnp.shape(c[2].alive), jnp.nan, jnp.float32)

            return jax.lax.cond(i < n_active, do, skip, carry)

        (params, opt_state, status), losses = jax.lax.scan(
            body, (params, opt_state, status), jnp.arange(chunk)
        )
        return params, opt_state, status, losses

    def out_structure(params, opt_state, status, *_):
        return jax.tree.structure((params, opt_state, status, 0))

    return Program(train_chunk, ("chunk", tx_spec, rollout, chunk, batched), out_structure)


@_one_per_key(maxsize=64)
def _eval_fn(rollout, batched) -> Program:
    def evaluate(params, rest, context, data, loss_args):
        loss, (mse, diverged, reason, t_div) = member_loss(
            params, rest, context, data, rollout, loss_args[0], loss_args[1]
        )
        return loss, mse, diverged, reason, t_div

    if batched:
        evaluate = eqx.filter_vmap(evaluate,
                                   in_axes=(_in_batched, _in_batched, None, None, None))
    return Program(evaluate, ("eval", rollout, batched), lambda *_: jax.tree.structure((0,) * 5))


@eqx.filter_jit
def _track_best(params, best_params, status: MemberStatus, val_loss, step, min_delta, patience):
    """Early-stopping bookkeeping after one evaluation, on device."""
    active = status.alive & ~status.stopped
    improved = active & jnp.isfinite(val_loss) & (
        val_loss < status.best_loss - min_delta * jnp.abs(status.best_loss)
    )
    improved = improved | (active & jnp.isfinite(val_loss) & ~jnp.isfinite(status.best_loss))
    best_params = jax.vmap(_tree_where)(improved, params, best_params)
    bad = jnp.where(improved, 0, status.bad_evals + active.astype(jnp.int32))
    stopped = status.stopped | (active & (bad >= patience))
    status = eqx.tree_at(
        lambda s: (s.best_loss, s.best_step, s.bad_evals, s.stopped),
        status,
        (
            jnp.where(improved, val_loss, status.best_loss),
            jnp.where(improved, step, status.best_step),
            bad,
            stopped,
        ),
    )
    return best_params, status


class TrainOutcome(eqx.Module):
    """Result of :func:`train_members` (host arrays unless said otherwise)."""

    params: Any  # best parameters per member (device, stacked)
    rest: Any
    status: dict  # name -> numpy [member]
    train_curve: np.ndarray  # [member, step] loss at each step (nan once inactive)
    val_curve: np.ndarray  # [member, eval]
    val_steps: np.ndarray  # [eval]
    seconds: float


def train_members(
    params,
    rest,
    *,
    rollout: Callable,
    context,
    train: SplitData,
    val: SplitData | None,
    config: FitConfig,
    mesh=None,
    batched: bool = True,
    on_eval: Callable | None = None,
) -> TrainOutcome:
    """Train stacked members (leading axis on every array leaf of `params` and `rest`).

    `params` holds the trainable leaves (unconstrained), `rest` everything else.
    Early stopping monitors the validation split (the training split when `val`
    is None). `on_eval(status_dict)` is called on the host after each evaluation.
    With ``batched=False`` the same functions run on ONE member without vmap.
    """
    t_start = time.perf_counter()
    params, rest = _strong((params, rest))
    tx = _engine_optimizer(config)
    lr = to_device(config.learning_rate, np.float32)
    loss_args = _loss_args(config)
    opt_state = _strong(_init_fn(tx, batched)(params, lr))
    if batched:
        n = jax.tree.leaves(params)[0].shape[0]
        status = MemberStatus.init(n)
        params, opt_state, status, rest = shard_members((params, opt_state, status, rest), mesh)
        context, train, val = replicate((context, train, val), mesh)
    else:
        status = jax.tree.map(lambda x: x[0], MemberStatus.init(1))
    monitor = val if val is not None else train
    evaluate = _eval_fn(rollout, batched)
    run = _chunk_fn(_tx_spec(config), rollout, config.eval_every, batched)
    patience = config.patience if config.patience is not None else 2**30
    curves, val_losses, val_steps = [], [], []

    def check(params, best_params, status, step):
        vloss = evaluate(params, rest, context, monitor, loss_args)[0]
        if batched:
            best_params, status = _track_best(params, best_params, status, vloss,
                                              to_device(step, np.int32),
                                              to_device(config.min_delta, np.float32),
                                              to_device(patience, np.int32))
        else:
            expand = lambda t: jax.tree.map(lambda x: x[None], t)  # noqa: E731
            b, s = _track_best(expand(params), expand(best_params), expand(status), vloss[None],
                               to_device(step, np.int32),
                               to_device(config.min_delta, np.float32),
                               to_device(patience, np.int32))
            best_params, status = jax.tree.map(lambda x: x[0], (b, s))
        val_losses.append(np.asarray(vloss))
        val_steps.append(step)
        return best_params, status

    # The initial values are a candidate for "best" too.
    best_params, status = check(params, params, status, 0)
    step = 0
    # Warm-up stages of the horizon curriculum (loss on the first part of the record
    # only; same shapes, so the same compiled program); no early stopping there.
    for frac, n_stage in config.curriculum:
        sub = train.with_horizon(frac)
        done = 0
        while done < n_stage:
            n_steps = min(config.eval_every, n_stage - done)
            params, opt_state, status, losses = run(params, opt_state, status, rest, context,
                                                    sub, to_device(n_steps, np.int32),
                                                    loss_args)
            curves.append(np.asarray(losses)[:n_steps])
            done += n_steps
        step += n_stage
    if config.curriculum:
        best_params, status = check(params, best_params, status, step)

    # Full horizon with early stopping on the monitored split.
    steps_done = 0
    while steps_done < config.steps:
        n_steps = min(config.eval_every, config.steps - steps_done)
        params, opt_state, status, losses = run(params, opt_state, status, rest, context, train,
                                                to_device(n_steps, np.int32), loss_args)
        curves.append(np.asarray(losses)[:n_steps])
        steps_done += n_steps
        step += n_steps
        best_params, status = check(params, best_params, status, step)
        host = {k: np.asarray(v) for k, v in vars(status).items()}
        if on_eval is not None:
            on_eval(host)
        if not np.any(host["alive"] & ~host["stopped"]):
            break

    host = {k: np.asarray(v) for k, v in vars(status).items()}
    train_curve = np.concatenate(curves, axis=0)  # [step, member] or [step]
    val_curve = np.stack(val_losses, axis=0)
    if batched:
        train_curve, val_curve = train_curve.T, val_curve.T
    return TrainOutcome(
        params=best_params,
        rest=rest,
        status=host,
        train_curve=train_curve,
        val_curve=val_curve,
        val_steps=np.asarray(val_steps),
        seconds=time.perf_counter() - t_start,
    )


def evaluate_members(params, rest, *, rollout, context, data: SplitData, config: FitConfig,
                     mesh=None, batched=True) -> dict:
    """Loss, MSE and divergence of every member on `data` (host numpy arrays)."""
    params, rest = _strong((params, rest))
    if batched:
        params, rest = shard_members((params, rest), mesh)
        context, data = replicate((context, data), mesh)
    out = _eval_fn(rollout, batched)(params, rest, context, data, _loss_args(config))
    names = ("loss", "mse", "diverged", "reason", "t_diverged")
    return {k: np.asarray(v) for k, v in zip(names, out, strict=True)}
