"""Calibration of the shared pharmacology against the SCR-002 study table (the fitting).

The result is a :class:`~ecg_world.calibrated.Calibration` (the frozen artifact, read and
written as JSON by :mod:`ecg_world.calibrated`); the report on it is
:mod:`ecg_world.calibration_report`. This module only fits and evaluates the fit
(:func:`predicted_time_courses`, :func:`coverage_table`, :func:`leave_one_drug_out`).

Three stages, all driven by targets computed from whatever table is given
(:func:`ecg_world.ecgrdvq.compute_targets`; subjects are read from the file):

1. **PK** per drug (typical ka, ke, V/F, tlag, and the release rate of extended-release
   products) by least squares on log plasma concentrations (all subjects pooled), then the
   between-subject SD of exposure from the per-subject mean log residuals (the population's
   ``omega_exposure`` is the median over drugs; each drug keeps its own as ``exposure_scale``,
   its SD relative to the population's). This is PK only: concentrations are observed, no ECG
   enters.
2. **Placebo / diurnal course**: linear least squares of the harmonic basis
   (:class:`~ecg_world.pharmacology.Diurnal`) on placebo's mean change from baseline.
3. **Shared channel-block -> ECG map** (:class:`~ecg_world.pharmacology.EffectMap`, the same
   for every drug) by weighted least squares of the simulated mean placebo-corrected changes
   (QTcF, PR, QRS, HR, and J-Tpeak_c where the table has it; weights 1/SE of the observed mean)
   over all calibration drugs and time points, plus weak priors on the late-Na and L-type Ca
   weights (:data:`MAP_PRIORS`). J-Tpeak_c is what identifies those weights: the mixed blockers
   leave it almost unchanged while they prolong QTcF through Tpeak-Tend. The fit records
   Gauss-Newton standard errors of the map (``fit_info["map_se"]``). The simulated cohort draws
   log-normal PK and PD variability with common random numbers, so the objective is smooth and
   deterministic. Only the map, PK and variability are fitted: there is no per-drug ECG
   parameter. The PD variability (``omega_pd``) is set so that the simulated between-subject SD
   of ddQTcF at the peak matches the observed one.

**Simulating this study** means simulating its subjects as they were measured: every change is
taken from one pre-dose time point per period, and a period whose baseline happened to be high
(dofetilide's PR: +2.2 ms over placebo's) shows a negative change all day. The expected ddX of
the study's subjects is the drug's effect plus ``dd_rtm = -lambda * mean(B_drug - B_placebo)``,
with ``lambda`` estimated from the table by an analysis of covariance independent of any drug
(:func:`ecg_world.ecgrdvq.baseline_regression`). Fits and coverage tables compare the
observations with ``simulated + dd_rtm`` (``sim_mean``; the placebo course likewise with
``pl_rtm``); the population expectation without it is reported next to it
(``sim_mean_population``). The term is data, not a parameter: nothing per drug is fitted.

The fit works in *effect space*: fractional interval changes times the cohort's baseline
intervals (ms). :mod:`ecg_world.pharmacology` realises fractional changes on the McSharry
kernel so that its reference intervals change by the same fractions (checked by the
calibration report, which re-measures every simulated interval with the kernel's
reference fiducials).

:func:`leave_one_drug_out` refits stage 3 on all drugs but one and predicts the held-out
drug's time courses (its PK still comes from its concentrations, stage 1).
"""

from __future__ import annotations

import datetime
import pathlib
import subprocess
import warnings
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import xarray as xr
from scipy import optimize
from scipy.stats import norm, qmc

from leads_jax.physics.ecg_fiducials import qt_from_qtc_fridericia, qtc_fridericia

from .actions import Action
from .calibrated import CALIBRATED_JSON as CALIBRATED_JSON
from .calibrated import DEFAULT_BASELINE as DEFAULT_BASELINE
from .calibrated import NEUTRAL_SENSITIVITY as NEUTRAL_SENSITIVITY
from .calibrated import Calibration as Calibration
from .calibrated import default_calibration as default_calibration
from .drugs import DrugLibrary, default_library, dose_to_mg
from .ecgrdvq import (
    BASELINE_TPT,
    ENDPOINTS,
    JT_ENDPOINT,
    as_read_table,
    compute_targets,
    subject_baselines,
    triplicate_means,
)
from .pharmacology import (
    Diurnal,
    EffectMap,
    Variability,
    channel_block,
    concentrations,
    effects_from_block,
    repolarisation_parts,
    scale_waves,
)
from .twin import kernel_intervals, twin_from_intervals

MAP_FIELDS = tuple(EffectMap.__dataclass_fields__)
#: (lower, upper) bounds of the map parameters during the fit
MAP_BOUNDS = {
    "qt_gain": (0.0, 5.0),
    "qt_curv": (-5.0, 10.0),
    "w_inal": (0.0, 5.0),
    "w_ical": (0.0, 5.0),
    "pr_ical": (0.0, 10.0),
    "pr_curv": (-5.0, 20.0),
    "pr_ina": (0.0, 5.0),
    "qrs_ina": (0.0, 5.0),
    "hr_gain": (0.0, 500.0),
    "w_alpha": (0.0, 5.0),
    "tol": (0.0, 1.0),
    "ktol_per_h": (0.05, 5.0),
    "jt_share": (0.0, 1.0),
}
#: weak Gaussian priors ``(mean, sd)`` on the mitigation weights, added to the least squares
#: as ``(w - mean) / sd``. A weight of 1 shortens the plateau per unit fractional block as
#: much as a unit rise of the IKr "resistance" lengthens it; the SD of 1 leaves the data
#: (ranolazine's and verapamil's J-Tpeak_c, which the study designed for this: Johannesen L et
#: al., Clin Pharmacol Ther 2014;96:549-558) to decide. Mexiletine and lidocaine, late-Na
#: blockers, removed 20 ms of dofetilide's QTc prolongation in a clinical trial (Johannesen L
#: et al., Clin Pharmacol Ther 2016;99:214-223), so the weights are positive and far from zero
#: in people; the bounds keep them >= 0 (physically signed), not at it.
MAP_PRIORS: dict[str, tuple[float, float]] = {"w_inal": (1.0, 0.5), "w_ical": (1.0, 0.5)}
#: the map's starting point in the fit (the two-part map starts with half the hERG
#: prolongation in J-Tpeak)
FIT_INIT = {"jt_share": 0.5}


# --------------------------------------------------------------------------- stage 1: PK


def _pk_log_conc(table, idx, p, dose_mg, t, er):
    """log plasma concentration (ng/mL) at times ``t`` for PK vector
    ``p = (log ka, log ke, log V/F, tlag, log release)`` replacing row ``idx`` of ``table``."""
    rel = jnp.where(er, jnp.exp(p[4]), jnp.inf)
    tab = eqx.tree_at(
        lambda tb: (tb.ka_per_h, tb.ke_per_h, tb.v_over_f_l, tb.tlag_h, tb.release_per_h),
        table,
        (table.ka_per_h.at[idx].set(jnp.exp(p[0])), table.ke_per_h.at[idx].set(jnp.exp(p[1])),
         table.v_over_f_l.at[idx].set(jnp.exp(p[2])), table.tlag_h.at[idx].set(p[3]),
         table.release_per_h.at[idx].set(rel)))
    c = jax.vmap(lambda tt: concentrations(tab, Action(idx, dose_mg, tt))[0])(t)
    return jnp.log(jnp.maximum(c, 1e-6))


def fit_pk(df: pd.DataFrame, library: DrugLibrary | None = None, *, drugs=None) -> dict:
    """Per-drug PK fit to log plasma concentrations. Returns ``{drug: {pk..., omega_exposure,
    rmse_log, n}}``.

    **Fallback (documented, tested):** a drug with fewer than 5 positive concentrations in
    the table (e.g. a table without ``PCSTRESN``) is left out of the result with a warning;
    :func:`calibrate` then keeps its PK constants from ``drugs.json`` and records the drug
    under ``provenance["pk_from_drugs_json"]``."""
    library = library or default_library()
    means = triplicate_means(df)
    out = {}
    table = library.table()
    conc_fn = jax.jit(_pk_log_conc)
    jac_fn = jax.jit(jax.jacfwd(_pk_log_conc, argnums=2))
    drugs = drugs or [d for d in means.drug.unique() if d != "placebo"]
    for name in sorted(drugs):
        drug = library[name]
        sub = means[(means.drug == name) & (means.tpt > 0) & np.isfinite(means.conc_ng_ml)
                    & (means.conc_ng_ml > 0)]
        if len(sub) < 5:
            warnings.warn(f"fit_pk: {name} has {len(sub)} positive plasma concentrations in "
                          "the table (< 5): its PK constants stay at the drugs.json values",
                          stacklevel=2)
            continue
        dose_rows = df[(df.drug == name)]
        dose, unit = drug.standard_dose, drug.dose_unit
        if "EXDOSE" in df.columns and dose_rows.EXDOSE.notna().any():
            dose = float(dose_rows.EXDOSE.dropna().iloc[0])
            if "EXDOSU" in df.columns and dose_rows.EXDOSU.notna().any():
                unit = str(dose_rows.EXDOSU.dropna().iloc[0])
        dose_mg = jnp.float32(dose_to_mg(dose, unit))
        # pad to a fixed length so every drug reuses one compilation
        n_obs = len(sub)
        n_pad = int(np.ceil(n_obs / 128) * 128)
        t = jnp.asarray(np.pad(sub.tpt.to_numpy(), (0, n_pad - n_obs), constant_values=1.0),
                        jnp.float32)
        y = np.log(sub.conc_ng_ml.to_numpy(float))
        idx = jnp.int32(library.index(name))
        pk0 = drug.pk
        p0 = [np.log(pk0["ka_per_h"]), np.log(pk0["ke_per_h"]), np.log(pk0["v_over_f_l"]),
              min(max(pk0["tlag_h"], 0.0), 1.0), np.log(pk0["release_per_h"] or 1.0)]
        lb = [np.log(0.05), np.log(0.005), np.log(1.0), 0.0, np.log(0.02)]
        ub = [np.log(20.0), np.log(2.0), np.log(1e5), 1.5, np.log(5.0)]
        # an extended-release product has its release stage; an immediate-release one is
        # fitted with one absorption stage and with two (a transit compartment before the
        # depot; Savic RM et al., J Pharmacokinet Pharmacodyn 2007;34:711-726), and the
        # second is kept where it lowers the AIC of the log residuals (one more parameter)
        ext = drug.pk["release_per_h"] is not None
        fits = [(_fit_pk_one(conc_fn, jac_fn, table, idx, dose_mg, t, y, n_obs, p0, lb, ub,
                             er=e), e) for e in ((True,) if ext else (False, True))]
        aic = [n_obs * np.log(np.mean(f.fun ** 2)) + 2 * f.x.size for (f, _), _ in fits]
        (fit, full), er = fits[int(np.argmin(aic))]

        p = np.asarray(full(fit.x), float)
        r = fit.fun  # log residuals at the solution
        per_subject = pd.Series(r, index=sub.subject.to_numpy()).groupby(level=0).mean()
        pk = dict(ka_per_h=float(np.exp(p[0])), ke_per_h=float(np.exp(p[1])),
                  v_over_f_l=float(np.exp(p[2])), tlag_h=float(p[3]))
        if er:
            pk["release_per_h"] = float(np.exp(p[4]))
        out[name] = {**pk, "omega_exposure": float(per_subject.std(ddof=1)),
                     "rmse_log": float(np.sqrt(np.mean(r**2))), "n": int(len(r)),
                     "absorption": ("release" if ext else "transit") if er else "first-order",
                     "aic": [float(a) for a in aic]}
    return out


def _fit_pk_one(conc_fn, jac_fn, table, idx, dose_mg, t, y, n_obs, p0, lb, ub, *, er):
    """One robust least-squares PK fit (soft-L1 on log concentrations); ``er``: with the
    release (or transit) stage. Returns the ``least_squares`` result (``fun``: the log
    residuals at the solution) and the map from its free parameters to the full vector."""
    free = np.array([True, True, True, True, er])

    def full(q):
        p = np.array(p0, float)
        p[free] = q
        return jnp.asarray(p, jnp.float32)

    def resid(q):
        c = np.asarray(conc_fn(table, idx, full(q), dose_mg, t, er), float)[:n_obs]
        return c - y

    def jac(q):
        j = np.asarray(jac_fn(table, idx, full(q), dose_mg, t, er), float)[:n_obs]
        return j[:, free]

    fit = optimize.least_squares(resid, np.array(p0)[free], jac=jac,
                                 bounds=(np.array(lb)[free], np.array(ub)[free]),
                                 loss="soft_l1", f_scale=0.5)
    return fit, full


# ------------------------------------------------------------------ stage 2: diurnal course


def fit_diurnal(targets: xr.Dataset, sens: dict | None = None) -> Diurnal:
    """Linear least-squares fit of the harmonic placebo course to placebo's mean change.

    Placebo's regression-to-the-mean term (``targets.pl_rtm``) is removed first, then the part
    of its QTcF, PR and QRS change that the kernel already produces through the heart-rate
    change (``sens``, :func:`kernel_sensitivity`)."""
    sens = {**NEUTRAL_SENSITIVITY, **(sens or {})}
    t = targets.time.values
    keep = t > BASELINE_TPT
    phi = np.asarray(Diurnal.basis(jnp.asarray(t[keep])))
    base = targets.base_mean.to_series()
    coef = np.zeros((4, 4))
    scale = {"HR": 1.0, "QTc": 1.0 / base["QTcF"], "PR": 1.0 / base["PR"],
             "QRS": 1.0 / base["QRS"]}
    src = {"HR": "HR", "QTc": "QTcF", "PR": "PR", "QRS": "QRS"}
    pl = targets.pl_mean - rtm_term(targets, "pl_rtm")
    for k, name in enumerate(("HR", "QTc", "PR", "QRS")):
        y = pl.sel(endpoint=src[name]).values[keep]
        if name != "HR":
            d_hr = pl.sel(endpoint="HR").values[keep]
            key = {"QTc": "QTcF", "PR": "PR", "QRS": "QRS"}[name]
            gain = {"QTc": sens["gain_qt"], "PR": sens["gain_pr"], "QRS": sens["gain_qrs"]}[name]
            y = y - sens[f"d{key}_dHR"] * d_hr
            if name == "PR":  # the kernel's QT -> PR cross-coupling (T/P overlap)
                d_qt = pl.sel(endpoint="QTcF").values[keep] / base["QTcF"]
                y = y - sens["dPR_dqt"] * np.nan_to_num(d_qt)
            y = y / gain
        y = y * scale[name]
        ok = np.isfinite(y)
        # small ridge keeps the 4 harmonics tame with 15 time points
        a = phi[ok]
        coef[k] = np.linalg.solve(a.T @ a + 1e-3 * np.eye(4), a.T @ y[ok])
    return Diurnal(jnp.asarray(coef, jnp.float32))


# ---------------------------------------------------------- stage 3: the shared effect map


def rtm_term(targets: xr.Dataset, name: str = "dd_rtm") -> xr.DataArray:
    """The study's regression-to-the-mean term on the targets' time grid (0 before the dose;
    0 where the targets carry none)."""
    post = xr.DataArray(targets.time.values > BASELINE_TPT, coords={"time": targets.time})
    if name not in targets:
        shape = targets.dd_mean if name == "dd_rtm" else targets.pl_mean
        return xr.zeros_like(shape)
    return (targets[name].fillna(0.0) * post).transpose(
        *(("drug",) if name == "dd_rtm" else ()), "time", "endpoint")


def _map_from_vector(p) -> EffectMap:
    return EffectMap(**{k: jnp.asarray(p[i], jnp.float32) for i, k in enumerate(MAP_FIELDS)})


def _with_drug_params(table, drug_ids, log_ke0, fu):
    return eqx.tree_at(lambda tb: (tb.ke0_per_h, tb.unbound_fraction), table,
                       (table.ke0_per_h.at[drug_ids].set(jnp.exp(log_ke0)),
                        table.unbound_fraction.at[drug_ids].set(fu)))


def _cohort_effects(table, emap, drug_ids, dose_mg, times, eta_pk, eta_pd):
    """Fractional effects for a virtual cohort: (drug, time, subject, 5): QT, PR, QRS, HR
    (bpm) and the J-Tpeak part of the QT change."""

    def one(d, dose, t, epk, epd):
        a = Action(d, dose, t)
        _, ce, ct = concentrations(table, a, epk, emap.ktol_per_h)
        be = channel_block(table, d, ce)
        e = effects_from_block(emap, be, channel_block(table, d, ct), epd)
        jt, _ = repolarisation_parts(emap, be, epd)
        return jnp.stack([e.qt_frac, e.pr_frac, e.qrs_frac, e.hr_bpm, jt])

    f = jax.vmap(one, (None, None, None, 0, 0))  # subjects
    f = jax.vmap(f, (None, None, 0, None, None))  # times
    f = jax.vmap(f, (0, 0, None, None, None))  # drugs
    return f(drug_ids, dose_mg, times, eta_pk, eta_pd)


def kernel_sensitivity(bdist: dict, *, dhr: float = 10.0, dfrac: float = 0.1) -> dict:
    """How the McSharry kernel realises the map's outputs at the cohort's typical twin.

    ``gain_*``: reference-interval change per intended change (``scale_waves`` by ``dfrac``);
    ``d*_dHR``: change of QTcF, PR, QRS (ms) per bpm when only the heart rate rises by ``dhr``
    (with ``hr_scaling="physiological"`` the P wave is stretched by ``RR^(1/3)`` like the T
    wave, so PR shortens as the rate rises, about -0.8 ms/bpm at the typical twin: a PR/RR
    slope of ``PR / (3 RR)`` = 0.055 ms/ms at PR 165 ms, RR 1 s, the mean intra-subject PQ/RR
    slope of Holter recordings in healthy subjects, Hnatkova K et al., J Electrocardiol
    2008;41:491-497; steeper than the population PR-HR adjustment of -0.26 ms/bpm, Soliman EZ &
    Rautaharju PM, J Electrocardiol 2012;45:66-69, and than SCR-002's placebo arm, -0.12 to
    -0.33 ms/bpm; the fit sees this coupling, so its predictions include it);
    ``dPR_dqt``: change of the reference PR (ms)
    per unit fractional QT change (the stretched T wave's tail reaches the next beat's P wave,
    so the kernel lengthens PR by ~0.4 ms at +15% QT). The effect-space calibration uses these
    so that its predictions are the kernel's, to first order."""
    mean = np.asarray(bdist["mean"], float)
    rr = float(np.exp(mean[0]))
    qt = float(qt_from_qtc_fridericia(mean[3], rr))
    params, _ = twin_from_intervals([rr], [mean[1]], [mean[2]], [qt])
    m = jax.tree_util.tree_map(lambda x: x[0], params.ecg)
    hr = float(params.heart_rate[0])
    f = jax.jit(kernel_intervals)
    b = np.asarray(f(m, hr), float)

    def qtcf(v):
        return qtc_fridericia(v[3], v[0])

    h = np.asarray(f(m, hr + dhr), float)
    gq = np.asarray(f(scale_waves(m, dfrac, 0.0, 0.0), hr), float)
    gp = np.asarray(f(scale_waves(m, 0.0, dfrac, 0.0), hr), float)
    gr = np.asarray(f(scale_waves(m, 0.0, 0.0, dfrac), hr), float)
    return {"gain_qt": float((gq[3] - b[3]) / (dfrac * b[3])),
            "gain_pr": float((gp[1] - b[1]) / (dfrac * b[1])),
            "gain_qrs": float((gr[2] - b[2]) / (dfrac * b[2])),
            "dQTcF_dHR": float((qtcf(h) - qtcf(b)) / dhr),
            "dPR_dHR": float((h[1] - b[1]) / dhr),
            "dQRS_dHR": float((h[2] - b[2]) / dhr),
            "dPR_dqt": float((gq[1] - b[1]) / dfrac),
            "at": {"RR": rr, "PR": float(mean[1]), "QRS": float(mean[2]), "QT": qt}}


def effects_to_ms(frac, base: pd.Series, sens: dict | None = None):
    """(..., 5) fractional QT, PR, QRS, HR (bpm) and J-Tpeak part of QT -> ddQTcF, ddPR,
    ddQRS (ms), ddHR (bpm), ddJTpc (ms), including the kernel's realisation gains and rate
    coupling (:func:`kernel_sensitivity`). The J-Tpeak part is a share of the QT change
    (same scale; J-Tpeak_c is corrected for rate by the study's exponent, so no rate term)."""
    s = {**NEUTRAL_SENSITIVITY, **(sens or {})}
    hr = frac[..., 3]
    return jnp.stack([
        frac[..., 0] * base["QTcF"] * s["gain_qt"] + s["dQTcF_dHR"] * hr,
        frac[..., 1] * base["PR"] * s["gain_pr"] + s["dPR_dHR"] * hr
        + s["dPR_dqt"] * frac[..., 0],
        frac[..., 2] * base["QRS"] * s["gain_qrs"] + s["dQRS_dHR"] * hr,
        hr,
        frac[..., 4] * base["QTcF"] * s["gain_qt"],
    ], axis=-1)


#: endpoints of the effect-space simulation (:func:`effects_to_ms`), in order
SIM_ENDPOINTS: tuple[str, ...] = ENDPOINTS + (JT_ENDPOINT,)


def fit_endpoints(targets: xr.Dataset) -> list[str]:
    """The simulated endpoints the targets observe (J-Tpeak_c only where the table has it)."""
    have = set(targets.endpoint.values)
    return [e for e in SIM_ENDPOINTS if e in have]


class CohortDesign:
    """Drugs, doses, times and random effects (common random numbers) of a virtual cohort."""

    def __init__(self, targets: xr.Dataset, library: DrugLibrary, variability: Variability,
                 n_virtual: int = 256, seed: int = 0, drugs: Sequence[str] | None = None):
        self.drugs = list(drugs or targets.drug.values)
        self.library = library
        self.drug_ids = jnp.asarray([library.index(d) for d in self.drugs], jnp.int32)
        self.dose_mg = jnp.asarray(
            [dose_to_mg(library[d].standard_dose, library[d].dose_unit) for d in self.drugs],
            jnp.float32)
        self.times = np.asarray(targets.time.values, float)
        self.t_eval = jnp.asarray(np.maximum(self.times, 0.0), jnp.float32)
        # scrambled Sobol points mapped to normal quantiles: the cohort mean converges much
        # faster than with pseudo-random draws, so 64 virtual subjects give a stable mean
        u = qmc.Sobol(d=4, scramble=True, seed=seed).random(n_virtual)
        z = norm.ppf(np.clip(u, 1e-6, 1 - 1e-6)).astype(np.float32)
        self.z_pk = jnp.asarray(z[:, :3])
        self.z_pd = jnp.asarray(z[:, 3])
        self.variability = variability

    def etas(self, variability: Variability | None = None):
        v = variability or self.variability
        om = jnp.stack([v.omega_exposure, v.omega_ke, v.omega_ka])
        return self.z_pk * om, self.z_pd * v.omega_pd


def simulate_effects(design: CohortDesign, table, emap: EffectMap, variability=None,
                     base: pd.Series | None = None, sens: dict | None = None) -> np.ndarray:
    """(drug, time, subject, endpoint) placebo-corrected changes in ms/bpm (effect space).

    Pre-dose times give zero (no drug in the body)."""
    eta_pk, eta_pd = design.etas(variability)
    frac = _cohort_effects_jit(table, emap, design.drug_ids, design.dose_mg, design.t_eval,
                               eta_pk, eta_pd)
    return np.asarray(effects_to_ms(frac, base, sens))


_cohort_effects_jit = jax.jit(_cohort_effects)


_SE_FLOOR = {"QTcF": 2.0, "PR": 2.0, "QRS": 1.0, "HR": 1.0, JT_ENDPOINT: 2.0}


def _target_arrays(targets, drugs):
    """Observed means less the study's regression-to-the-mean term (the simulation is then
    compared on the drug effect alone) and weights 1/SE, on :func:`fit_endpoints`."""
    eps = fit_endpoints(targets)
    obs = (targets.dd_mean - rtm_term(targets)).sel(drug=drugs, endpoint=eps).values
    sd = targets.dd_sd.sel(drug=drugs, endpoint=eps).values
    n = targets.dd_n.sel(drug=drugs, endpoint=eps).values
    se = np.maximum(sd / np.sqrt(np.maximum(n, 1)), np.asarray([_SE_FLOOR[e] for e in eps]))
    keep = (targets.time.values > BASELINE_TPT)[None, :, None] & np.isfinite(obs)
    return (jnp.asarray(np.where(keep, obs, 0.0), jnp.float32),
            jnp.asarray(np.where(keep, 1.0 / se, 0.0), jnp.float32))


def fit_effect_map(
    targets: xr.Dataset,
    library: DrugLibrary,
    variability: Variability,
    *,
    drugs: Sequence[str] | None = None,
    init: EffectMap | None = None,
    fit_drug_pk: bool = True,
    n_virtual: int = 64,
    max_nfev: int = 200,
    seed: int = 0,
    sens: dict | None = None,
) -> tuple[EffectMap, dict, dict]:
    """Weighted least squares of the shared map (and, per fitted drug, two PK properties: the
    effect-site equilibration rate ke0 and the unbound fraction inside its literature range)
    on the given drugs' mean time courses.

    Residuals and their Jacobian are computed in JAX (``jax.jacfwd``).

    **Returns:** ``(effect_map, fit_info, {drug: {ke0_per_h, unbound_fraction}})``."""
    drugs = list(drugs or targets.drug.values)
    design = CohortDesign(targets, library, variability, n_virtual, seed, drugs)
    table = library.table()
    base = targets.base_mean.to_series()
    obs, w = _target_arrays(targets, drugs)
    if not np.any(np.asarray(w) > 0):
        raise ValueError(f"no finite post-dose target for drugs {drugs}: the table gives no "
                         "placebo-corrected change to fit")
    eta_pk, eta_pd = design.etas(variability)
    n_map = len(MAP_FIELDS)
    n_d = len(drugs) if fit_drug_pk else 0
    n_ep = len(fit_endpoints(targets))
    prior_idx = np.asarray([MAP_FIELDS.index(k) for k in MAP_PRIORS], np.int32)
    prior_mu = jnp.asarray([m for m, _ in MAP_PRIORS.values()], jnp.float32)
    prior_sd = jnp.asarray([s for _, s in MAP_PRIORS.values()], jnp.float32)

    def resid(p):
        emap = _map_from_vector(p[:n_map])
        tab = (_with_drug_params(table, design.drug_ids, p[n_map:n_map + n_d],
                                 p[n_map + n_d:]) if fit_drug_pk else table)
        frac = _cohort_effects(tab, emap, design.drug_ids, design.dose_mg, design.t_eval,
                               eta_pk, eta_pd)
        sim = effects_to_ms(frac, base, sens).mean(axis=2)[..., :n_ep]
        prior = (p[prior_idx] - prior_mu) / prior_sd
        return jnp.concatenate([((sim - obs) * w).ravel(), prior])

    resid_j = jax.jit(resid)
    jac_j = jax.jit(jax.jacfwd(resid))
    init = init or EffectMap.default(**FIT_INIT)
    ke0_0 = [np.log(min(max(float(library[d].pk["ke0_per_h"]), 0.11), 49.0)) for d in drugs]
    fu_rng = [library[d].unbound_fraction_range or (library[d].unbound_fraction,) * 2
              for d in drugs]
    fu_0 = [min(max(library[d].unbound_fraction, r[0]), r[1]) for d, r in zip(drugs, fu_rng,
                                                                              strict=True)]
    extra0 = (ke0_0 + fu_0) if fit_drug_pk else []
    extra_lb = ([np.log(0.1)] * n_d + [r[0] for r in fu_rng]) if fit_drug_pk else []
    extra_ub = ([np.log(50.0)] * n_d + [r[1] for r in fu_rng]) if fit_drug_pk else []
    p0 = np.array([float(getattr(init, k)) for k in MAP_FIELDS] + extra0)
    lb = np.array([MAP_BOUNDS[k][0] for k in MAP_FIELDS] + extra_lb)
    ub = np.array([MAP_BOUNDS[k][1] for k in MAP_FIELDS] + extra_ub) + 1e-9
    p0 = np.clip(p0, lb, ub)
    fit = optimize.least_squares(
        lambda p: np.asarray(resid_j(jnp.asarray(p, jnp.float32)), float), p0,
        jac=lambda p: np.asarray(jac_j(jnp.asarray(p, jnp.float32)), float),
        bounds=(lb, ub), x_scale="jac", max_nfev=max_nfev)
    emap = _map_from_vector(fit.x[:n_map])
    drug_pk = {d: {"ke0_per_h": float(np.exp(fit.x[n_map + i])),
                   "unbound_fraction": float(fit.x[n_map + n_d + i])}
               for i, d in enumerate(drugs)} if fit_drug_pk else {}
    # Gauss-Newton standard errors of the map (scaled by the residual variance): a weight
    # whose SE is as large as its prior SD is not identified by the table
    jac = np.asarray(jac_j(jnp.asarray(fit.x, jnp.float32)), float)
    n_pts = int(np.sum(np.asarray(w) > 0))
    free = (fit.x > lb + 1e-6) & (fit.x < ub - 1e-6)
    se = np.full(len(fit.x), np.nan)
    try:
        jf = jac[:, free]
        cov = np.linalg.pinv(jf.T @ jf) * max(2 * fit.cost / max(n_pts - int(free.sum()), 1),
                                              1.0)
        se[free] = np.sqrt(np.clip(np.diag(cov), 0.0, None))
    except np.linalg.LinAlgError:  # pragma: no cover - a singular Jacobian leaves NaN
        pass
    info = {"cost": float(fit.cost), "nfev": int(fit.nfev), "status": int(fit.status),
            "chi2_per_point": float(2 * fit.cost / max(n_pts, 1)),
            "drugs": [str(d) for d in drugs], "endpoints": fit_endpoints(targets),
            "map_se": {k: float(se[i]) for i, k in enumerate(MAP_FIELDS)},
            "priors": {k: {"mean": m, "sd": sd} for k, (m, sd) in MAP_PRIORS.items()},
            "at_bound": [k for i, k in enumerate(MAP_FIELDS) if not free[i]]}
    return emap, info, drug_pk


def _weakest_drug(targets: xr.Dataset) -> str:
    """The drug with the smallest peak ddQTcF: its SD over subjects estimates the residual
    (measurement and within-subject) noise of a double difference."""
    return targets.dd_mean.sel(endpoint="QTcF").max("time").idxmin("drug").item()


def fit_omega_pd(targets, library, emap, variability, *, drugs=("dofetilide", "quinidine"),
                 n_virtual=512, seed=0, sens=None) -> float:
    """Choose ``omega_pd`` so the simulated SD of ddQTcF at each drug's peak time matches the
    observed SD after removing the residual (measurement + within-subject) variance, estimated
    as the observed SD of ddQTcF under the weakest drug."""
    drugs = [d for d in drugs if d in targets.drug.values]
    if not drugs:
        return float(variability.omega_pd)
    sd = targets.dd_sd.sel(endpoint="QTcF")
    weakest = _weakest_drug(targets)
    resid_var = float(np.nanmedian(sd.sel(drug=weakest).values[1:] ** 2))
    table = library.table()
    base = targets.base_mean.to_series()
    design = CohortDesign(targets, library, variability, n_virtual, seed, drugs)
    obs_var = []
    peak_idx = []
    for d in drugs:
        m = targets.dd_mean.sel(drug=d, endpoint="QTcF").values
        j = int(np.nanargmax(m))
        peak_idx.append(j)
        obs_var.append(max(float(sd.sel(drug=d).values[j]) ** 2 - resid_var, 1.0))

    def loss(om):
        v = Variability(variability.omega_exposure, variability.omega_ke, variability.omega_ka,
                        jnp.asarray(om, jnp.float32))
        sim = simulate_effects(design, table, emap, v, base, sens)[..., 0]
        var = [float(np.var(sim[i, j])) for i, j in enumerate(peak_idx)]
        return float(np.sum((np.log(var) - np.log(obs_var)) ** 2))

    res = optimize.minimize_scalar(loss, bounds=(0.0, 1.5), method="bounded",
                                   options={"xatol": 1e-3})
    return float(res.x)


# ------------------------------------------------------------------------- orchestration


def baseline_distribution(df: pd.DataFrame) -> dict:
    """Mean and covariance of (log RR, PR, QRS, QTcF) over the subjects' baselines."""
    b = subject_baselines(df).dropna()
    x = np.column_stack([np.log(b.RR), b.PR, b.QRS, b.QTcF])
    return {"variables": ["log_RR_ms", "PR_ms", "QRS_ms", "QTcF_ms"],
            "mean": x.mean(axis=0).round(6).tolist(),
            "cov": np.cov(x, rowvar=False).round(6).tolist(),
            "n_subjects": int(len(b))}


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              cwd=pathlib.Path(__file__).parent, check=True).stdout.strip()
    except Exception:  # noqa: BLE001 - provenance only
        return "unknown"


def calibrate(
    table: str | pathlib.Path | pd.DataFrame,
    *,
    library: DrugLibrary | None = None,
    drugs: Sequence[str] | None = None,
    n_virtual: int = 64,
    max_nfev: int = 200,
    init: EffectMap | None = None,
    seed: int = 0,
    pk: dict | None = None,
    sens: dict | None = None,
    fit_drug_pk: bool = True,
) -> tuple[Calibration, xr.Dataset]:
    """Full calibration (stages 1-3) on ``drugs`` (default: all drugs in the table).

    ``pk`` may pass a stage-1 result (:func:`fit_pk`) and ``sens`` a kernel response
    (:func:`kernel_sensitivity`) to skip recomputing them. ``fit_drug_pk=False`` keeps the
    two per-drug ECG-informed knobs (effect-site rate ``ke0`` and unbound fraction) at their
    drugs.json values: the map alone is fitted (the ablation of :func:`leave_one_drug_out`)."""
    library = library or default_library()
    df = as_read_table(table, library=library)
    targets = compute_targets(df, library=library)
    pk = {d: dict(v) for d, v in (pk or fit_pk(df, library)).items()}
    om_exp = float(np.median([p["omega_exposure"] for p in pk.values()])) if pk else 0.3
    for p in pk.values():  # each drug's own exposure variability, relative to the population's
        p["exposure_scale"] = float(p["omega_exposure"] / om_exp)
    lib = library.with_pk({d: {k: v for k, v in p.items()
                               if k in ("ka_per_h", "ke_per_h", "v_over_f_l", "tlag_h",
                                        "release_per_h", "exposure_scale")}
                           for d, p in pk.items()})
    var = Variability.default(omega_exposure=om_exp)
    bdist = baseline_distribution(df)
    sens = kernel_sensitivity(bdist) if sens is None else sens
    diurnal = fit_diurnal(targets, sens)
    fit_drugs = list(drugs or targets.drug.values)
    emap, info, drug_pk = fit_effect_map(targets, lib, var, drugs=fit_drugs, init=init,
                                         n_virtual=n_virtual, max_nfev=max_nfev, seed=seed,
                                         sens=sens, fit_drug_pk=fit_drug_pk)
    lib = lib.with_pk({d: dict(v) for d, v in drug_pk.items()})
    pd_drugs = [d for d in ("dofetilide", "quinidine") if d in fit_drugs]
    om_pd = fit_omega_pd(targets, lib, emap, var, drugs=pd_drugs, sens=sens)
    if abs(om_pd - float(var.omega_pd)) > 0.01:
        # the cohort mean depends on the PD spread (E exp(eta_pd) = exp(omega^2 / 2)): refit
        # the map (from the first fit) under the fitted spread, so that the committed map and
        # variability predict the means they were fitted to; then the spread once more
        var = Variability.default(omega_exposure=om_exp, omega_pd=om_pd)
        emap, info, drug_pk = fit_effect_map(targets, lib, var, drugs=fit_drugs, init=emap,
                                             n_virtual=n_virtual, max_nfev=max_nfev,
                                             seed=seed, sens=sens, fit_drug_pk=fit_drug_pk)
        lib = lib.with_pk({d: dict(v) for d, v in drug_pk.items()})
        om_pd = fit_omega_pd(targets, lib, emap, var, drugs=pd_drugs, sens=sens)
    for d, v in drug_pk.items():
        pk.setdefault(d, {}).update(v)
    var = Variability.default(omega_exposure=om_exp, omega_pd=om_pd)
    provenance = {
        "created_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "table": str(table) if not isinstance(table, pd.DataFrame) else "DataFrame",
        "subjects": targets.attrs["subjects"],
        "calibration_drugs": fit_drugs,
        "git_commit": _git_commit(),
        "method": "ecg_world.calibration.calibrate (PK on log concentrations; harmonic "
                  "placebo course; weighted least squares of the shared effect map)",
        "n_virtual": n_virtual,
        "seed": seed,
        "pk_from_drugs_json": sorted(d for d in fit_drugs if d not in pk),
        "fit_drug_pk": bool(fit_drug_pk),
    }
    cal = Calibration(lib, emap, diurnal, var, provenance, pk, info, bdist, sens)
    return cal, targets


def predicted_time_courses(cal: Calibration, targets: xr.Dataset, *, drugs=None,
                           n_virtual: int = 512, seed: int = 1) -> xr.Dataset:
    """Effect-space simulated ddQTcF, ddPR, ddQRS, ddHR per drug and time.

    **Returns:** ``sim_mean`` (the study's subjects: population mean plus the table's
    regression-to-the-mean term ``dd_rtm``, what the observed means estimate),
    ``sim_mean_population`` (the drug effect alone) and ``sim_sd`` (between-subject SD from the
    PK/PD variability)."""
    drugs = list(drugs or targets.drug.values)
    design = CohortDesign(targets, cal.library, cal.variability, n_virtual, seed, drugs)
    eps = fit_endpoints(targets)
    sim = simulate_effects(design, cal.library.table(), cal.emap, cal.variability,
                           targets.base_mean.to_series(), cal.sensitivity)[..., :len(eps)]
    dims = ("drug", "time", "endpoint")
    pop = xr.DataArray(sim.mean(axis=2), dims=dims,
                       coords={"drug": drugs, "time": targets.time.values, "endpoint": eps})
    return xr.Dataset(
        {"sim_mean": pop + rtm_term(targets).sel(drug=drugs, endpoint=eps),
         "sim_mean_population": pop,
         "sim_sd": (dims, sim.std(axis=2))})


def coverage_table(sim_mean: xr.DataArray, targets: xr.Dataset) -> pd.DataFrame:
    """Per drug and endpoint: share of post-dose time points where the simulated mean lies in
    the observed confidence band, and RMSE (ms or bpm) of simulated vs observed means."""
    rows = []
    keep = targets.time.values > BASELINE_TPT
    for d in sim_mean.drug.values:
        for e in sim_mean.endpoint.values:
            s = sim_mean.sel(drug=d, endpoint=e).values[keep]
            o = targets.dd_mean.sel(drug=d, endpoint=e).values[keep]
            lo = targets.dd_lo.sel(drug=d, endpoint=e).values[keep]
            hi = targets.dd_hi.sel(drug=d, endpoint=e).values[keep]
            ok = np.isfinite(o)
            inside = (s >= lo) & (s <= hi)
            rows.append({"drug": d, "endpoint": e,
                         "inside_band": float(inside[ok].mean()),
                         "rmse": float(np.sqrt(np.mean((s[ok] - o[ok]) ** 2))),
                         "n_times": int(ok.sum())})
    return pd.DataFrame(rows)


def leave_one_drug_out(table, *, library=None, n_virtual=64, max_nfev=150,
                       init: EffectMap | None = None, fit_drug_pk: bool = True
                       ) -> tuple[pd.DataFrame, dict]:
    """Calibrate the shared map on all drugs but one, predict the held-out drug.

    ``fit_drug_pk=False``: without the per-drug ECG-informed knobs (ke0, unbound fraction at
    their drugs.json values in every fold), to show whether they carry the fit.

    Returns the coverage/RMSE rows of the held-out drugs and the per-fold maps."""
    library = library or default_library()
    df = as_read_table(table, library=library)
    targets = compute_targets(df, library=library)
    all_drugs = list(targets.drug.values)
    rows, maps = [], {}
    pk = fit_pk(df, library)  # concentrations only: no ECG data of the held-out drug
    sens = kernel_sensitivity(baseline_distribution(df))
    for held in all_drugs:
        cal, _ = calibrate(df, library=library, drugs=[d for d in all_drugs if d != held],
                           n_virtual=n_virtual, max_nfev=max_nfev, init=init, pk=pk,
                           sens=sens, fit_drug_pk=fit_drug_pk)
        pred = predicted_time_courses(cal, targets, drugs=[held])
        cov = coverage_table(pred.sim_mean, targets)
        cov["held_out"] = held
        rows.append(cov)
        maps[held] = cal.emap.to_dict()
    return pd.concat(rows, ignore_index=True), maps


def subject_folds(subjects: Sequence[int], k: int = 4, seed: int = 0) -> list[list[int]]:
    """``k`` seeded folds of subject ids (a seeded permutation split as evenly as possible);
    every subject lies in exactly one fold."""
    subjects = sorted(int(s) for s in subjects)
    if not 2 <= k <= len(subjects):
        raise ValueError(f"k must lie in [2, {len(subjects)}] (the number of subjects), got {k}")
    perm = np.random.default_rng(seed).permutation(len(subjects))
    return [sorted(subjects[i] for i in part) for part in np.array_split(perm, k)]


def cross_validate(table, *, k: int = 4, seed: int = 0, library: DrugLibrary | None = None,
                   n_virtual: int = 64, max_nfev: int = 200, n_virtual_pred: int = 512
                   ) -> tuple[xr.Dataset, pd.DataFrame, list[list[int]]]:
    """Subject-level ``k``-fold cross-validation of the whole calibration (stages 1-3).

    Each fold is calibrated on the other folds' subjects only (PK, placebo course, map, the
    regression-to-the-mean slope ``lambda``) and predicts its own subjects' mean ddX: the
    population mean of its calibration plus ``-lambda_train * mean(B_drug - B_placebo)`` of
    the held-out subjects' baselines (data known before the drug acts; no held-out outcome
    enters). The out-of-fold predictions are pooled (weighted by the folds' subject counts)
    and compared with the confidence band of all subjects (:func:`coverage_table`).

    **Returns:** ``(pooled, coverage, folds)``: ``pooled`` Dataset with ``sim_mean`` (drug,
    time, endpoint) and ``fold_mean`` (fold, drug, time, endpoint); the coverage table; the
    folds' subject ids."""
    library = library or default_library()
    df = as_read_table(table, library=library)
    targets = compute_targets(df, library=library)
    folds = subject_folds(df.subject.unique(), k, seed)
    drugs = list(targets.drug.values)
    post = xr.DataArray(targets.time.values > BASELINE_TPT, coords={"time": targets.time})
    fold_means, weights = [], []
    for held in folds:
        train = df[~df.subject.isin(held)]
        test = df[df.subject.isin(held)]
        cal, t_train = calibrate(train, library=library, n_virtual=n_virtual,
                                 max_nfev=max_nfev, seed=seed)
        t_test = compute_targets(test, library=library)
        pred = predicted_time_courses(cal, targets, drugs=drugs, n_virtual=n_virtual_pred)
        rtm = (-t_train.rtm_slope * t_test.base_diff).reindex(drug=drugs).fillna(0.0)
        fold_means.append((pred.sim_mean_population + rtm * post).transpose(
            "drug", "time", "endpoint"))
        weights.append(len(held))
    stacked = xr.concat(fold_means, dim="fold")
    w = xr.DataArray(np.asarray(weights, float), dims="fold")
    pooled = (stacked * w).sum("fold") / w.sum()
    cov = coverage_table(pooled, targets)
    ds = xr.Dataset({"sim_mean": pooled, "fold_mean": stacked,
                     "fold_subjects": ("fold", [",".join(map(str, f)) for f in folds])},
                    attrs={"k": k, "seed": seed, "n_virtual": n_virtual, "max_nfev": max_nfev,
                           "method": "ecg_world.calibration.cross_validate"})
    return ds, cov, folds


# --------------------------------------------------------------------- checks on the map


def without_block(table, drug_id: int, target: str):
    """``table`` with one drug's block of one target removed (its IC50 set to the
    no-block value), for the mitigation check."""
    from .drugs import _NO_BLOCK_IC50, TARGETS

    j = TARGETS.index(target)
    return eqx.tree_at(lambda tb: tb.ic50_nM, table,
                       table.ic50_nM.at[drug_id, j].set(_NO_BLOCK_IC50))


def mitigation_check(cal: Calibration, targets: xr.Dataset, *, n_virtual: int = 512,
                     seed: int = 1) -> pd.DataFrame:
    """Peak population-mean ddQTcF and ddJTpc of each mixed blocker with its late-Na
    (ranolazine) or L-type Ca (verapamil) block as fitted and removed: with a positive
    mitigation weight, removing the block raises the prediction."""
    rows = []
    base = targets.base_mean.to_series()
    table = cal.library.table()
    for drug, target in (("ranolazine", "INaL"), ("verapamil", "ICaL"),
                         ("quinidine", "INaL"), ("quinidine", "ICaL")):
        if drug not in targets.drug.values or drug not in cal.library:
            continue
        design = CohortDesign(targets, cal.library, cal.variability, n_virtual, seed, [drug])
        row = {"drug": drug, "block_removed": target}
        for tag, tab in (("as_fitted", table),
                         ("without", without_block(table, cal.library.index(drug), target))):
            sim = simulate_effects(design, tab, cal.emap, cal.variability, base,
                                   cal.sensitivity).mean(axis=2)[0]
            row[f"peak_ddQTcF_{tag}"] = float(np.nanmax(sim[:, 0]))
            row[f"peak_ddJTpc_{tag}"] = float(np.nanmax(sim[:, 4]))
        rows.append(row)
    return pd.DataFrame(rows)


def peak_sd_table(cal: Calibration, targets: xr.Dataset, *, n_virtual: int = 512,
                  seed: int = 1, pred: xr.Dataset | None = None) -> pd.DataFrame:
    """Between-subject SD of ddQTcF at each drug's observed peak time: simulated (PK and PD
    variability of the calibration, effect space; no measurement noise) against the
    table's SD over subjects (which also holds the measurement and within-subject noise of
    a double difference: the SD under the weakest drug, ``resid_sd``, estimates it).
    ``pred``: :func:`predicted_time_courses` of ``cal`` if already computed."""
    if pred is None:
        pred = predicted_time_courses(cal, targets, n_virtual=n_virtual, seed=seed)
    sd = targets.dd_sd.sel(endpoint="QTcF")
    weakest = _weakest_drug(targets)
    rows = []
    for d in pred.drug.values:
        m = targets.dd_mean.sel(drug=d, endpoint="QTcF").values
        j = int(np.nanargmax(m))
        obs = float(sd.sel(drug=d).values[j])
        sim = float(pred.sim_sd.sel(drug=d, endpoint="QTcF").values[j])
        resid = float(sd.sel(drug=weakest).values[j])
        tot = float(np.hypot(sim, resid))
        rows.append({"drug": str(d), "peak_time_h": float(targets.time.values[j]),
                     "obs_sd": obs, "sim_sd": sim, "resid_sd": resid,
                     "sim_plus_resid_sd": tot, "ratio_sim": sim / obs,
                     "ratio_sim_plus_resid": tot / obs})
    return pd.DataFrame(rows)
