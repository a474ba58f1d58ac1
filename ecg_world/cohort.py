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

    def one(ti, ai, bi, hr):
        omega = 2 * jnp.pi * hr / 60.0
        phase0 = jnp.mod(-omega * FIRST_R_PEAK_S, 2 * jnp.pi)

        def lead(g):
            m = McSharryECG(ti, ai * g, bi)
            return ecg_waveform(m, heart_rate=hr, n_samples=n_samples,
                                sampling_rate=sampling_rate, hr_scaling="physiological",
                                scale="none", phase0=phase0)

        return jax.vmap(lead)(gamma)  # (lead, time)

    return one


def _noise(key, shape, sampling_rate, noise_mv):
    k1, k2, k3, k4 = jax.random.split(key, 4)
    t = jnp.arange(shape[-1]) / sampling_rate
    white = noise_mv * jax.random.normal(k1, shape)
    lead_shape = shape[:-1] + (1,)
    f = jax.random.uniform(k2, lead_shape + (2,), minval=0.1, maxval=0.4)
    ph = jax.random.uniform(k3, lead_shape + (2,), maxval=2 * jnp.pi)
    amp = jax.random.uniform(k4, lead_shape + (2,), maxval=0.05)
    wander = jnp.sum(amp * jnp.sin(2 * jnp.pi * f * t[..., None] + ph), axis=-1)
    mains = 0.01 * jnp.sin(2 * jnp.pi * 50.0 * t + ph[..., :1, 0])
    return white + wander + mains


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
    batch_size: int = 16,
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
    drugs = [lib.canonical(d) for d in (drugs or lib.names)]
    n = int(n_patients)
    rng = np.random.default_rng(seed)
    key = jax.random.PRNGKey(seed)
    base, long_qt = sample_baselines(cal, n, rng=rng, long_qt_share=long_qt_share)
    params, _ = twin_from_intervals(base["RR"], base["PR"], base["QRS"], base["QT"])
    key, k_eta = jax.random.split(key)
    eta_pk, eta_pd = cal.variability.sample(k_eta, (n,))
    params = PatientParams(params.ecg, params.heart_rate, eta_pk, eta_pd)
    drug_ids = np.array([lib.index(d) for d in drugs], np.int32)
    std_mg = np.array([dose_to_mg(lib[d].standard_dose, lib[d].dose_unit) for d in drugs])
    mult = np.exp(rng.uniform(np.log(max(lo, 1e-6)), np.log(max(hi, 1e-6)),
                              size=(n, len(drugs))))
    if lo == 0:
        mult = rng.uniform(lo, hi, size=(n, len(drugs)))
    dose_mg = (std_mg[None, :] * mult).astype(np.float32)

    pharm = Pharmacology(lib.table(), cal.emap, cal.diurnal)
    gamma = MULTILEAD_GAMMA[[_LEAD_INDEX[ld] for ld in leads]]
    n_samples = int(round(duration_s * sampling_rate))
    gain = _gain_mv(McSharryECG.default(), sampling_rate)
    render = _render_fn(n_samples, sampling_rate, gamma)

    def per_cell(p: PatientParams, d, dose, t):
        a = Action(d, dose, t)
        q = apply_action(p, a, None, pharm)
        iv = kernel_intervals(q.ecg, q.heart_rate)
        wave = render(q.ecg.ti, q.ecg.ai, q.ecg.bi, q.heart_rate) * gain
        c, ce, _ = concentrations(pharm.table, a, p.eta_pk, pharm.emap.ktol_per_h)
        blk = channel_block(pharm.table, d, ce)
        return iv, wave, c, blk, q.ecg.ti, q.ecg.ai, q.ecg.bi, q.heart_rate

    f = jax.vmap(per_cell, (None, None, None, 0))  # time
    f = jax.vmap(f, (None, 0, 0, None))  # action
    f = jax.vmap(f, (0, None, 0, None))  # patient
    f = jax.jit(f)

    def baseline_cell(p: PatientParams):
        return kernel_intervals(p.ecg, p.heart_rate)

    fb = jax.jit(jax.vmap(baseline_cell))
    outs = []
    t_arr = jnp.asarray(times_h, jnp.float32)
    for s in range(0, n, batch_size):
        sl = slice(s, min(s + batch_size, n))
        p = jax.tree_util.tree_map(lambda x, sl=sl: x[sl], params)
        outs.append([np.asarray(o) for o in f(p, jnp.asarray(drug_ids), jnp.asarray(
            dose_mg[sl]), t_arr)])
    iv, wave, conc, blk, ti, ai, bi, hr = (np.concatenate([o[i] for o in outs]) for i in
                                           range(8))
    base_iv = np.asarray(fb(params))
    key, k_noise = jax.random.split(key)
    wave = wave + np.asarray(_noise(k_noise, wave.shape, sampling_rate, noise_mv))

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
