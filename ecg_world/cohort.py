"""Synthetic cohorts for the ECG world model: virtual patients x actions x times -> ECGs.

:func:`synthesize_batch` (:class:`~ecg_world.batch.ECGBatch`) and :func:`synthesize` (the same
as an ``xarray.Dataset``) draw virtual patients whose baselines follow the SCR-002 study's
baseline distribution (stored with the calibration), with a share of long-QT baselines and
random dose multipliers, apply every action at several times after the dose through the
calibrated pharmacology (:func:`ecg_world.pharmacology.apply_action`, the pharmacology passed
as an argument), and render R-aligned multi-lead ECG segments with the McSharry kernel at a
fixed sampling rate and length, plus one pre-dose segment per patient.

**Inside the calibrated range.** The dose multipliers are log-uniform in
:data:`DEFAULT_DOSE_RANGE` (0.25-1x the study dose: the calibration saw the study dose and
the concentrations below it). With the between-subject PK variability on top, a cell may
still reach an effect-site block beyond what the calibration drugs reached in the study
(:func:`calibrated_block_range`, at the 95th percentile of exposure): it is flagged
``extrapolated``, per cell. The map's response is bounded
(:data:`ecg_world.pharmacology.RESPONSE_BOUNDS`), so no dose gives a negative interval, and
cells whose intervals leave the physiological ranges
(:data:`ecg_world.batch.PLAUSIBLE_RANGES`) are flagged ``plausible = False``; an invalid
action gives ``valid = False`` and NaN data. Nothing is dropped: the flags are data.
A plausibility report (:func:`plausibility_report`: per action, the distribution of every
interval and the share of each risk label and flag) is stored in
``attrs["plausibility_report"]`` and written by ``ecg-world synth`` next to the cohort.

**Output** (``xarray.Dataset``; dims ``patient, action, time_after_dose, lead, time``; the
field-by-field description with shapes and units is :class:`~ecg_world.batch.ECGBatch`):

- ``ecg`` (mV): noise-added segments; the first R peak at ``attrs["first_r_peak_s"]`` and
  every RR after it (constant RR within a segment, so beats are R-aligned); ``baseline_ecg``
  (patient, lead, time): the same patient before the dose;
- exact intervals ``RR, PR, QRS, QT, QTcF, QTcB, heart_rate`` from the kernel's reference
  fiducials of the noise-free beat (:func:`leads_jax.physics.ecg_fiducials.reference_intervals`);
- ``baseline_*`` (patient): the same at baseline (no drug, pre-dose time);
- concentrations and block: ``conc_ng_ml`` (total plasma), ``block`` (..., target);
- McSharry parameters ``ti, ai, bi`` (..., wave) of every rendered beat (60-bpm convention);
- risk labels (booleans): ``qtcf_ge_500`` (QTcF >= 500 ms), ``dqtcf_ge_60`` (QTcF minus the
  patient's baseline QTcF >= 60 ms), ``torsade_risk`` (either of the two), ``qtcf_gt_450``,
  ``qtcf_gt_480`` (ICH E14 bins), ``dqtcf_gt_30``, ``pr_gt_200`` (first-degree AV block),
  ``qrs_ge_120`` (ventricular conduction delay), ``hr_lt_50`` (bradycardia), ``hr_gt_100``
  (tachycardia);
- flags ``valid``, ``plausible``, ``extrapolated`` (see above);
- ``split`` (patient): ``train``/``val``/``test``, assigned per patient (no patient in two
  splits), seeded; ``attrs["drug_library"]``: the drug table the ``drug_id`` values index.

**Leads** (:func:`lead_gains`): every lead is the patient's McSharry beat with per-wave
gains on the P, Q, R, S and T amplitudes, read from ``ecg_world/data/lead_gains.json``. The
gains make the typical beat's wave amplitudes equal the median amplitudes that cardiologists'
marks give on the **tuning split** of LUDB's sinus-rhythm records (per lead; written by
``python benchmarks/lead_gains_ludb.py``, :func:`gains_from_amplitudes`). neurokit2's
multi-lead table (:data:`leads_jax.physics.mcsharry.MULTILEAD_GAMMA`, kept in the kernel for
parity with neurokit2) gives lead II an R wave 0.2x and a T wave 3x the single-lead beat's, a
T wave seven times the R, which no delineator reads as lead II.

**Noise** (documented levels, seeded): white Gaussian noise of SD ``noise_mv`` (default
0.02 mV), baseline wander (two sinusoids at 0.1-0.4 Hz, amplitude up to 0.1 mV in total) and
mains interference (50 Hz, 0.01 mV), independently per lead.
"""

from __future__ import annotations

import functools
import json
import pathlib
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import xarray as xr
from jaxtyping import Array, Float

from leads_jax.physics.ecg_fiducials import qt_from_qtc_fridericia
from leads_jax.physics.mcsharry import McSharryECG, ecg_waveform

from .actions import Action
from .batch import INTERVAL_VARIABLES, RISK_LABELS, SPLITS, ECGBatch, RiskLabels
from .batch import read_cohort as read_cohort
from .batch import write_cohort as write_cohort
from .calibrated import Calibration, default_calibration
from .drugs import TARGETS, dose_to_mg
from .pharmacology import PatientParams, apply_action, channel_block, concentrations
from .twin import INTERVAL_RANGES, patient_intervals, twin_from_intervals

DEFAULT_TIMES_H = (0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 24.0)
DEFAULT_LEADS = ("I", "II", "V2")
_LEAD_INDEX = {n: i for i, n in enumerate(
    ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"])}
LEAD_GAINS_JSON = pathlib.Path(__file__).parent / "data" / "lead_gains.json"
#: the McSharry waves, in the kernel's order
WAVES = ("P", "Q", "R", "S", "T")
FIRST_R_PEAK_S = 0.25
WARMUP_S = 5.0
#: long-QT baselines: QTcF raised by U(40, 90) ms
LONG_QT_SHIFT_MS = (40.0, 90.0)


def sample_baselines(cal: Calibration, n: int, *, rng: np.random.Generator,
                     long_qt_share: float | int = 0.15):
    """Baseline intervals (RR, PR, QRS, QT in ms) and long-QT flags for ``n`` patients, from
    the study's baseline distribution (multivariate normal of log RR, PR, QRS, QTcF)."""
    dist = cal.baseline_distribution
    mean = np.asarray(dist["mean"], float)
    cov = np.asarray(dist["cov"], float)
    x = rng.multivariate_normal(mean, cov, size=n)
    rr = np.exp(x[:, 0])
    pr, qrs, qtcf = x[:, 1], x[:, 2], x[:, 3]
    long_qt = rng.random(n) < long_qt_share
    qtcf = qtcf + long_qt * rng.uniform(*LONG_QT_SHIFT_MS, size=n)
    qt = qt_from_qtc_fridericia(qtcf, rr)
    out = {"RR": rr, "PR": pr, "QRS": qrs, "QT": qt}
    for k, (lo, hi) in INTERVAL_RANGES.items():
        out[k] = np.clip(out[k], lo * 1.05, hi * 0.95)
    return out, long_qt


def _beat_at_60bpm(model: McSharryECG, sampling_rate: float) -> np.ndarray:
    """``model``'s kernel output (model units) at 60 bpm, 2 s after a 1-s warm-up."""
    z = np.asarray(ecg_waveform(model, heart_rate=60.0, n_samples=int(3 * sampling_rate),
                                sampling_rate=sampling_rate, hr_scaling="physiological"))
    return z[int(sampling_rate):]


@functools.lru_cache(maxsize=16)
def _gain_mv(sampling_rate: float) -> float:
    """Model-units -> mV gain: the default beat at 60 bpm min-max to 1.6 mV (ECGSYN span)."""
    z = _beat_at_60bpm(McSharryECG.default(), sampling_rate)
    return float(1.6 / (z.max() - z.min()))


def unit_wave_amplitudes(sampling_rate: float = 250.0) -> np.ndarray:
    """Signed peak amplitude (mV) of each wave of the default beat at 60 bpm rendered alone
    (its Gaussian only, gain 1; the cohort's model-units-to-mV gain): the kernel's response
    to a lead gain, to first order (the z equation is linear in the wave amplitudes)."""
    m0 = McSharryECG.default()
    g = _gain_mv(float(sampling_rate))
    out = []
    for i in range(len(WAVES)):
        ai = np.zeros(len(WAVES), np.float32)
        ai[i] = float(m0.ai[i])
        z = _beat_at_60bpm(McSharryECG(m0.ti, jnp.asarray(ai), m0.bi), float(sampling_rate))
        z = (z - np.median(z)) * g
        out.append(float(z[int(np.argmax(np.abs(z)))]))
    return np.asarray(out)


def gains_from_amplitudes(amplitudes: dict[str, Sequence[float]],
                          sampling_rate: float = 250.0) -> dict[str, list[float]]:
    """Per-lead wave gains ``target / unit`` (:func:`unit_wave_amplitudes`) from target
    amplitudes (mV) of the P, Q, R, S and T waves per lead; a NaN target gives gain 0."""
    unit = unit_wave_amplitudes(sampling_rate)
    out = {}
    for lead, amp in amplitudes.items():
        a = np.asarray(amp, float)
        if a.shape != (len(WAVES),):
            raise ValueError(f"lead {lead}: need {len(WAVES)} amplitudes {WAVES}, got {a.shape}")
        out[lead] = [float(x) for x in np.where(np.isfinite(a), a / unit, 0.0).round(6)]
    return out


@functools.lru_cache(maxsize=1)
def _lead_gain_doc() -> dict:
    doc = json.loads(LEAD_GAINS_JSON.read_text())
    missing = [ld for ld in _LEAD_INDEX if ld not in doc.get("gains", {})]
    if missing:
        raise ValueError(f"{LEAD_GAINS_JSON}: no gains for leads {missing}")
    return doc


def lead_gains(leads: Sequence[str]) -> np.ndarray:
    """``(lead, 5)`` gains on the P, Q, R, S, T amplitudes of the named leads (see the module
    docstring)."""
    unknown = [ld for ld in leads if ld not in _LEAD_INDEX]
    if unknown:
        raise ValueError(f"unknown leads {unknown}; valid: {list(_LEAD_INDEX)}")
    g = _lead_gain_doc()["gains"]
    return np.asarray([g[ld] for ld in leads], np.float32)


def _render_fn(n_samples: int, sampling_rate: float | int, gamma: Float[Array, "lead 5"]):
    gamma = jnp.asarray(gamma, jnp.float32)

    # the z equation relaxes with a 1 s time constant from its start value: integrate a
    # warm-up of WARMUP_S seconds first (transient < 1%) and cut it off
    n_warm = int(round(WARMUP_S * sampling_rate))

    def one(ti, ai, bi, hr):
        omega = 2 * jnp.pi * hr / 60.0
        phase0 = jnp.mod(-omega * (FIRST_R_PEAK_S + n_warm / sampling_rate), 2 * jnp.pi)

        def lead(g):
            m = McSharryECG(ti, ai * g, bi)
            z = ecg_waveform(m, heart_rate=hr, n_samples=n_samples + n_warm,
                             sampling_rate=sampling_rate, hr_scaling="physiological",
                             scale="none", phase0=phase0)
            return z[n_warm:]

        return jax.vmap(lead)(gamma)  # (lead, time)

    return one


def _noise(rng: np.random.Generator, shape, sampling_rate, noise_mv):
    """White + baseline wander + mains noise (numpy, seeded), see the module docstring."""
    t = np.arange(shape[-1]) / sampling_rate
    white = noise_mv * rng.standard_normal(shape, dtype=np.float32)
    lead_shape = shape[:-1] + (1, 2)
    f = rng.uniform(0.1, 0.4, lead_shape)
    ph = rng.uniform(0.0, 2 * np.pi, lead_shape)
    amp = rng.uniform(0.0, 0.05, lead_shape)
    wander = np.zeros(shape, np.float32)
    for k in range(2):
        wander += (amp[..., k] * np.sin(2 * np.pi * f[..., k] * t + ph[..., k])).astype(
            np.float32)
    mains = 0.01 * np.sin(2 * np.pi * 50.0 * t + ph[..., 0])
    return white + wander + mains.astype(np.float32)


def _f32(x):
    return jnp.asarray(x, jnp.float32)


def calibrated_block_range(cal: Calibration, *, times_h=None, z: float = 1.645) -> np.ndarray:
    """Per target (:data:`ecg_world.drugs.TARGETS`), the largest effect-site block that the
    calibration's drugs reach in the study it was fitted on: each drug at its study dose over
    0-24 h, at a high exposure (``z`` SDs of the between-subject exposure variability,
    default the 95th percentile). The shared map is supported by data up to these blocks; a
    cohort cell beyond any of them is flagged ``extrapolated``."""
    lib = cal.library
    drugs = [d for d in cal.provenance.get("calibration_drugs", []) if d in lib]
    drugs = drugs or [d for d in lib.names if lib[d].standard_dose > 0]
    t = jnp.asarray(np.linspace(0.0, 24.0, 97) if times_h is None else times_h, jnp.float32)
    eta = jnp.asarray([z * float(cal.variability.omega_exposure), 0.0, 0.0], jnp.float32)
    ids = jnp.asarray([lib.index(d) for d in drugs], jnp.int32)
    doses = jnp.asarray([dose_to_mg(lib[d].standard_dose, lib[d].dose_unit) for d in drugs],
                        jnp.float32)
    return np.asarray(_block_grid(cal.pharmacology, ids, doses, t, eta)).max(axis=(0, 1))


@jax.jit
def _block_grid(pharm, ids, doses, t, eta):
    def block(d, dose, tt):
        a = Action(d, dose, tt)
        _, ce, _ = concentrations(pharm.table, a, eta, pharm.emap.ktol_per_h)
        return channel_block(pharm.table, d, ce)

    return jax.vmap(jax.vmap(block, (None, None, 0)), (0, 0, None))(ids, doses, t)


@jax.jit
def _stage_params(p: PatientParams, d, dose, t, pharm):
    """(patient after the action, plasma concentration, effect-site block) per cell."""
    def one(p1, d1, dose1, t1):
        a = Action(d1, dose1, t1, pharm.library)
        q = apply_action(p1, a, None, pharm)
        c, ce, _ = concentrations(pharm.table, a, p1.eta_pk, pharm.emap.ktol_per_h)
        return q, c, channel_block(pharm.table, d1, ce)

    return jax.vmap(one)(p, d, dose, t)


_stage_iv = jax.jit(jax.vmap(patient_intervals))


@functools.partial(jax.jit, static_argnames=("n_samples", "sampling_rate"))
def _stage_wave(ti, ai, bi, hr, gamma, *, n_samples, sampling_rate):
    return jax.vmap(_render_fn(n_samples, sampling_rate, gamma))(ti, ai, bi, hr)


#: default dose multipliers (log-uniform, times each drug's study dose): the study dose and
#: below, where the calibration has data (with the PK variability on top, a few cells still
#: reach past the calibrated block range and are flagged ``extrapolated``)
DEFAULT_DOSE_RANGE = (0.25, 1.0)


def synthesize_batch(
    n_patients: int,
    *,
    seed: int = 0,
    times_h: Sequence[float] = DEFAULT_TIMES_H,
    drugs: Sequence[str] | None = None,
    sampling_rate: float | int = 250.0,
    duration_s: float | int = 10.0,
    leads: Sequence[str] = DEFAULT_LEADS,
    long_qt_share: float | int = 0.15,
    dose_range: tuple[float, float] = DEFAULT_DOSE_RANGE,
    noise_mv: float | int = 0.02,
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    calibration: Calibration | None = None,
    batch_size: int = 8,
) -> ECGBatch:
    """Synthesize a cohort as an :class:`~ecg_world.batch.ECGBatch` (see the module
    docstring; :func:`synthesize` returns the same as an ``xarray.Dataset``)."""
    if int(n_patients) < 1:
        raise ValueError(f"n_patients must be >= 1 (got {n_patients})")
    times_h = np.asarray(times_h, float)
    if times_h.size == 0 or np.any(~np.isfinite(times_h)) or np.any(times_h < 0):
        raise ValueError(f"times_h must be finite and >= 0 h (got {times_h.tolist()})")
    if not (sampling_rate > 0 and duration_s > 0):
        raise ValueError("sampling_rate and duration_s must be > 0")
    lo, hi = dose_range
    if not (0 <= lo <= hi and np.isfinite(hi)):
        raise ValueError(f"dose_range must satisfy 0 <= low <= high (got {dose_range})")
    if not 0.0 <= long_qt_share <= 1.0:
        raise ValueError(f"long_qt_share must lie in [0, 1] (got {long_qt_share})")
    unknown_leads = [ld for ld in leads if ld not in _LEAD_INDEX]
    if unknown_leads:
        raise ValueError(f"unknown leads {unknown_leads}; valid: {list(_LEAD_INDEX)}")
    if len(split_fractions) != 3 or min(split_fractions) < 0 or not np.isclose(
            sum(split_fractions), 1.0):
        raise ValueError(f"split_fractions must be 3 shares >= 0 summing to 1 "
                         f"(got {split_fractions})")

    cal = calibration or default_calibration()
    lib = cal.library
    unknown = [d for d in (drugs or ()) if d not in lib]
    if unknown:
        raise ValueError(f"unknown drugs {unknown}; valid drugs: {list(lib.names)}")
    drugs = [lib.canonical(d) for d in (drugs or lib.names)]
    n = int(n_patients)
    rng = np.random.default_rng(seed)
    base, long_qt = sample_baselines(cal, n, rng=rng, long_qt_share=long_qt_share)
    params, _ = twin_from_intervals(base["RR"], base["PR"], base["QRS"], base["QT"])
    v = cal.variability
    om = np.array([float(v.omega_exposure), float(v.omega_ke), float(v.omega_ka)])
    eta_pk = (rng.standard_normal((n, 3)) * om).astype(np.float32)
    eta_pd = (rng.standard_normal(n) * float(v.omega_pd)).astype(np.float32)
    params = PatientParams(params.ecg, params.heart_rate, jnp.asarray(eta_pk),
                           jnp.asarray(eta_pd))
    drug_ids = np.array([lib.index(d) for d in drugs], np.int32)
    std_mg = np.array([dose_to_mg(lib[d].standard_dose, lib[d].dose_unit) for d in drugs])
    mult = np.exp(rng.uniform(np.log(max(lo, 1e-6)), np.log(max(hi, 1e-6)),
                              size=(n, len(drugs))))
    if lo == 0:
        mult = rng.uniform(lo, hi, size=(n, len(drugs)))
    if "placebo" in drugs:
        mult[:, drugs.index("placebo")] = 0.0
    dose_mg = (std_mg[None, :] * mult).astype(np.float32)
    # every dose must be a plausible dose of its drug (dose_range of its entry)
    for j, d in enumerate(drugs):
        lib[d].check_dose(float(dose_mg[:, j].max()), "mg")
        if dose_mg[:, j].min() > 0:
            lib[d].check_dose(float(dose_mg[:, j].min()), "mg")

    pharm = cal.pharmacology
    gamma = lead_gains(leads)
    n_samples = int(round(duration_s * sampling_rate))
    gain = _gain_mv(float(sampling_rate))
    gamma = jnp.asarray(gamma, jnp.float32)

    def stage_wave(ti, ai, bi, hr):
        return _stage_wave(ti, ai, bi, hr, gamma, n_samples=n_samples,
                           sampling_rate=float(sampling_rate))

    # one flat batch axis over (patient, action, time) cells, processed in fixed-size chunks
    # (padded) so that each of the three compiled stages is compiled once
    na, nt = len(drugs), len(times_h)
    pi, ai_, ti_ = np.meshgrid(np.arange(n), np.arange(na), np.arange(nt), indexing="ij")
    pi, ai_, ti_ = pi.ravel(), ai_.ravel(), ti_.ravel()
    cell_drug = drug_ids[ai_]
    cell_dose = dose_mg[pi, ai_]
    cell_t = times_h[ti_].astype(np.float32)

    chunk = int(batch_size) * na * nt
    n_cells = pi.size
    outs = []
    for s in range(0, n_cells, chunk):
        idx = np.arange(s, s + chunk)
        idx = np.where(idx < n_cells, idx, n_cells - 1)  # pad with the last cell
        p = jax.tree_util.tree_map(lambda x, idx=idx: x[pi[idx]], params)
        q, c, blk = _stage_params(p, jnp.asarray(cell_drug[idx]), jnp.asarray(cell_dose[idx]),
                                 jnp.asarray(cell_t[idx]), pharm)
        iv = _stage_iv(q)
        wave = stage_wave(q.ecg.ti, q.ecg.ai, q.ecg.bi, q.heart_rate) * gain
        keep = min(chunk, n_cells - s)
        outs.append(jax.tree_util.tree_map(
            lambda x, keep=keep: np.asarray(x)[:keep],
            (iv, wave, c, blk, q.ecg.ti, q.ecg.ai, q.ecg.bi, q.valid)))
    shape = (n, na, nt)
    iv, wave, conc, blk, ti, ai, bi, valid = jax.tree_util.tree_map(
        lambda *xs: np.concatenate(xs).reshape(shape + xs[0].shape[1:]), *outs)
    base_iv = jax.tree_util.tree_map(np.asarray, _stage_iv(params))
    # baseline segments (pre-dose, no drug): the same compiled renderer, padded to a chunk
    base_wave = []
    for s in range(0, n, chunk):
        idx = np.minimum(np.arange(s, s + chunk), n - 1)
        w = stage_wave(params.ecg.ti[idx], params.ecg.ai[idx], params.ecg.bi[idx],
                       params.heart_rate[idx]) * gain
        base_wave.append(np.asarray(w)[:min(chunk, n - s)])
    base_wave = np.concatenate(base_wave)
    wave = wave + _noise(rng, wave.shape, sampling_rate, noise_mv)
    split_perm = rng.permutation(n)
    base_wave = base_wave + _noise(rng, base_wave.shape, sampling_rate, noise_mv)

    dqtcf = iv.qtcf - base_iv.qtcf[:, None, None]
    n_tr = int(round(split_fractions[0] * n))
    n_va = int(round(split_fractions[1] * n))
    split = np.empty(n, np.int32)
    split[split_perm[:n_tr]] = SPLITS.index("train")
    split[split_perm[n_tr:n_tr + n_va]] = SPLITS.index("val")
    split[split_perm[n_tr + n_va:]] = SPLITS.index("test")
    block_max = calibrated_block_range(cal)
    extrapolated = np.any(blk > block_max * 1.05 + 1e-4, axis=-1)
    f32 = _f32
    ivj = jax.tree_util.tree_map(f32, iv)
    attrs = {
        "title": "ecg_world synthetic cohort (McSharry kernel, calibrated pharmacology)",
        "duration_s": float(duration_s),
        "first_r_peak_s": FIRST_R_PEAK_S,
        "seed": int(seed),
        "long_qt_share": float(long_qt_share),
        "dose_range": list(map(float, dose_range)),
        "noise": f"white {noise_mv} mV SD + baseline wander (2 sinusoids 0.1-0.4 Hz, "
                 "<= 0.05 mV each) + 50 Hz mains 0.01 mV",
        "intervals": "exact, from the kernel's reference fiducials of the noise-free beat "
                     "(leads_jax.physics.ecg_fiducials.reference_intervals, "
                     "hr_scaling='physiological')",
        "hr_scaling": "physiological",
        "calibration": json.dumps(cal.provenance),
        "calibrated_block_max": json.dumps(dict(zip(TARGETS, map(float, block_max),
                                                    strict=True))),
        "risk_labels": "qtcf_ge_500, dqtcf_ge_60, torsade_risk = either; qtcf_gt_450, "
                       "qtcf_gt_480, dqtcf_gt_30 (ICH E14 bins); pr_gt_200; qrs_ge_120; "
                       "hr_lt_50; hr_gt_100",
        "flags": "valid (action valid; else NaN data), plausible (every interval inside the "
                 "physiological ranges of ecg_world.batch.PLAUSIBLE_RANGES), extrapolated "
                 "(effect-site block beyond the calibrated block range, "
                 "attrs calibrated_block_max, by more than 5%)",
    }
    return ECGBatch(
        signals=jnp.asarray(wave, jnp.float32), baseline_signals=_f32(base_wave),
        intervals=ivj, baseline_intervals=jax.tree_util.tree_map(f32, base_iv),
        dqtcf=f32(dqtcf), labels=RiskLabels.from_intervals(ivj, f32(dqtcf)),
        drug=jnp.asarray(np.broadcast_to(drug_ids[None, :, None], shape), jnp.int32),
        dose_mg=jnp.asarray(np.broadcast_to(dose_mg[:, :, None], shape), jnp.float32),
        time_h=jnp.asarray(np.broadcast_to(times_h[None, None, :], shape), jnp.float32),
        dose_multiplier=f32(mult), conc_ng_ml=f32(conc), block=f32(blk), ti=f32(ti),
        ai=f32(ai), bi=f32(bi), baseline_ti=f32(params.ecg.ti),
        baseline_ai=f32(params.ecg.ai), baseline_bi=f32(params.ecg.bi),
        eta_pk=f32(eta_pk), eta_pd=f32(eta_pd), long_qt=jnp.asarray(long_qt, bool),
        valid=jnp.asarray(valid, bool), plausible=ivj.plausible(),
        extrapolated=jnp.asarray(extrapolated, bool), split=jnp.asarray(split),
        patient_id=jnp.arange(n, dtype=jnp.int32), time_after_dose_h=f32(times_h),
        sampling_rate_hz=float(sampling_rate), lead_names=tuple(leads),
        action_names=tuple(drugs), library=lib,
        attrs_json=json.dumps(attrs, sort_keys=True))


def synthesize(n_patients: int, **kwargs) -> xr.Dataset:
    """Synthesize a cohort (see the module docstring for the contents; keyword arguments as
    :func:`synthesize_batch`) as an ``xarray.Dataset``, with its plausibility report in
    ``attrs["plausibility_report"]`` (JSON, :func:`plausibility_report`)."""
    ds = synthesize_batch(n_patients, **kwargs).to_dataset()
    ds.attrs["plausibility_report"] = plausibility_report(ds).to_json(orient="records")
    return ds


_REPORT_STATS = ("mean", "sd", "min", "p05", "median", "p95", "max")


def plausibility_report(ds: xr.Dataset) -> pd.DataFrame:
    """Per action: the distribution of every interval over all its cells (patients x times;
    NaN cells excluded, counted in ``n_nan``) and the share of cells with each risk label and
    each data flag. Columns ``action, variable, kind (interval|label|flag), n, n_nan, mean,
    sd, min, p05, median, p95, max, share``. ``ecg-world synth`` writes it next to every
    cohort (``<out>.plausibility.md``) and into ``attrs["plausibility_report"]``."""
    rows = []
    names = [n for n, _ in INTERVAL_VARIABLES.values()] + ["dQTcF"]
    for a in ds.action.values:
        cell = ds.sel(action=a)
        for v in names:
            x = np.asarray(cell[v].values, float).ravel()
            ok = x[np.isfinite(x)]
            st = (dict(zip(_REPORT_STATS, (ok.mean(), ok.std(ddof=1) if ok.size > 1 else 0.0,
                                           ok.min(), *np.percentile(ok, [5, 50, 95]),
                                           ok.max()), strict=True))
                  if ok.size else dict.fromkeys(_REPORT_STATS, np.nan))
            rows.append({"action": str(a), "variable": v, "kind": "interval", "n": int(x.size),
                         "n_nan": int(x.size - ok.size), **st, "share": np.nan})
        for kind, keys in (("label", list(RISK_LABELS)),
                           ("flag", ["valid", "plausible", "extrapolated"])):
            for k in keys:
                x = np.asarray(cell[k].values, bool).ravel()
                rows.append({"action": str(a), "variable": k, "kind": kind, "n": int(x.size),
                             "n_nan": 0, **dict.fromkeys(_REPORT_STATS, np.nan),
                             "share": float(x.mean())})
    return pd.DataFrame(rows)


def flagged_share(ds: xr.Dataset) -> float:
    """Share of cells flagged as data: invalid, implausible or extrapolated."""
    flagged = (~ds.valid) | (~ds.plausible) | ds.extrapolated
    return float(flagged.mean())


def plausibility_markdown(report: pd.DataFrame) -> str:
    """The plausibility report as markdown tables (intervals, then labels and flags)."""
    iv = report[report.kind == "interval"]
    lines = ["# Cohort plausibility report", "",
             "Per action, the distribution of every interval (ms; heart_rate in bpm) over "
             "its cells, and the share of cells with each risk label and data flag.", "",
             "| action | variable | n | n_nan | " + " | ".join(_REPORT_STATS) + " |",
             "|" + "---|" * (4 + len(_REPORT_STATS))]
    for _, r in iv.iterrows():
        lines.append(f"| {r.action} | {r.variable} | {r.n} | {r.n_nan} | "
                     + " | ".join(f"{r[k]:.1f}" for k in _REPORT_STATS) + " |")
    sh = report[report.kind != "interval"].pivot(index="variable", columns="action",
                                                 values="share")
    lines += ["", "| share of cells | " + " | ".join(sh.columns) + " |",
              "|" + "---|" * (1 + len(sh.columns))]
    for k, r in sh.iterrows():
        lines.append(f"| {k} | " + " | ".join(f"{x:.3f}" for x in r.values) + " |")
    return "\n".join(lines) + "\n"
