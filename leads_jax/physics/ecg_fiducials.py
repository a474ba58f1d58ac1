"""Reference fiducials and intervals of a McSharry ECG (the exact labels).

Later measurement code (R-peak detection, delineation, interval estimation) is
scored against these numbers, so they are defined once, here, by a fixed,
documented algorithm applied to a noise-free waveform:

**The waveform.** One beat at constant RR, in periodic steady state, without
respiratory baseline wander (``A = 0``) and without noise, sampled uniformly over
one RR at ``n = ceil(sampling_rate * 60 / min_heart_rate)`` points (so at or above
`sampling_rate`, default 2 kHz, for rates >= `min_heart_rate`). Steady state is
exact: the periodic solution of the linear ``z`` equation is obtained in closed
form from one period (no warm-up beats). The slope ``dz/dt`` is not a finite
difference but the model's own right-hand side, ``F(theta) - z``. Times are in ms
relative to the instant the phase crosses 0 (the R-wave angle), so ``r_peak`` is
close to 0; in a simulated ECG started at phase 0 (ECGSYN), beat ``k`` has its
phase origin at ``t = k RR``.

**The algorithm** (search windows come from the model's own wave centres
``t_i = theta_i / omega`` and widths ``sigma_i = b_i / omega`` at this rate):

- *R peak*: maximum of ``z`` over ``[t_Q - 2 sigma_Q, t_S + 2 sigma_S]``, refined by
  a parabola through the three samples round it.
- *QRS onset / offset*: with ``S = max |dz/dt|`` over the QRS window
  ``[min(t_Q - 4 sigma_Q, t_R - 5 sigma_R), max(t_S + 4 sigma_S, t_R + 5 sigma_R)]``,
  start from the steepest point of the window before ``t_Q`` (the Q downstroke, or
  the start of the R upstroke without a Q wave) and go back to where ``|dz/dt|``
  falls below 5% of ``S``; the offset likewise forwards from the steepest point
  after ``t_S`` -- the slope-threshold rule of automatic delineators (boundary at
  a fraction of the peak slope; cf. Laguna et al. 1994, Martinez et al. 2004),
  linearly interpolated between samples.
- *Isoelectric level*: ``z`` at the QRS onset (the PQ junction).
- *T peak*: the extremum of ``z - baseline`` (either polarity) between the QRS
  offset and ``t_T + 2.5 sigma_T``, parabola-refined.
- *T end*: tangent method (Lepeschkin & Surawicz 1952): the tangent at the point
  of steepest descent after the T peak (steepest ascent for an inverted T; searched
  up to ``t_T + 2.5 sigma_T``) crosses the isoelectric level.
- *P onset*: P peak = extremum of ``z - baseline`` over ``t_P +- 1.5 sigma_P``;
  ``S_P`` = the steepest slope towards it over ``[t_P - 2.5 sigma_P, P peak]``; the
  onset is the last time before that point where the slope is below 5% of ``S_P``.
  (At high rates the previous T wave may overlap the P wave; the onset is then
  where the P upstroke emerges from the sum, as a delineator would see it.)
- Intervals (ms): ``RR = 60000 / HR``, ``PR = QRS onset - P onset``, ``QRS = QRS
  offset - QRS onset``, ``QT = T end - QRS onset``; ``QTc_bazett = QT /
  sqrt(RR / 1 s)`` (Bazett 1920), ``QTc_fridericia = QT / (RR / 1 s)^(1/3)``
  (Fridericia 1920).

Everything is pure JAX: :func:`reference_intervals` is jit-, vmap- and
grad-able (fiducial times are interpolated between samples, so they are
piecewise smooth in the parameters). :func:`reference_intervals_table` is the
numpy/xarray wrapper.

**References.** McSharry PE et al., IEEE Trans Biomed Eng 2003;50(3):289-294 (the
model). Lepeschkin E, Surawicz B, Circulation 1952;6:378-388 (tangent method).
Laguna P, Jane R, Caminal P, Comput Biomed Res 1994;27:45-60 and Martinez JP et al.,
IEEE Trans Biomed Eng 2004;51:570-581 (slope-threshold boundaries).
"""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._custom_types import Array
from .mcsharry import HrScaling, McSharryECG, RealLike, WaveLike, _wrap, wave_parameters

__all__ = [
    "INTERVAL_NAMES",
    "FIDUCIAL_NAMES",
    "qt_from_qtc_fridericia",
    "qtc_bazett",
    "qtc_fridericia",
    "reference_intervals",
    "reference_intervals_table",
    "steady_state_beat",
]

INTERVAL_NAMES: tuple[str, ...] = ("RR", "PR", "QRS", "QT", "QTc_bazett", "QTc_fridericia")
FIDUCIAL_NAMES: tuple[str, ...] = (
    "p_onset",
    "qrs_onset",
    "r_peak",
    "qrs_offset",
    "t_peak",
    "t_end",
)
ONSET_FRACTION = 0.05
_TWO_PI = 2.0 * math.pi


def _xp(*xs):
    """``jax.numpy`` for JAX arrays (and tracers), else ``numpy`` (which keeps pandas and
    xarray objects and float64 intact)."""
    return jnp if any(isinstance(x, jax.Array) for x in xs) else np


def qtc_bazett(qt_ms, rr_ms):
    """Bazett's correction ``QT / sqrt(RR / 1 s)`` (ms); Bazett HC, Heart 1920;7:353-370.

    The package's one definition (the ECGRDVQ reader, the calibration and the cohorts use
    it). JAX arrays give JAX arrays; numpy, pandas and xarray inputs keep their type."""
    return qt_ms / _xp(qt_ms, rr_ms).sqrt(rr_ms / 1000.0)


def qtc_fridericia(qt_ms, rr_ms):
    """Fridericia's correction ``QT / (RR / 1 s)^(1/3)`` (ms); Fridericia LS, Acta Med Scand
    1920;53:469-486. One definition for the package (see :func:`qtc_bazett`)."""
    return qt_ms / _xp(qt_ms, rr_ms).cbrt(rr_ms / 1000.0)


def qt_from_qtc_fridericia(qtcf_ms, rr_ms):
    """Inverse of :func:`qtc_fridericia`: the QT (ms) that has Fridericia-corrected value
    ``qtcf_ms`` at ``rr_ms``."""
    return qtcf_ms * _xp(qtcf_ms, rr_ms).cbrt(rr_ms / 1000.0)


def _n_samples(sampling_rate, min_heart_rate) -> int:
    return int(math.ceil(sampling_rate * 60.0 / min_heart_rate))


def steady_state_beat(
    model: McSharryECG,
    heart_rate: RealLike,
    *,
    hr_scaling: HrScaling = "physiological",
    n_samples: int = 4000,
    theta_start: RealLike | None = None,
):
    """One noise-free beat at constant rate in periodic steady state (no baseline wander).

    **Arguments:**

    - `model`: wave parameters (60 bpm).
    - `heart_rate`: bpm.
    - `hr_scaling`: ``"physiological"`` or ``"ecgsyn"`` (mean rate = this rate).
    - `n_samples` (static): samples over one RR.
    - `theta_start`: phase of the first sample; default ``theta_P - 5 b_P`` (before
      the P wave). The period is extended to 1.5 cycles (``n + n // 2`` samples)
      so that P, QRS and the whole T wave lie inside.

    **Returns:** ``(t_ms, z, dzdt, params)``: times (ms, relative to phase 0), raw
    ``z`` (model units), exact ``dz/dt`` (model units per second) and the scaled
    ``(ti, ai, bi)`` in force.
    """
    if hr_scaling not in ("ecgsyn", "physiological"):
        raise ValueError(f"hr_scaling must be 'ecgsyn' or 'physiological'; got {hr_scaling!r}.")
    return _steady_state_beat(
        model,
        jnp.asarray(heart_rate, dtype=float),
        None if theta_start is None else jnp.asarray(theta_start, dtype=float),
        hr_scaling=hr_scaling,
        n_samples=int(n_samples),
    )


@eqx.filter_jit
def _steady_state_beat(model, heart_rate, theta_start, *, hr_scaling, n_samples):
    rr = 60.0 / heart_rate
    omega = _TWO_PI / rr
    ti, ai, bi = wave_parameters(model, rr, hr_scaling=hr_scaling, mean_rr=rr)
    if theta_start is None:
        theta_start = ti[0] - 5.0 * bi[0]
    n = int(n_samples)
    h = rr / n
    k = jnp.arange(n + 1, dtype=rr.dtype)
    theta = theta_start + (_TWO_PI / n) * k
    d = _wrap(theta[:, None] - ti)
    gauss = jnp.exp(-0.5 * (d / bi) ** 2)
    g = jnp.sum(ai * bi**2 * gauss, axis=-1) / omega  # G, with dG/dt = F
    f = -jnp.sum(ai * d * gauss, axis=-1)  # F, ECGSYN's forcing
    lam = jnp.exp(-h)
    inc = (1.0 - 0.5 * h) * g[1:] - lam * (1.0 + 0.5 * h) * g[:-1]
    # z_{k+1} = lam z_k + inc_k; periodic: z_0 = sum_j lam^(n-1-j) inc_j / (1 - lam^n)
    powers = lam ** (n - 1.0 - jnp.arange(n, dtype=rr.dtype))
    z0 = jnp.sum(powers * inc) / (1.0 - lam**n)
    z = _periodic_recurrence(inc, z0, lam)
    dz = f[:-1] - z
    # extend periodically to 1.5 cycles so that no search window is cut by the
    # window end (the next beat's P wave may overlap this beat's T wave)
    n_ext = n // 2
    z = jnp.concatenate([z, z[:n_ext]])
    dz = jnp.concatenate([dz, dz[:n_ext]])
    theta_ext = theta_start + (_TWO_PI / n) * jnp.arange(n + n_ext, dtype=rr.dtype)
    t_ms = 1000.0 * theta_ext / omega
    return t_ms, z, dz, (ti, ai, bi)


def _periodic_recurrence(inc, z0, lam):
    """``z_k`` for k = 0..n-1 of ``z_{k+1} = lam z_k + inc_k`` from ``z_0``."""

    def combine(left, right):
        a1, b1 = left
        a2, b2 = right
        return a1 * a2, a2 * b1 + b2

    a = jnp.full(inc.shape, lam)
    _, acc = jax.lax.associative_scan(combine, (a, inc))
    k = jnp.arange(inc.shape[0], dtype=inc.dtype)
    z_after = acc + lam ** (k + 1.0) * z0  # z_1..z_n
    return jnp.concatenate([jnp.reshape(z0, (1,)), z_after[:-1]])


def _interp_time(t, v, i, thr):
    """Time where ``v`` crosses `thr` between samples ``i - 1`` and ``i`` (linear)."""
    i = jnp.clip(i, 1, v.shape[0] - 1)
    v0, v1 = v[i - 1], v[i]
    den = v1 - v0
    frac = jnp.where(jnp.abs(den) > 0, (thr - v0) / jnp.where(den == 0, 1.0, den), 0.0)
    frac = jnp.clip(frac, 0.0, 1.0)
    return t[i - 1] + frac * (t[i] - t[i - 1])


def _parabolic_peak(t, v, i):
    """Vertex of the parabola through samples ``i - 1, i, i + 1``: (time, value)."""
    i = jnp.clip(i, 1, v.shape[0] - 2)
    a, b, c = v[i - 1], v[i], v[i + 1]
    den = a - 2.0 * b + c
    off = jnp.where(jnp.abs(den) > 0, 0.5 * (a - c) / jnp.where(den == 0, 1.0, den), 0.0)
    off = jnp.clip(off, -1.0, 1.0)
    h = t[i + 1] - t[i]
    return t[i] + off * h, b - 0.25 * (a - c) * off


def _first(mask):
    """Index of the first True (``n`` if none)."""
    n = mask.shape[0]
    return jnp.where(jnp.any(mask), jnp.argmax(mask), n)


def _last(mask):
    """Index of the last True (-1 if none)."""
    n = mask.shape[0]
    return jnp.where(jnp.any(mask), n - 1 - jnp.argmax(mask[::-1]), -1)


def reference_intervals(
    model: McSharryECG,
    heart_rate: RealLike,
    *,
    hr_scaling: HrScaling = "physiological",
    sampling_rate: RealLike = 2000.0,
    min_heart_rate: RealLike = 30.0,
) -> dict[str, Array]:
    """Reference fiducials and intervals of one noise-free beat (see the module docstring).

    Pure JAX: ``jax.vmap(lambda m, hr: reference_intervals(m, hr))`` over stacked
    models and rates; differentiable.

    **Arguments:**

    - `model`: wave parameters (60 bpm).
    - `heart_rate`: bpm (constant RR).
    - `hr_scaling`: ``"physiological"`` (default) or ``"ecgsyn"``.
    - `sampling_rate` (static): minimum effective sampling rate in Hz (>= 2 kHz).
    - `min_heart_rate` (static): the rate down to which `sampling_rate` holds.

    **Returns:** dict of scalars in ms: ``RR, PR, QRS, QT, QTc_bazett,
    QTc_fridericia`` and the fiducial times ``p_onset, qrs_onset, r_peak,
    qrs_offset, t_peak, t_end`` (relative to phase 0 of the beat), and ``valid``
    (bool): the fiducials are in order (P onset < QRS onset < R peak < QRS offset <
    T peak < T end). With the default parameters they are over 40-110 bpm (both
    scalings); at higher rates the waves of successive beats merge (the default
    beat has a long PR and QT) and the labels stop being meaningful.
    """
    if hr_scaling not in ("ecgsyn", "physiological"):
        raise ValueError(f"hr_scaling must be 'ecgsyn' or 'physiological'; got {hr_scaling!r}.")
    n = _n_samples(sampling_rate, min_heart_rate)
    return _reference_intervals(
        model, jnp.asarray(heart_rate, dtype=float), hr_scaling=hr_scaling, n_samples=n
    )


@eqx.filter_jit
def _reference_intervals(model, heart_rate, *, hr_scaling, n_samples):
    t, z, dz, (ti, ai, bi) = _steady_state_beat(
        model, heart_rate, None, hr_scaling=hr_scaling, n_samples=n_samples
    )
    rr_ms = 60000.0 / heart_rate
    to_ms = rr_ms / _TWO_PI  # angle (rad) -> ms
    tc = ti * to_ms
    sg = bi * to_ms
    slope = jnp.abs(dz)

    # R peak
    w_r = (t >= tc[1] - 2 * sg[1]) & (t <= tc[3] + 2 * sg[3])
    i_r = jnp.argmax(jnp.where(w_r, z, -jnp.inf))
    t_r, _ = _parabolic_peak(t, z, i_r)

    # QRS onset / offset at 5% of the QRS peak slope
    q_lo = jnp.minimum(tc[1] - 4 * sg[1], tc[2] - 5 * sg[2])
    q_hi = jnp.maximum(tc[3] + 4 * sg[3], tc[2] + 5 * sg[2])
    w_q = (t >= q_lo) & (t <= q_hi)
    s_max = jnp.max(jnp.where(w_q, slope, 0.0))
    thr = ONSET_FRACTION * s_max
    idx = jnp.arange(t.shape[0])
    # anchors: the steepest point before the Q centre (the Q downstroke, or the
    # start of the R upstroke if there is no Q wave) and after the S centre; from
    # there the boundary is the nearest crossing of the 5% threshold outwards
    i_a = jnp.argmax(jnp.where(w_q & (t <= tc[1]), slope, -jnp.inf))
    i_b = jnp.argmax(jnp.where(w_q & (t >= tc[3]), slope, -jnp.inf))
    i_on = _last((idx < i_a) & (slope < thr)) + 1
    t_on = _interp_time(t, slope, i_on, thr)
    i_off = _first((idx > i_b) & (slope < thr)) - 1
    t_off = _interp_time(t, slope, i_off + 1, thr)
    base = jnp.interp(t_on, t, z)

    # T peak and T end (tangent method)
    # the T peak lies within 2 sigma_T of the T centre, the steepest descent (at
    # ~ t_T + sigma_T for a Gaussian) too: windows end at t_T + 2.5 sigma_T so that
    # the next beat's P wave, which may overlap the T tail at high rates, is never taken
    t_hi = tc[4] + 2.5 * sg[4]
    w_t = (t > t_off) & (t <= t_hi)
    dev = z - base
    i_tp = jnp.argmax(jnp.where(w_t, jnp.abs(dev), -jnp.inf))
    pol = jnp.sign(dev[i_tp])
    t_tp, _ = _parabolic_peak(t, pol * dev, i_tp)
    w_desc = w_t & (idx > i_tp)
    i_m = jnp.argmax(jnp.where(w_desc, -pol * dz, -jnp.inf))
    t_end = t[i_m] + 1000.0 * (base - z[i_m]) / dz[i_m]

    # P onset at 5% of the P wave's peak slope
    w_p = (t >= tc[0] - 1.5 * sg[0]) & (t <= jnp.minimum(tc[0] + 1.5 * sg[0], t_on))
    i_pp = jnp.argmax(jnp.where(w_p, jnp.abs(dev), -jnp.inf))
    pol_p = jnp.sign(dev[i_pp])
    rise = pol_p * dz
    w_rise = (t >= tc[0] - 2.5 * sg[0]) & (idx <= i_pp)
    i_ps = jnp.argmax(jnp.where(w_rise, rise, -jnp.inf))
    thr_p = ONSET_FRACTION * rise[i_ps]
    i_pon = _last((idx < i_ps) & (rise < thr_p)) + 1
    t_pon = _interp_time(t, rise, i_pon, thr_p)

    qt = t_end - t_on
    order = jnp.stack([t_pon, t_on, t_r, t_off, t_tp, t_end])
    valid = jnp.all(jnp.diff(order) > 0) & jnp.all(jnp.isfinite(order))
    return {
        "RR": rr_ms,
        "PR": t_on - t_pon,
        "QRS": t_off - t_on,
        "QT": qt,
        "QTc_bazett": qtc_bazett(qt, rr_ms),
        "QTc_fridericia": qtc_fridericia(qt, rr_ms),
        "p_onset": t_pon,
        "qrs_onset": t_on,
        "r_peak": t_r,
        "qrs_offset": t_off,
        "t_peak": t_tp,
        "t_end": t_end,
        "valid": valid,
    }


def reference_intervals_table(
    model: McSharryECG | None = None,
    heart_rate: WaveLike = (50, 60, 70, 80, 90, 100, 110),
    *,
    hr_scaling: HrScaling = "physiological",
    sampling_rate: RealLike = 2000.0,
    min_heart_rate: RealLike = 30.0,
):
    """Numpy/xarray wrapper: reference intervals over heart rates (and models).

    **Arguments:** `model` (default :meth:`McSharryECG.default`; a stacked model with
    leading dim ``ecg`` is evaluated per member), `heart_rate` (bpm, scalar or 1-D),
    the rest as :func:`reference_intervals`.

    **Returns:** ``xarray.Dataset`` with one variable per interval / fiducial (ms),
    dims ``(heart_rate,)`` or ``(ecg, heart_rate)``.

    **Raises:** ``ValueError`` for non-positive or non-finite heart rates or a
    sampling rate below 2 kHz.
    """
    import xarray as xr

    if model is None:
        model = McSharryECG.default()
    hr = np.atleast_1d(np.asarray(heart_rate, dtype=float))
    if hr.ndim != 1 or not np.all(np.isfinite(hr)) or np.any(hr <= 0):
        raise ValueError(f"heart_rate must be finite and > 0 bpm; got {hr.tolist()}.")
    if np.any(hr < min_heart_rate):
        raise ValueError(
            f"heart_rate must be >= min_heart_rate ({min_heart_rate} bpm); got {hr.tolist()}."
        )
    if not sampling_rate >= 2000.0:
        raise ValueError(f"sampling_rate must be >= 2000 Hz; got {sampling_rate}.")
    fn = jax.jit(
        jax.vmap(
            lambda m, h: reference_intervals(
                m, h, hr_scaling=hr_scaling, sampling_rate=sampling_rate,
                min_heart_rate=min_heart_rate,
            ),
            in_axes=(None, 0),
        )
    )
    batched = model.ti.ndim == 2
    if batched:
        out = jax.vmap(fn, in_axes=(0, None))(model, jnp.asarray(hr))
        dims = ("ecg", "heart_rate")
    else:
        out = fn(model, jnp.asarray(hr))
        dims = ("heart_rate",)
    data = {
        k: (dims, np.asarray(v, dtype=float), {"units": "ms"})
        for k, v in out.items()
        if k != "valid"
    }
    data["valid"] = (dims, np.asarray(out["valid"], dtype=bool), {})
    return xr.Dataset(
        data,
        coords={"heart_rate": ("heart_rate", hr, {"units": "bpm"})},
        attrs={
            "hr_scaling": hr_scaling,
            "sampling_rate": sampling_rate,
            "algorithm": "leads_jax.physics.ecg_fiducials (5% peak-slope onsets, tangent T end)",
        },
    )
