"""Evaluation of world-model strips: intervals, waveform errors, rollout calibration and
documented plausibility ("hallucination") rules.

**Intervals** of a strip are read with :func:`ecg_world.intervals.measure_intervals` on every
lead's median beat and summarised by the median over leads. The cohort's leads carry the
LUDB-derived wave gains (:func:`ecg_world.cohort.lead_gains`), on which the delineator reads
lead II; with neurokit2's multi-lead table the true strips themselves failed these rules.

**Plausibility rules** (:func:`plausibility`), each a boolean per strip:

1. ``beats``: the number of detected QRS complexes is consistent with the heart rate
   (within +-1 of ``(duration - first R) / RR + 1``) and there are at least 2;
2. ``order``: every *complete* beat has its P onset (where a P wave is found), QRS onset, QRS
   offset and T end in that order, with QRS onset and offset found. A beat is complete when its
   R peak lies at least 0.1 s after the strip's start and at least 0.6 median RR before its
   end (room for the QRS, and for a T wave up to a QT of 0.6 RR); a beat cut by the strip's
   edge cannot be delineated and is not judged (it failed this rule on 7% of the cohort's true
   strips, all at the last beat, before this condition);
3. ``ranges``: median-beat RR, PR, QRS, QT and QTcF inside
   :data:`ecg_world.batch.PLAUSIBLE_RANGES`;
4. ``amplitude``: every lead's peak-to-peak amplitude inside [0.5, 1.5] x a reference
   amplitude of that lead: the training strips' median (synthetic inputs), or the input strip's
   own (a real record, whose amplitude the training cohort does not set).

A strip that fails any rule is a hallucination.

**Beat shape** (:func:`median_beat_scores`): Pearson r between the R-aligned median beat of a
strip and of its truth on one lead, over **one cardiac cycle**, ``[R - RR/3, R + 2 RR/3)`` of
the truth's median RR (the same window for both, so a wrong rate shows as misplaced waves), and
over the delineator's whole window ``[R - 0.5 s, R + 1.2 s)``. The whole window spans about two
cycles at 70 bpm, so its r scores the neighbouring beats' timing as well as the beat's shape:
on the world model's validation patients a second realization of the same truth, redrawing
only the beat-to-beat variation of :func:`ecg_world.world.data.perturb_truth` (1.5% RR
jitter, 5% beat amplitude, respiration), reaches a median r of only 0.88 on it, against 0.996
over one cycle (``benchmarks/ecg_world_model.py``'s reference rows).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from ..batch import PLAUSIBLE_RANGES
from ..intervals import IntervalConfig, measure_intervals

__all__ = ["strip_intervals", "plausibility", "wilson_interval", "crps_ensemble",
           "pit_central_coverage", "median_beat_scores"]


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
    the reference peak-to-peak amplitude per lead: ``(lead,)`` for all strips (the training
    strips' median), or one row per strip, ``(..., lead)`` matching the strips' leading dims
    (e.g. each rollout's input strip)."""
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
        rp = cat(lambda r: r.r_peak)
        complete = mask & (rp >= 0.1) & (rp + 0.6 * rr[:, None, None] / 1000.0 <= dur)
        order = np.all(okb | ~complete, axis=(-1, -2))
        ranges = np.ones(len(mask), bool)
        for k, name in (("rr", "rr"), ("pr", "pr"), ("qrs", "qrs"), ("qt", "qt"),
                        ("qtc_fridericia", "qtcf")):
            v = np.nanmedian(cat(lambda r, k=k: getattr(r.median, k)), axis=-1)
            lo, hi = PLAUSIBLE_RANGES[name]
            ranges &= (v >= lo) & (v <= hi)
    flat = x.reshape((-1,) + x.shape[-2:])
    p2p = flat.max(-1) - flat.min(-1)
    ref = np.asarray(amp_range, float)
    if ref.shape == (x.shape[-2],):
        ref = np.broadcast_to(ref, p2p.shape)
    else:
        try:
            ref = np.broadcast_to(ref, x.shape[:-1]).reshape(p2p.shape)
        except ValueError:
            raise ValueError(f"amp_range must be (lead,) = ({x.shape[-2]},) or broadcast to the "
                             f"strips' {x.shape[:-1]}; got {ref.shape}") from None
    amplitude = np.all((p2p >= 0.5 * ref) & (p2p <= 1.5 * ref), axis=-1)
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


def pit_central_coverage(samples: np.ndarray, y: np.ndarray, level: float = 0.9, *,
                         seed: int = 0) -> np.ndarray:
    """Whether ``y`` (n,) falls in the central `level` of an ensemble ``(n, k)`` by the
    randomised probability integral transform: ``PIT = (#{x < y} + U (#{x = y} + 1)) / (m +
    1)`` with ``m`` the finite members and ``U ~ Uniform(0, 1)`` (seeded), covered when ``PIT``
    lies in ``[(1 - level) / 2, (1 + level) / 2]``. For a calibrated ensemble its mean is
    `level` at any ``k`` (the rank of the truth among ``k`` exchangeable draws is uniform on
    ``0..k``; Hamill TM, Mon Wea Rev 2001;129:550-560), whereas the empirical 5-95% band of
    ``k`` members covers less (about 72% at ``k = 8``, 81% at 16). Cells without finite members
    or truth are not covered."""
    s = np.asarray(samples, float)
    y = np.asarray(y, float)
    if not 0.0 < float(level) < 1.0:
        raise ValueError(f"level must be in (0, 1) (got {level})")
    if s.ndim != 2 or y.shape != (s.shape[0],):
        raise ValueError(f"samples must be (n, k) and y (n,); got {s.shape} and {y.shape}")
    u = np.random.default_rng(seed).uniform(size=s.shape[0])
    fin = np.isfinite(s)
    m = fin.sum(1)
    with np.errstate(invalid="ignore"):
        below = np.sum(fin & (s < y[:, None]), axis=1)
        tie = np.sum(fin & (s == y[:, None]), axis=1)
    pit = (below + u * (tie + 1)) / (m + 1)
    lo, hi = (1.0 - level) / 2.0, (1.0 + level) / 2.0
    return (m > 0) & np.isfinite(y) & (pit >= lo) & (pit <= hi)


def median_beat_scores(pred, truth, fs: float, lead: int = 0) -> dict[str, np.ndarray]:
    """Per strip, how well the R-aligned median beat of `pred` matches the truth's.

    `pred` and `truth` are strips ``(n, lead, time)``; the median beat is
    :func:`ecg_world.intervals.measure_intervals`' (sample-wise median of the beats whose
    ``[R - 0.5 s, R + 1.2 s)`` window lies inside the strip) on lead index `lead`. Returns
    arrays ``(n,)``: ``r_cycle``, Pearson r over one cycle ``[R - RR/3, R + 2 RR/3)`` of the
    truth's median RR (see the module docstring); ``r_window``, over the whole window;
    ``hr_error_bpm``, ``60000/RR_pred - 60000/RR_truth``. A strip without a median beat or RR
    gets NaN (callers decide how an unreadable strip counts).
    """
    p = np.asarray(pred, np.float32)
    t = np.asarray(truth, np.float32)
    if p.ndim != 3 or p.shape != t.shape:
        raise ValueError(f"pred and truth must both be (n, lead, time); got {p.shape} and "
                         f"{t.shape}")
    if not 0 <= int(lead) < p.shape[1]:
        raise ValueError(f"lead index {lead} outside the strips' {p.shape[1]} leads")
    n = len(p)
    res, _ = _measure(np.concatenate([p, t])[:, lead:lead + 1], fs)  # one pass for both
    beat = np.concatenate([np.asarray(r.median_beat)[:, 0] for r in res])
    rr = np.concatenate([np.asarray(r.median.rr)[:, 0] for r in res])
    a, b, rr_p, rr_t = beat[:n], beat[n:], rr[:n], rr[n:]
    has = np.isfinite(rr_p) & np.isfinite(rr_t)  # no RR: no median beat either

    def corr(u, v):
        u = u - u.mean(-1, keepdims=True)
        v = v - v.mean(-1, keepdims=True)
        den = np.sqrt((u * u).sum(-1) * (v * v).sum(-1))
        return np.where(den > 0, (u * v).sum(-1) / np.where(den > 0, den, 1.0), np.nan)

    r_window = np.where(has, corr(a, b), np.nan)
    cfg = IntervalConfig.for_duration(fs, p.shape[-1] / fs)  # _measure's: the R position
    centre = cfg.samples(cfg.before)
    r_cycle = np.full(n, np.nan)
    for i in np.flatnonzero(has):
        cyc = rr_t[i] * fs / 1000.0
        lo = max(0, centre - int(round(cyc / 3.0)))
        hi = min(a.shape[-1], centre + int(round(2.0 * cyc / 3.0)))
        r_cycle[i] = corr(a[i, lo:hi], b[i, lo:hi])
    with np.errstate(all="ignore"):
        hr = np.where(has, 60000.0 / rr_p - 60000.0 / rr_t, np.nan)
    return {"r_cycle": r_cycle, "r_window": r_window, "hr_error_bpm": hr}
