"""Evaluation of world-model strips: intervals, waveform errors, rollout calibration and
documented plausibility ("hallucination") rules.

**Intervals** of a strip are read with :func:`ecg_world.intervals.measure_intervals` on every
lead's median beat and summarised by the median over leads. The cohort's leads carry the
LUDB-derived wave gains (:func:`ecg_world.cohort.lead_gains`), on which the delineator reads
lead II; with neurokit2's multi-lead table the true strips themselves failed these rules.

**Plausibility rules** (:func:`plausibility`), each a boolean per strip:

1. ``beats``: the number of detected QRS complexes is consistent with the heart rate
   (within +-1 of ``(duration - first R) / RR + 1``) and there are at least 2;
2. ``order``: every detected beat has its P onset (where a P wave is found), QRS onset, QRS
   offset and T end in that order;
3. ``ranges``: median-beat RR, PR, QRS, QT and QTcF inside
   :data:`ecg_world.batch.PLAUSIBLE_RANGES`;
4. ``amplitude``: every lead's peak-to-peak amplitude inside [0.5, 1.5] x the training strips'
   range of that lead.

A strip that fails any rule is a hallucination.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from ..batch import PLAUSIBLE_RANGES
from ..intervals import IntervalConfig, measure_intervals

__all__ = ["strip_intervals", "plausibility", "wilson_interval", "crps_ensemble"]


def _measure(strips, fs):
    x = np.asarray(strips, np.float32)
    flat = x.reshape((-1,) + x.shape[-2:])
    cfg = IntervalConfig.for_duration(fs, x.shape[-1] / fs)
    out = [measure_intervals(jnp.asarray(flat[i:i + 512]), cfg) for i in range(0, len(flat), 512)]
    return out, x.shape[:-2]


def strip_intervals(strips, fs: float) -> dict[str, np.ndarray]:
    """Median-over-leads median-beat intervals (ms) of strips ``(..., lead, time)``."""
    res, shape = _measure(strips, fs)
    out = {}
    for k, name in (("rr", "RR"), ("pr", "PR"), ("qrs", "QRS"), ("qt", "QT"),
                    ("qtc_fridericia", "QTcF")):
        v = np.concatenate([np.asarray(getattr(r.median, k)) for r in res])
        with np.errstate(all="ignore"):
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                out[name] = np.nanmedian(v, axis=-1).reshape(shape)
    return out


def plausibility(strips, fs: float, amp_range: np.ndarray) -> dict[str, np.ndarray]:
    """The four rules of the module docstring per strip ``(..., lead, time)``; `amp_range`
    (lead,) the training strips' median peak-to-peak amplitude per lead."""
    import warnings

    res, shape = _measure(strips, fs)
    x = np.asarray(strips, np.float32)
    cat = lambda f: np.concatenate([np.asarray(f(r)) for r in res])
    mask = cat(lambda r: r.beat_mask)  # (n, lead, beat)
    n_beats = mask.sum(-1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        rr = np.nanmedian(cat(lambda r: r.median.rr), axis=-1)
        first = np.nanmin(np.where(mask, cat(lambda r: r.r_peak), np.nan), axis=(-1, -2))
        dur = x.shape[-1] / fs
        expect = (dur - first) / (rr / 1000.0) + 1
        nb = np.nanmedian(n_beats, axis=-1)
        beats = (nb >= 2) & (np.abs(nb - expect) <= 1.5)
        po, qon, qoff, te = (cat(lambda r, k=k: getattr(r, k)) for k in
                             ("p_onset", "qrs_onset", "qrs_offset", "t_end"))
        okb = ((np.isnan(po) | (po < qon)) & (qon < qoff) & (np.isnan(te) | (qoff < te)))
        order = np.all(okb | ~mask, axis=(-1, -2))
        ranges = np.ones(len(mask), bool)
        for k, name in (("rr", "rr"), ("pr", "pr"), ("qrs", "qrs"), ("qt", "qt"),
                        ("qtc_fridericia", "qtcf")):
            v = np.nanmedian(cat(lambda r, k=k: getattr(r.median, k)), axis=-1)
            lo, hi = PLAUSIBLE_RANGES[name]
            ranges &= (v >= lo) & (v <= hi)
    flat = x.reshape((-1,) + x.shape[-2:])
    p2p = flat.max(-1) - flat.min(-1)
    amplitude = np.all((p2p >= 0.5 * amp_range) & (p2p <= 1.5 * amp_range), axis=-1)
    rules = {"beats": beats, "order": order, "ranges": ranges, "amplitude": amplitude}
    rules = {k: v.reshape(shape) for k, v in rules.items()}
    rules["plausible"] = rules["beats"] & rules["order"] & rules["ranges"] & rules["amplitude"]
    return rules


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion k/n (Wilson EB, JASA 1927;22:209-212)."""
    if n == 0:
        return (float("nan"), float("nan"))
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (max(0.0, c - h), min(1.0, c + h))


def crps_ensemble(samples: np.ndarray, y: np.ndarray) -> np.ndarray:
    """CRPS of an ensemble ``(n, k)`` against ``y`` (n,): ``E|X - y| - E|X - X'| / 2``
    (Gneiting T, Raftery AE, JASA 2007;102:359-378), NaN members ignored."""
    s = np.asarray(samples, float)
    out = np.full(s.shape[0], np.nan)
    for i in range(s.shape[0]):
        v = s[i][np.isfinite(s[i])]
        if v.size and np.isfinite(y[i]):
            out[i] = np.mean(np.abs(v - y[i])) - 0.5 * np.mean(np.abs(v[:, None] - v[None]))
    return out
