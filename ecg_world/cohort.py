"""Synthetic cohorts for the ECG world model: virtual patients x actions x times -> ECGs.

:func:`synthesize` draws virtual patients whose baselines follow the SCR-002 study's baseline
distribution (stored with the calibration), with a share of long-QT baselines and random dose
multipliers (0.25x-2x the study dose, log-uniform) so that risk events are not rare, applies
every action at several times after the dose through the calibrated pharmacology
(:func:`ecg_world.pharmacology.apply_action`), and renders R-aligned multi-lead ECG segments
with the McSharry kernel at a fixed sampling rate and length.

**Output** (``xarray.Dataset``; dims ``patient, action, time_after_dose, lead, time``):

- ``ecg`` (mV): noise-added segments; the first R peak at ``attrs["first_r_peak_s"]`` and
  every RR after it (constant RR within a segment, so beats are R-aligned);
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
- ``split`` (patient): ``train``/``val``/``test``, assigned per patient (no patient in two
  splits), seeded.

**Noise** (documented levels, seeded): white Gaussian noise of SD ``noise_mv`` (default
0.02 mV), baseline wander (two sinusoids at 0.1-0.4 Hz, amplitude up to 0.1 mV in total) and
mains interference (50 Hz, 0.01 mV), independently per lead.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from .actions import Action
from .calibration import Calibration, default_calibration
from .drugs import TARGETS, dose_to_mg
from .pharmacology import (
    PatientParams,
    Pharmacology,
    apply_action,
    channel_block,
    concentrations,
)
from .twin import INTERVAL_RANGES, kernel_intervals, twin_from_intervals

DEFAULT_TIMES_H = (0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 24.0)
DEFAULT_LEADS = ("I", "II", "V2")
_LEAD_INDEX = {n: i for i, n in enumerate(
    ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"])}
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
    qt = qtcf * np.cbrt(rr / 1000.0)
    out = {"RR": rr, "PR": pr, "QRS": qrs, "QT": qt}
    for k, (lo, hi) in INTERVAL_RANGES.items():
        out[k] = np.clip(out[k], lo * 1.05, hi * 0.95)
    return out, long_qt


def _gain_mv(base_model, sampling_rate: float | int) -> float:
    """Model-units -> mV gain: the default beat at 60 bpm min-max to 1.6 mV (ECGSYN span)."""
    from leads_jax.physics.mcsharry import ecg_waveform

    z = np.asarray(ecg_waveform(base_model, heart_rate=60.0, n_samples=int(3 * sampling_rate),
                                sampling_rate=sampling_rate, hr_scaling="physiological"))
    z = z[int(sampling_rate):]
    return float(1.6 / (z.max() - z.min()))


def _render_fn(n_samples: int, sampling_rate: float | int, gamma: np.ndarray):
    from leads_jax.physics.mcsharry import McSharryECG, ecg_waveform

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


def synthesize(
    n_patients: int,
    *,
    seed: int = 0,
    times_h: Sequence[float] = DEFAULT_TIMES_H,
    drugs: Sequence[str] | None = None,
    sampling_rate: float | int = 250.0,
    duration_s: float | int = 10.0,
    leads: Sequence[str] = DEFAULT_LEADS,
    long_qt_share: float | int = 0.15,
    dose_range: tuple[float, float] = (0.25, 2.0),
    noise_mv: float | int = 0.02,
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    calibration: Calibration | None = None,
    batch_size: int = 8,
) -> xr.Dataset:
    """Synthesize a cohort (see the module docstring for the contents)."""
    if int(n_patients) < 1:
        raise ValueError(f"n_patients must be >= 1 (got {n_patients})")
    times_h = np.asarray(times_h, float)
    if times_h.size == 0 or np.any(~np.isfinite(times_h)) or np.any(times_h < 0):
        raise ValueError(f"times_h must be finite and >= 0 h (got {times_h.tolist()})")
    if not (sampling_rate > 0 and duration_s > 0):
        raise ValueError("sampling_rate and duration_s must be > 0")
    lo, hi = dose_range
    if not (0 <= lo <= hi):
        raise ValueError(f"dose_range must satisfy 0 <= low <= high (got {dose_range})")
    if not 0.0 <= long_qt_share <= 1.0:
        raise ValueError(f"long_qt_share must lie in [0, 1] (got {long_qt_share})")
    unknown_leads = [ld for ld in leads if ld not in _LEAD_INDEX]
    if unknown_leads:
        raise ValueError(f"unknown leads {unknown_leads}; valid: {list(_LEAD_INDEX)}")
    from leads_jax.physics.mcsharry import MULTILEAD_GAMMA, McSharryECG

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
    dose_mg = (std_mg[None, :] * mult).astype(np.float32)
    if "placebo" in drugs:
        mult[:, drugs.index("placebo")] = 0.0

    pharm = Pharmacology(lib.table(), cal.emap, cal.diurnal)
    gamma = MULTILEAD_GAMMA[[_LEAD_INDEX[ld] for ld in leads]]
    n_samples = int(round(duration_s * sampling_rate))
    gain = _gain_mv(McSharryECG.default(), sampling_rate)
    render = _render_fn(n_samples, sampling_rate, gamma)

    # one flat batch axis over (patient, action, time) cells, processed in fixed-size chunks
    # (padded) so that each of the three compiled stages is compiled once
    na, nt = len(drugs), len(times_h)
    pi, ai_, ti_ = np.meshgrid(np.arange(n), np.arange(na), np.arange(nt), indexing="ij")
    pi, ai_, ti_ = pi.ravel(), ai_.ravel(), ti_.ravel()
    cell_drug = drug_ids[ai_]
    cell_dose = dose_mg[pi, ai_]
    cell_t = times_h[ti_].astype(np.float32)

    @jax.jit
    def stage_params(p: PatientParams, d, dose, t):
        def one(p1, d1, dose1, t1):
            a = Action(d1, dose1, t1)
            q = apply_action(p1, a, None, pharm)
            c, ce, _ = concentrations(pharm.table, a, p1.eta_pk, pharm.emap.ktol_per_h)
            return q, c, channel_block(pharm.table, d1, ce)

        return jax.vmap(one)(p, d, dose, t)

    stage_iv = jax.jit(jax.vmap(kernel_intervals))
    stage_wave = jax.jit(jax.vmap(render))
    chunk = int(batch_size) * na * nt
    n_cells = pi.size
    outs = []
    for s in range(0, n_cells, chunk):
        idx = np.arange(s, s + chunk)
        idx = np.where(idx < n_cells, idx, n_cells - 1)  # pad with the last cell
        p = jax.tree_util.tree_map(lambda x, idx=idx: x[pi[idx]], params)
        q, c, blk = stage_params(p, jnp.asarray(cell_drug[idx]), jnp.asarray(cell_dose[idx]),
                                 jnp.asarray(cell_t[idx]))
        iv = stage_iv(q.ecg, q.heart_rate)
        wave = stage_wave(q.ecg.ti, q.ecg.ai, q.ecg.bi, q.heart_rate) * gain
        keep = min(chunk, n_cells - s)
        outs.append([np.asarray(x)[:keep] for x in (iv, wave, c, blk, q.ecg.ti, q.ecg.ai,
                                                    q.ecg.bi, q.heart_rate)])
    shape = (n, na, nt)
    iv, wave, conc, blk, ti, ai, bi, hr = (
        np.concatenate([o[i] for o in outs]).reshape(shape + outs[0][i].shape[1:])
        for i in range(8))
    base_iv = np.asarray(stage_iv(params.ecg, params.heart_rate))
    wave = wave + _noise(rng, wave.shape, sampling_rate, noise_mv)

    rr, pr, qrs, qt = (iv[..., i] for i in range(4))
    qtcf = qt / np.cbrt(rr / 1000.0)
    qtcb = qt / np.sqrt(rr / 1000.0)
    b_rr, b_pr, b_qrs, b_qt = (base_iv[:, i] for i in range(4))
    b_qtcf = b_qt / np.cbrt(b_rr / 1000.0)
    dqtcf = qtcf - b_qtcf[:, None, None]
    hr_bpm = 60000.0 / rr
    perm = rng.permutation(n)
    n_tr = int(round(split_fractions[0] * n))
    n_va = int(round(split_fractions[1] * n))
    split = np.empty(n, dtype=object)
    split[perm[:n_tr]] = "train"
    split[perm[n_tr:n_tr + n_va]] = "val"
    split[perm[n_tr + n_va:]] = "test"
    cell = ("patient", "action", "time_after_dose")
    ds = xr.Dataset(
        {
            "ecg": (cell + ("lead", "time"), wave.astype(np.float32), {"units": "mV"}),
            "RR": (cell, rr, {"units": "ms"}),
            "PR": (cell, pr, {"units": "ms"}),
            "QRS": (cell, qrs, {"units": "ms"}),
            "QT": (cell, qt, {"units": "ms"}),
            "QTcF": (cell, qtcf, {"units": "ms"}),
            "QTcB": (cell, qtcb, {"units": "ms"}),
            "heart_rate": (cell, hr_bpm, {"units": "bpm"}),
            "dQTcF": (cell, dqtcf, {"units": "ms", "long_name": "QTcF minus baseline QTcF"}),
            "conc_ng_ml": (cell, conc, {"units": "ng/mL", "long_name": "total plasma"}),
            "block": (cell + ("target",), blk, {"units": "1"}),
            "ti": (cell + ("wave",), ti, {"units": "rad"}),
            "ai": (cell + ("wave",), ai),
            "bi": (cell + ("wave",), bi, {"units": "rad"}),
            "baseline_RR": ("patient", b_rr, {"units": "ms"}),
            "baseline_PR": ("patient", b_pr, {"units": "ms"}),
            "baseline_QRS": ("patient", b_qrs, {"units": "ms"}),
            "baseline_QT": ("patient", b_qt, {"units": "ms"}),
            "baseline_QTcF": ("patient", b_qtcf, {"units": "ms"}),
            "long_qt": ("patient", long_qt),
            "split": ("patient", split.astype(str)),
            "dose_mg": (("patient", "action"), dose_mg, {"units": "mg"}),
            "dose_multiplier": (("patient", "action"), mult.astype(np.float32)),
            "eta_pk": (("patient", "eta"), np.asarray(eta_pk)),
            "eta_pd": ("patient", np.asarray(eta_pd)),
            "qtcf_ge_500": (cell, qtcf >= 500.0),
            "dqtcf_ge_60": (cell, dqtcf >= 60.0),
            "torsade_risk": (cell, (qtcf >= 500.0) | (dqtcf >= 60.0)),
            "qtcf_gt_450": (cell, qtcf > 450.0),
            "qtcf_gt_480": (cell, qtcf > 480.0),
            "dqtcf_gt_30": (cell, dqtcf > 30.0),
            "pr_gt_200": (cell, pr > 200.0),
            "qrs_ge_120": (cell, qrs >= 120.0),
            "hr_lt_50": (cell, hr_bpm < 50.0),
            "hr_gt_100": (cell, hr_bpm > 100.0),
        },
        coords={
            "patient": np.arange(n),
            "action": drugs,
            "time_after_dose": ("time_after_dose", times_h, {"units": "h"}),
            "lead": list(leads),
            "time": ("time", np.arange(n_samples) / sampling_rate, {"units": "s"}),
            "target": list(TARGETS),
            "wave": ["P", "Q", "R", "S", "T"],
            "eta": ["exposure", "ke", "ka"],
        },
        attrs={
            "title": "ecg_world synthetic cohort (McSharry kernel, calibrated pharmacology)",
            "sampling_rate_hz": float(sampling_rate),
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
            "risk_labels": "qtcf_ge_500, dqtcf_ge_60, torsade_risk = either; qtcf_gt_450, "
                           "qtcf_gt_480, dqtcf_gt_30 (ICH E14 bins); pr_gt_200; qrs_ge_120; "
                           "hr_lt_50; hr_gt_100",
        },
    )
    return ds


def write_cohort(ds: xr.Dataset, path: str | pathlib.Path) -> pathlib.Path:
    """Write a cohort to netCDF (h5netcdf); booleans are stored as int8 with a flag attr."""
    path = pathlib.Path(path)
    out = ds.copy()
    for k, v in ds.data_vars.items():
        if v.dtype == bool:
            out[k] = v.astype(np.int8)
            out[k].attrs["boolean"] = 1
    path.parent.mkdir(parents=True, exist_ok=True)
    out.to_netcdf(path, engine="h5netcdf")
    return path


def read_cohort(path: str | pathlib.Path) -> xr.Dataset:
    """Read a cohort written by :func:`write_cohort` (int8 flags back to booleans)."""
    ds = xr.load_dataset(path, engine="h5netcdf")
    for k, v in ds.data_vars.items():
        if v.attrs.get("boolean"):
            ds[k] = v.astype(bool)
    return ds
