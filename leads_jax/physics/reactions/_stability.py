"""Measure each catalog model's stable explicit step (single cell, default parameters).

Run ``python -m leads_jax.physics.reactions._stability`` to reproduce the numbers
stored as ``stable_dt`` and ``stable_dt_limits`` on each model class.

Two measurements, both on one beat of 600 ms:

- **Usable limit per scheme** (``stable_dt_limits``; "euler", "rk4", "rush-larsen"):
  the largest step, found by bisection on a log scale (2% resolution), at which a
  beat started from rest with the voltage-like state kicked to ``U_KICK = 0.4``
  (above every model's threshold; a kick rather than a pulse so that long steps
  cannot skip the stimulus) stays finite, inside ``state_bounds``, and has an APD90
  within 5% of a fine-step reference.
- **Linearised RK4 limit**: along a fine-step paced beat, the largest step for which
  every eigenvalue with negative real part of the Jacobian of ``rates`` lies in the
  RK4 stability region ``|R(dt * lambda)| <= 1``.

``stable_dt`` (scheme RK4) is the largest value of the 1-2-5 series that is at most
half of both RK4 limits, at most half the ``default_stimulus`` duration (a pulse spans
at least two steps), and whose paced beat (``default_stimulus`` from rest) is
*converged*: APD90 within 1% and peak within 1 mV of the same beat at a 10x smaller
step, both read on the same samples. Parameters far from the defaults (e.g. a smaller ``tau_d``)
and tissue diffusion (``D dt / dx^2``) can need smaller steps.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from ._single_cell import level_crossing_apd, pace

T_END = 600.0
U_KICK = 0.4
SCHEMES = ("euler", "rk4", "rush-larsen")


def _kicked_beat(model, dt: float, scheme: str):
    y0 = model.rest_state().at[0].set(U_KICK)
    save_dt = dt * max(1, round(0.1 / dt))
    return pace(model, t_end=T_END, dt=dt, scheme=scheme, stimulus=(0.0, 0.0), y0=y0,
                save_dt=save_dt)


def _apd(model, ts, ys):
    return level_crossing_apd(ts, np.asarray(model.observe(jnp.asarray(ys.T))))


def is_usable(model, dt: float, scheme: str, apd_ref: float) -> bool:
    cls = type(model)
    ts, ys = _kicked_beat(model, dt, scheme)
    lo = np.array([b[0] for b in cls.state_bounds])
    hi = np.array([b[1] for b in cls.state_bounds])
    if not (np.all(np.isfinite(ys)) and np.all((ys >= lo) & (ys <= hi))):
        return False
    return bool(abs(_apd(model, ts, ys) - apd_ref) <= 0.05 * apd_ref)


def usable_limit(model, scheme: str, lo: float = 1e-3, hi: float = 20.0) -> float:
    """Largest usable step (ms) by bisection on log(dt)."""
    apd_ref = _apd(model, *_kicked_beat(model, 0.005, "rk4"))
    if is_usable(model, hi, scheme, apd_ref):
        return hi
    while math.log(hi / lo) > math.log(1.02):
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if is_usable(model, mid, scheme, apd_ref) else (lo, mid)
    return lo


def linear_rk4_limit(model) -> float:
    """Largest dt with |R_rk4(dt lambda)| <= 1 for every decaying eigenvalue on a beat."""
    _, ys = pace(model, t_end=T_END, dt=0.005, save_dt=0.05)
    jac = jax.vmap(jax.jacfwd(lambda y: model.rates(0.0, y)))(jnp.asarray(ys))
    lam = np.linalg.eigvals(np.asarray(jac, np.float64)).ravel()
    lam = np.unique(np.round(lam[lam.real < -1e-9], 6))
    z = np.linspace(0.0, 20.0, 20001)[:, None] * lam[None, :]
    ok = np.abs(1 + z + z**2 / 2 + z**3 / 6 + z**4 / 24) <= 1.0 + 1e-9
    first_bad = np.argmin(np.all(ok, axis=1))  # first dt row where any eigenvalue fails
    return float(np.linspace(0.0, 20.0, 20001)[max(first_bad - 1, 0)]) if lam.size else 20.0


def beat_summary(model, dt: float, scheme: str = "rk4", save_dt: float | None = None):
    """(APD90 ms, peak mV) of one paced beat, sampled every `save_dt` (default: every
    0.1 ms, or every step when steps are longer)."""
    save_dt = dt * max(1, round(0.1 / dt)) if save_dt is None else save_dt
    ts, ys = pace(model, t_end=T_END, dt=dt, scheme=scheme, save_dt=save_dt)
    v = np.asarray(model.observe(jnp.asarray(ys.T)))
    return level_crossing_apd(ts, v), float(v.max())


def converged(model, dt: float, scheme: str = "rk4") -> bool:
    """APD90 within 1% and peak within 1 mV of a 10x smaller step, on the same samples."""
    save_dt = dt * max(1, round(0.1 / dt))
    apd, peak = beat_summary(model, dt, scheme, save_dt)
    apd_ref, peak_ref = beat_summary(model, dt / 10, scheme, save_dt)
    return abs(apd - apd_ref) <= 0.01 * apd_ref and abs(peak - peak_ref) <= 1.0


def measure(cls) -> dict:
    model = cls.default()
    limits = {s: usable_limit(model, s) for s in SCHEMES}
    lin = linear_rk4_limit(model)
    cap = 0.5 * min(limits["rk4"], lin, cls.default_stimulus[1])
    series = sorted((m * 10.0**e for e in range(-3, 1) for m in (1, 2, 5)), reverse=True)
    stable = next(dt for dt in series if dt <= cap and converged(model, dt))
    return {"limits": limits, "linear_rk4_limit": lin, "stable_dt": stable}


if __name__ == "__main__":
    from . import REACTIONS

    for name, cls in REACTIONS.items():
        r = measure(cls)
        lim = ", ".join(f'"{k}": {v:.3g}' for k, v in r["limits"].items())
        print(
            f"{name:20s} stable_dt (rk4) = {r['stable_dt']:g} ms  linearised rk4 limit "
            f"{r['linear_rk4_limit']:.3g}  usable limits: {{{lim}}}",
            flush=True,
        )
