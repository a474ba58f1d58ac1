"""Single-cell pacing of a catalog model, and the action potential duration of a trace.

Used by the catalog's tests and by the stable-step measurement
(:mod:`leads_jax.physics.reactions._stability`); tissue simulations go through
:func:`leads_jax.simulate.simulate`.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..rush_larsen import rush_larsen_step

SCHEMES = ("euler", "rk4", "rush-larsen")


def _rk4(f, t, y, dt):
    k1 = f(t, y)
    k2 = f(t + dt / 2, y + dt / 2 * k1)
    k3 = f(t + dt / 2, y + dt / 2 * k2)
    k4 = f(t + dt, y + dt * k3)
    return y + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)


@eqx.filter_jit
def _run(model, y0, dt, amplitude, duration, start, n_save, save_every, scheme):
    def current(t):
        return jnp.where((t >= start) & (t < start + duration), amplitude, 0.0)

    def make_f(i_stim):
        return lambda t, y: model.rates(t, y).at[0].add(i_stim)

    if scheme == "euler":
        step = lambda t, y, f: y + dt * f(t, y)
    elif scheme == "rk4":
        step = lambda t, y, f: _rk4(f, t, y, dt)
    else:
        gate_index = type(model).gate_indices()
        step = lambda t, y, f: rush_larsen_step(
            lambda t, y, a: f(t, y), lambda t, y, a: model.gate_inf_tau(y), gate_index,
            t, y, dt,
        )

    def inner(carry, _):
        i, y = carry
        t = i * dt
        # the pulse is held constant over each step (read at the step's midpoint), so
        # a pulse whose edges fall on the grid is delivered exactly by every scheme
        return (i + 1, step(t, y, make_f(current(t + dt / 2)))), None

    def outer(carry, _):
        carry, _ = jax.lax.scan(inner, carry, None, length=save_every)
        return carry, carry[1]

    (_, _), ys = jax.lax.scan(outer, (jnp.asarray(0), y0), None, length=n_save)
    return jnp.concatenate([y0[None], ys])


def pace(
    model,
    *,
    t_end: float,
    dt: float,
    scheme: str = "rk4",
    stimulus: tuple[float, float] | None = None,
    stim_start: float = 0.0,
    save_dt: float | None = None,
    y0=None,
):
    """Pace one cell from rest with one rectangular pulse and integrate with fixed steps.

    **Arguments:**

    - `model`: a catalog reaction model with scalar parameters.
    - `t_end`, `dt`: horizon and step in ms.
    - `scheme`: ``"euler"``, ``"rk4"`` or ``"rush-larsen"``.
    - `stimulus`: ``(amplitude in u/ms, duration in ms)``; defaults to the model's
      ``default_stimulus``. Added to the voltage-like equation from `stim_start`,
      held constant over each step (on when the step's midpoint is inside the pulse).
    - `save_dt`: spacing of the saved samples (a multiple of `dt`; default `dt`).

    **Returns:** ``(ts, states)``: ``ts`` of shape ``(time,)`` and ``states`` of shape
    ``(time, state)``, as NumPy arrays.
    """
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    amplitude, duration = type(model).default_stimulus if stimulus is None else stimulus
    save_dt = dt if save_dt is None else save_dt
    save_every = max(1, int(round(save_dt / dt)))
    n_save = int(round(t_end / (dt * save_every)))
    y0 = model.rest_state() if y0 is None else jnp.asarray(y0)
    ys = _run(model, y0, dt, amplitude, duration, stim_start, n_save, save_every, scheme)
    ts = np.arange(n_save + 1) * dt * save_every
    return ts, np.asarray(ys)


def level_crossing_apd(ts, v, repolarisation: float = 0.9) -> float:
    """APD of the FIRST action potential of ONE trace, between the upward and the
    downward crossing of the SAME level ``v_rest + (1 - repolarisation) * (v_peak -
    v_rest)``, with ``v_rest = v[0]`` (NumPy, linear interpolation): the single-cell
    definition the catalog's measured stability and restitution use.

    Not :func:`leads_jax.measure.apd_from_activation`, which starts each beat at its
    activation (the 50%-amplitude upstroke) and works per beat and node of recordings;
    for a fast upstroke the two differ by the upstroke's rise time between the levels.
    Returns NaN when the trace does not cross the level down again.
    """
    ts, v = np.asarray(ts, float), np.asarray(v, float)
    i_peak = int(np.argmax(v))
    level = v[0] + (1.0 - repolarisation) * (v[i_peak] - v[0])

    def crossing(i0, i1, sign):
        seg = sign * (v[i0:i1] - level)
        idx = np.nonzero((seg[:-1] < 0) & (seg[1:] >= 0))[0]
        if idx.size == 0:
            return np.nan
        j = i0 + idx[0]
        return ts[j] + (level - v[j]) / (v[j + 1] - v[j]) * (ts[j + 1] - ts[j])

    return float(crossing(i_peak, len(v), -1) - crossing(0, i_peak + 1, 1))
