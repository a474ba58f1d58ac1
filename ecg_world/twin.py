"""Virtual twins from measured intervals: McSharry parameters whose reference intervals match a
subject's baseline RR, PR, QRS and QT, so a twin exists for a table row without its waveform.

The twin is the kernel's default beat (:meth:`McSharryECG.default`) deformed by the same
three wave stretches the drug map uses (:func:`ecg_world.pharmacology.scale_waves`: P-wave
distance/width for PR, Q/R/S widths for QRS, T-wave distance/width for QT) at the measured
heart rate. The three stretch factors are found by a multiplicative fixed-point iteration on
the kernel's exact reference intervals
(:func:`leads_jax.physics.ecg_fiducials.reference_intervals`), pure JAX and ``vmap``-able
over subjects; it converges in a few iterations because each interval responds (nearly)
proportionally to its own stretch.
"""

from __future__ import annotations

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from jaxtyping import Array, Float

from leads_jax.physics.ecg_fiducials import reference_intervals
from leads_jax.physics.mcsharry import McSharryECG

from .batch import Intervals
from .ecgrdvq import as_read_table, subject_baselines
from .pharmacology import PatientParams, scale_waves

INTERVAL_NAMES = ("RR", "PR", "QRS", "QT")
#: plausible ranges (ms) of measured baseline intervals accepted by the twin fit
INTERVAL_RANGES = {"RR": (300.0, 2000.0), "PR": (60.0, 400.0), "QRS": (50.0, 200.0),
                   "QT": (200.0, 700.0)}


def kernel_intervals(model, heart_rate, *, sampling_rate: float | int = 2000.0
                     ) -> Float[Array, "4"]:
    """(RR, PR, QRS, QT) in ms of the kernel's reference fiducials, physiological scaling
    (the vector that the twin fit iterates on; :func:`patient_intervals` gives named
    fields)."""
    r = reference_intervals(model, heart_rate, hr_scaling="physiological",
                            sampling_rate=sampling_rate)

    def get(k):
        return r[k] if isinstance(r, dict) else getattr(r, k)

    return jnp.stack([jnp.asarray(get(k), jnp.float32) for k in INTERVAL_NAMES])


def patient_intervals(params: PatientParams, *, sampling_rate: float | int = 2000.0
                      ) -> Intervals:
    """Named :class:`~ecg_world.batch.Intervals` (RR, PR, QRS, QT, QTcF, QTcB, heart rate) of
    a patient's (scalar) kernel beat, NaN where ``params.valid`` is False (an invalid action:
    the NaN parameters would otherwise give arbitrary fiducials)."""
    iv = kernel_intervals(params.ecg, params.heart_rate, sampling_rate=sampling_rate)
    iv = jnp.where(params.valid, iv, jnp.nan)
    return Intervals.from_rr_pr_qrs_qt(iv[0], iv[1], iv[2], iv[3])


class TwinFit(eqx.Module):
    """Result of a twin fit: stretch fractions (QT, PR, QRS), achieved intervals (ms)."""

    qt_frac: Float[Array, "*b"]
    pr_frac: Float[Array, "*b"]
    qrs_frac: Float[Array, "*b"]
    achieved: Float[Array, "*b 4"]


def fit_twin_scales(base_model, rr_ms, pr_ms, qrs_ms, qt_ms, *, n_iter: int = 6,
                    sampling_rate: float | int = 2000.0) -> TwinFit:
    """Fixed-point fit of the three stretches to one subject's intervals (pure JAX)."""
    hr = 60000.0 / rr_ms
    target = jnp.stack([pr_ms, qrs_ms, qt_ms])

    def measure(f):
        m = scale_waves(base_model, f[2], f[0], f[1])
        return kernel_intervals(m, hr, sampling_rate=sampling_rate)

    def body(_, f):
        got = measure(f)[1:]
        ratio = target / jnp.maximum(got, 1.0)
        f_new = (1.0 + f[jnp.array([0, 1, 2])]) * ratio - 1.0
        return jnp.clip(f_new, -0.6, 1.5)

    # f = (pr, qrs, qt) fractions
    f = jax.lax.fori_loop(0, n_iter, body, jnp.zeros(3, jnp.float32))
    return TwinFit(qt_frac=f[2], pr_frac=f[0], qrs_frac=f[1], achieved=measure(f))


@functools.partial(jax.jit, static_argnames=("n_iter",))
def _fit_twins(base, rr, pr, qrs, qt, *, n_iter):
    return jax.vmap(lambda a, b, c, d: fit_twin_scales(base, a, b, c, d, n_iter=n_iter))(
        rr, pr, qrs, qt)


def twin_from_intervals(rr_ms, pr_ms, qrs_ms, qt_ms, *, base_model=None, n_iter: int = 6,
                        eta_pk=None, eta_pd=0.0) -> tuple[PatientParams, TwinFit]:
    """A :class:`~ecg_world.pharmacology.PatientParams` whose reference intervals match the
    given baseline intervals (ms). Raises ``ValueError`` for non-finite or implausible input
    (ranges in :data:`INTERVAL_RANGES`)."""
    vals = {"RR": rr_ms, "PR": pr_ms, "QRS": qrs_ms, "QT": qt_ms}
    for k, v in vals.items():
        a = np.asarray(v, float)
        lo, hi = INTERVAL_RANGES[k]
        if not np.all(np.isfinite(a)) or np.any(a < lo) or np.any(a > hi):
            raise ValueError(f"{k} must be finite and within [{lo}, {hi}] ms; got {a.tolist()}")
    base = base_model or McSharryECG.default()
    arr = [jnp.atleast_1d(jnp.asarray(v, jnp.float32)) for v in (rr_ms, pr_ms, qrs_ms, qt_ms)]
    arr = jnp.broadcast_arrays(*arr)
    n = arr[0].shape[0]
    # pad the subjects to a power of two (>= 8): one compilation serves many cohort sizes
    n_pad = max(8, 1 << (n - 1).bit_length())
    padded = [jnp.concatenate([a, jnp.broadcast_to(a[-1:], (n_pad - n,))]) for a in arr]
    tf = jax.tree_util.tree_map(lambda x: x[:n], _fit_twins(base, *padded, n_iter=n_iter))
    ecg = scale_waves(base, tf.qt_frac, tf.pr_frac, tf.qrs_frac)
    eta_pk = jnp.zeros((n, 3)) if eta_pk is None else jnp.broadcast_to(eta_pk, (n, 3))
    eta_pd = jnp.broadcast_to(jnp.asarray(eta_pd, jnp.float32), (n,))
    params = PatientParams(ecg=ecg, heart_rate=60000.0 / arr[0], eta_pk=eta_pk,
                           eta_pd=eta_pd)
    return params, tf


def twins_from_table(table, *, n_iter: int = 6) -> tuple[pd.DataFrame, PatientParams]:
    """One twin per subject of an ECGRDVQ table (its mean pre-dose intervals over periods).

    Returns a DataFrame (subject, measured and achieved intervals) and batched params."""
    df = as_read_table(table)
    base = subject_baselines(df).dropna()
    params, tf = twin_from_intervals(base.RR.values, base.PR.values, base.QRS.values,
                                     base.QT.values, n_iter=n_iter)
    out = base[["RR", "PR", "QRS", "QT"]].copy()
    ach = np.asarray(tf.achieved)
    for i, k in enumerate(INTERVAL_NAMES):
        out[f"{k}_twin"] = ach[:, i]
    return out, params
