"""Simulation of compiled models with diffrax: pure, jit/vmap-able, never raising.

:func:`simulate` integrates ``d(state)/dt = reaction + closures + diffusion + stimulus``
of a compiled model (:mod:`leads_jax.compile`) on a geometry and returns a
:class:`Trajectory`. Divergence is *data*: every step is checked by a diffrax
:class:`~diffrax.Event` (non-finite state, or a state outside the model's admissible
bounds); a member that diverges stops there, is marked with a reason and a time, and
under ``vmap`` the other members of the batch are unaffected.

Reason codes (``Trajectory.reason``) are :class:`~leads_jax.codes.ResultCode` values:
``OK`` (0), ``NONFINITE_STATE`` (1, or another solver failure), ``OUT_OF_BOUNDS`` (2),
``MAX_STEPS`` (3). Saved values after the divergence time are NaN.

Solvers come from the one table :data:`leads_jax.solvers.SOLVERS` (also what
:class:`~leads_jax.fit.FitConfig` accepts). The model is used only through the
:class:`~leads_jax.compile.AbstractCompiledModel` contract.

Steps: fixed-step RK4 by default with ``dt`` = the reaction model's measured stable step
(``stable_dt``). Explicit diffusion adds its own limit, ``dt <= 2 / max_i (2/m_i sum_j
c_ij)`` for Euler (see :func:`diffusion_stable_dt`); a candidate whose conductivity
breaks it diverges and is flagged, which is what the fitting engine wants. Adaptive
steps (``adaptive=True`` with ``solver="tsit5"``/``"dopri5"``/``"heun"``) use a
PID controller wrapped in a ``ClipStepSizeController`` whose ``jump_ts`` are the
stimulus on/off times, so a step can neither skip a pulse nor straddle its edges.
Gated models can use ``solver="rush-larsen"`` (exact exponential gate updates).
"""

from __future__ import annotations

import math

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._custom_types import Array, Bool, Float, Int
from .codes import ResultCode
from .compile import AbstractBoundModel, AbstractCompiledModel, diffusion_stable_dt
from .physics.rush_larsen import GatedODETerm
from .solvers import RK4, SOLVERS, solver_spec


class Trajectory(eqx.Module):
    """Result of :func:`simulate` (add a leading batch axis under ``vmap``).

    - `ts` ``[time]`` (ms): the requested save times.
    - `observed` ``[time node]`` (mV): the observed transmembrane potential.
    - `state` ``[time state node]``: every state variable.
    - `result`: diffrax's result code (int; 0 = successful).
    - `diverged`: True when the member stopped early (``reason != 0``).
    - `reason`: a :class:`~leads_jax.codes.ResultCode` value (0 ok).
    - `t_diverged` (ms): the time the member stopped; ``inf`` when it did not.
    """

    ts: Float[Array, " time"]
    observed: Float[Array, " time node"]
    state: Float[Array, " time state node"]
    result: Int[Array, ""]
    diverged: Bool[Array, ""]
    reason: Int[Array, ""]
    t_diverged: Float[Array, ""]

    def reason_text(self) -> str | list[str]:
        """Plain-language reason(s) (host side)."""
        r = np.asarray(self.reason)
        if r.ndim == 0:
            return ResultCode.describe(r)
        return [ResultCode.describe(x) for x in r.ravel()]


class _Field(eqx.Module):
    """The ODE right-hand side ``(t, y, args)`` of a bound model plus stimulus."""

    bound: AbstractBoundModel
    stimulus: object

    def __call__(self, t, y, args):
        return self.bound.vector_field(t, y, self.stimulus)

    def gates(self, t, y, args):
        return self.bound.gate_inf_tau(y)


def _concrete(x, what):
    try:
        return np.asarray(x, dtype=float)
    except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError):
        raise ValueError(
            f"{what} must be concrete (not traced) to size the solve; close over it or "
            "pass max_steps explicitly"
        ) from None


def simulate(
    model: AbstractCompiledModel,
    geometry,
    stimulus,
    ts,
    *,
    y0=None,
    solver: str = "rk4",
    dt: float | None = None,
    adaptive: bool = False,
    rtol: float = 1e-4,
    atol: float = 1e-6,
    max_steps: int | None = None,
    adjoint: diffrax.AbstractAdjoint | None = None,
    check_bounds: bool = True,
) -> Trajectory:
    """Integrate `model` on `geometry` under `stimulus`, saving at `ts`.

    **Arguments:**

    - `model`: a compiled model (:func:`~leads_jax.compile.compile_structure` or
      :func:`~leads_jax.compile.compile_vector_field`); may be one member of a vmapped
      batch.
    - `geometry`: the :class:`~leads_jax.geometry.Geometry` (``None`` for uncoupled
      nodes without diffusion).
    - `stimulus`: a :class:`~leads_jax.stimulus.Stimulus` (or anything with
      ``current(t) -> (node,)`` and ``jump_times()``), or ``None``.
    - `ts` ``[time]`` (ms): increasing save times; the solve runs from ``ts[0]`` to
      ``ts[-1]``. Must be concrete unless `max_steps` is given.
    - `y0` ``[state node]``: initial state (default: the model's resting state).
    - `solver`: one of ``SOLVERS`` (default ``"rk4"``).
    - `dt` (ms): the (initial) step; default the model's ``default_dt``.
    - `adaptive`: PID step-size control (needs an embedded error estimate).
    - `rtol`, `atol`: tolerances of adaptive steps.
    - `max_steps`: default ``ceil((t1 - t0)/dt) + 2`` for fixed steps, 16x that for
      adaptive ones.
    - `adjoint`: default ``diffrax.RecursiveCheckpointAdjoint()`` (reverse mode).
    - `check_bounds`: stop members that leave the model's state bounds.

    **Returns:** a :class:`Trajectory`. Never raises for numerical failure; invalid
    arguments (unknown solver, bad shapes) raise ``ValueError`` before tracing.
    """
    spec = solver_spec(solver)
    if adaptive and not spec.adaptive:
        raise ValueError(
            f"solver {solver!r} has no error estimate for adaptive steps; use one of "
            f"{tuple(n for n, s in SOLVERS.items() if s.adaptive)} or adaptive=False"
        )
    ts_in = ts
    ts = jnp.asarray(ts, float)
    if ts.ndim != 1 or ts.shape[0] < 2:
        raise ValueError(f"ts must be a 1-D array of at least 2 times, got shape {ts.shape}")
    if dt is None:
        dt = model.default_dt
    dt = float(dt)
    if not (dt > 0 and math.isfinite(dt)):
        raise ValueError(f"dt must be a positive finite step in ms, got {dt}")
    n_states = len(model.state_names)
    n_nodes = geometry.n_nodes if geometry is not None else model.n_nodes
    if y0 is None:
        if n_nodes is None:
            raise ValueError("pass y0 or a geometry (the node count is unknown)")
        y0 = model.initial_state(n_nodes)
    y0 = jnp.asarray(y0, float)
    if y0.ndim != 2 or y0.shape[0] != n_states or (n_nodes is not None and y0.shape[1] != n_nodes):
        raise ValueError(
            f"y0 must have shape (state={n_states}, node={n_nodes}), got {tuple(y0.shape)}"
        )
    if max_steps is None:
        host_ts = _concrete(ts_in, "ts")
        span = float(host_ts[-1] - host_ts[0])
        if not span > 0:
            raise ValueError("ts must be increasing (ts[-1] > ts[0])")
        max_steps = int(math.ceil(span / dt)) + 2
        if adaptive:
            max_steps *= 16
    max_steps = int(max_steps)

    bound = model.bind(geometry)
    field = _Field(bound, stimulus)
    term = diffrax.ODETerm(field)
    if spec.gated:
        if not bound.gate_names:
            raise ValueError(
                f"solver={solver!r} needs a model with gate states; this model has none "
                f"(states {model.state_names})"
            )
        gate_index = tuple(model.state_names.index(g) for g in bound.gate_names)
        term = GatedODETerm(field, field.gates, gate_index)
    solver_obj = spec.cls()

    if adaptive:
        jumps = None
        if stimulus is not None:
            jumps = jnp.asarray(stimulus.jump_times(), float)
        controller = diffrax.PIDController(rtol=rtol, atol=atol, dtmax=None)
        if jumps is not None and jumps.size:
            controller = diffrax.ClipStepSizeController(controller, jump_ts=jumps)
    else:
        controller = diffrax.ConstantStepSize()

    bounds = model.state_bounds
    lo = bounds[:, 0][:, None]
    hi = bounds[:, 1][:, None]

    def bad_state(t, y, args, **kwargs):
        bad = ~jnp.all(jnp.isfinite(y))
        if check_bounds:
            bad = bad | jnp.any(y < lo) | jnp.any(y > hi)
        return bad

    sol = diffrax.diffeqsolve(
        term,
        solver_obj,
        t0=ts[0],
        t1=ts[-1],
        dt0=dt,
        y0=y0,
        # Two sub-saves: the requested times (unreached ones stay inf) and the final
        # time, which is the divergence time when the event stopped the solve.
        saveat=diffrax.SaveAt(subs=[diffrax.SubSaveAt(ts=ts), diffrax.SubSaveAt(t1=True)]),
        stepsize_controller=controller,
        max_steps=max_steps,
        adjoint=diffrax.RecursiveCheckpointAdjoint() if adjoint is None else adjoint,
        event=diffrax.Event(bad_state),
        throw=False,
    )
    ys, y_end, t_end = sol.ys[0], sol.ys[1][0], sol.ts[1][0]
    result = sol.result._value.astype(jnp.int32)
    event = sol.result == diffrax.RESULTS.event_occurred
    out_of_steps = sol.result == diffrax.RESULTS.max_steps_reached
    failed = sol.result != diffrax.RESULTS.successful
    nonfinite = ~jnp.all(jnp.isfinite(y_end))
    reason = jnp.where(
        event,
        jnp.where(nonfinite, int(ResultCode.NONFINITE_STATE), int(ResultCode.OUT_OF_BOUNDS)),
        jnp.where(out_of_steps, int(ResultCode.MAX_STEPS),
                  jnp.where(failed, int(ResultCode.NONFINITE_STATE), int(ResultCode.OK))),
    ).astype(jnp.int32)
    diverged = reason != 0
    t_div = jnp.where(diverged, t_end, jnp.inf).astype(ts.dtype)
    # diffrax leaves unreached save slots at inf; make "no value" explicit and uniform.
    after = (ts > t_div)[:, None, None] | ~jnp.isfinite(ys)
    ys = jnp.where(after, jnp.nan, ys)
    observed = jax.vmap(model.observe)(ys)
    return Trajectory(
        ts=ts,
        observed=observed,
        state=ys,
        result=result,
        diverged=diverged,
        reason=reason,
        t_diverged=t_div,
    )


def simulate_batch(stacked_models, geometry, stimulus, ts, **kwargs) -> Trajectory:
    """:func:`simulate` vmapped over a stacked batch of models (see
    :func:`~leads_jax.batching.stack_models`); geometry, stimulus and `ts` are shared.
    Call it under ``eqx.filter_jit`` to compile once per topology and bucket size."""
    return eqx.filter_vmap(lambda m: simulate(m, geometry, stimulus, ts, **kwargs))(
        stacked_models
    )


__all__ = [
    "RK4",
    "SOLVERS",
    "Trajectory",
    "diffusion_stable_dt",
    "simulate",
    "simulate_batch",
]
