"""Mechanistic pharmacology shared by all drugs: oral PK -> free concentration -> channel block
-> ONE channel-block-to-ECG map -> McSharry parameters.

Pure JAX, ``jit``/``vmap``/``grad``-able; drugs are rows of a :class:`~ecg_world.drugs.DrugTable`
indexed by an integer id, so one compiled function serves every drug.

**PK** (per drug, data in ``drugs.json``, refined by the calibration): linear compartments

    R' = -kr R                      (extended-release tablet, or the transit stage of an
                                     immediate-release one where the calibration's PK fit
                                     keeps it; absent otherwise)
    G' = kr R - ka G                (absorption depot; the dose starts here without a release stage)
    A' = ka G - ke A                (central amount, C = A / (V/F))
    Ce' = ke0 (C - Ce)              (effect site, biophase equilibration; drug property)
    Ct' = ktol (C - Ct)             (slow "tolerance" site of the baroreflex; shared rate)

solved exactly as ``expm(M (t - tlag)) x0`` (one 5x5 matrix exponential, robust when rates
coincide). Between-subject variability is log-normal: ``eta = (exposure, ke, ka)`` multiply
1/(V/F), ke and ka by ``exp(eta)``; a drug's ``exposure_scale`` (its own SD of log exposure,
from its concentrations, relative to the population's) scales the exposure effect.

**Block:** free molar concentration ``Cu = C[ng/mL] * 1000 / MW * fu`` (nM) at the effect site,
fractional block ``b = 1 / (1 + (IC50 / Cu)^h)`` per target (IKr, INaL, ICaL, INa, alpha1).
Hill coefficients default to 1 (drugs.json): the CiPA fits of shallow slopes (e.g. h = 0.59 for
quinidine at ICaL) are made at concentrations far above the clinical ones and extrapolate large
block at low concentration.

**Shared map** (:class:`EffectMap`; identical for all drugs, fitted by ``calibration.py``):

- repolarisation, in two parts: with ``K = b_IKr / (1 - b_IKr)`` (the relative rise of the
  IKr "resistance" 1/g_Kr, which equals the free concentration over IC50 for a Hill
  coefficient of 1), ``M = w_INaL b_INaL + w_ICaL b_ICaL`` (late-Na and L-type Ca block
  shorten the plateau) and ``S = qt_gain * exp(qt_curv * K) * exp(eta_pd)`` (``qt_curv`` > 0:
  convex as the repolarisation reserve runs out),

      early (J-Tpeak) part   dJT/QT = S * jt_share * (K - M)
      late (Tpeak-Tend) part dTT/QT = S * (1 - jt_share) * K
      dQT/QT = S * (K - jt_share * M)

  This is the multichannel signature of the SCR-002 study (Johannesen L et al., Clin
  Pharmacol Ther 2014;96:549-558; Johannesen L et al., Clin Pharmacol Ther 2016;99:214-223):
  hERG block prolongs both J-Tpeak and Tpeak-Tend, late-Na and Ca block shorten J-Tpeak only,
  so a mixed blocker (ranolazine, verapamil) still prolongs QTc through Tpeak-Tend while its
  J-Tpeak stays put. The calibration fits ``jt_share`` and the weights ``w`` to the study's
  J-Tpeak_c (``JTpc``) next to QTcF, so the mitigation terms are identified by the data, with
  a weak prior (:data:`ecg_world.calibration.MAP_PRIORS`) instead of a bound at zero;
- AV conduction: ``dPR/PR = pr_ICaL b_ICaL exp(pr_curv b_ICaL) + pr_INa b_INa``;
- ventricular conduction: ``dQRS/QRS = qrs_INa b_INa``;
- heart rate: vasodilation ``V = b_ICaL + w_alpha b_alpha1`` drives a baroreflex tachycardia
  that adapts: ``dHR = hr_gain (V(Ce) - tol V(Ct))`` (bpm).

**Placebo / diurnal course** (:class:`Diurnal`): a 24 h + 12 h harmonic series in the time
since the (morning) dose, zero at the pre-dose time -0.5 h, for HR (bpm) and the fractional
QTc, PR and QRS changes. It applies to every action, placebo included.

**McSharry realisation:** fractional changes act on the kernel's wave parameters
(see :func:`apply_effects`): the T wave's angle and width scale with QT, the P wave's angle
with PR, the Q/R/S widths and Q/S angles with QRS, and the heart rate moves RR. Drugs differ
only by PK and block: there is no per-drug ECG parameter anywhere. Two per-drug PK properties
are nevertheless informed by ECG data in the calibration (:mod:`ecg_world.calibration`): the
effect-site rate ``ke0`` (hysteresis, e.g. dofetilide's slow hERG binding) and the unbound
fraction, kept inside the range implied by the label's protein binding.

**Bounded response.** The fractional QT, PR and QRS changes of the map pass through a smooth
saturation (:func:`soft_bound`, :data:`RESPONSE_BOUNDS`) that is the identity to < 0.1% in the
calibrated range and keeps every interval positive and physiological at any dose.

**Explicit pharmacology, no silent wrong drug.** Every traceable function takes its drug
table (or the :class:`Pharmacology`) as an argument; there is no global default inside this
module (:func:`ecg_world.calibrated.default_pharmacology` resolves the committed one at the
public boundary). Table lookups use :meth:`~ecg_world.drugs.DrugTable.row`, which gives NaN
for an id outside the table instead of JAX's clamp to the last row; :func:`apply_action`
rejects an action of another library and concrete out-of-range values, and carries a
validity flag (``PatientParams.valid``) under tracing.

**References.** McSharry PE et al., IEEE Trans Biomed Eng 2003;50:289-294 (the kernel);
Sheiner LB et al., Clin Pharmacol Ther 1979;25:358-371 (effect compartment); Crumb WJ et al.,
J Pharmacol Toxicol Methods 2016;81:251-262 and Li Z et al., Circ Arrhythm Electrophysiol
2017;10:e004628 (channel potencies, multichannel block); Johannesen L et al., Clin Pharmacol
Ther 2014;96:549-558 (the SCR-002 study used for calibration).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float

from leads_jax.physics.mcsharry import McSharryECG

from .actions import Action, action_validity
from .drugs import TARGETS, DrugLibrary, DrugTable, dose_to_mg

N_TARGETS = len(TARGETS)
_IKR, _INAL, _ICAL, _INA, _ALPHA = range(N_TARGETS)
BASELINE_TIME_H = -0.5


class EffectMap(eqx.Module):
    """The one channel-block -> ECG map (all fields scalars; see the module docstring)."""

    qt_gain: Float[Array, ""]
    qt_curv: Float[Array, ""]
    w_inal: Float[Array, ""]
    w_ical: Float[Array, ""]
    pr_ical: Float[Array, ""]
    pr_curv: Float[Array, ""]
    pr_ina: Float[Array, ""]
    qrs_ina: Float[Array, ""]
    hr_gain: Float[Array, ""]
    w_alpha: Float[Array, ""]
    tol: Float[Array, ""]
    ktol_per_h: Float[Array, ""]
    jt_share: Float[Array, ""]

    @classmethod
    def default(cls, **overrides) -> EffectMap:
        """Defaults (the fit's starting point). ``jt_share`` defaults to 1 (mitigation acts on
        the whole QT), so a calibration file written before the two-part map reads as it was
        fitted, up to its ``qt_curv`` now acting on the hERG term alone (the same where the
        mitigation weights are about zero, as they were in those files)."""
        vals = dict(qt_gain=0.3, qt_curv=0.0, w_inal=0.5, w_ical=0.2, pr_ical=2.0, pr_curv=0.0,
                    pr_ina=0.5,
                    qrs_ina=0.5, hr_gain=60.0, w_alpha=0.3, tol=0.5, ktol_per_h=0.5,
                    jt_share=1.0)
        vals.update(overrides)
        return cls(**{k: jnp.asarray(v, jnp.float32) for k, v in vals.items()})

    def to_dict(self) -> dict[str, float]:
        return {k: float(getattr(self, k)) for k in self.__dataclass_fields__}


DIURNAL_ENDPOINTS = ("HR", "QTc", "PR", "QRS")


class Diurnal(eqx.Module):
    """Placebo/diurnal course: ``coef[endpoint, basis]`` on 24 h and 12 h harmonics.

    Endpoints: HR (bpm), QTc, PR, QRS (fractional changes). Zero at ``t = -0.5`` h.
    """

    coef: Float[Array, "4 4"]

    @classmethod
    def zero(cls) -> Diurnal:
        return cls(jnp.zeros((4, 4), jnp.float32))

    @staticmethod
    def basis(t_h):
        def phi(t):
            w = 2 * jnp.pi * t / 24.0
            return jnp.stack([jnp.cos(w) , jnp.sin(w), jnp.cos(2 * w), jnp.sin(2 * w)], -1)

        t = jnp.asarray(t_h, jnp.float32)
        return phi(t) - phi(jnp.asarray(BASELINE_TIME_H, jnp.float32))

    def __call__(self, t_h) -> Float[Array, "*t 4"]:
        return self.basis(t_h) @ self.coef.T


class Variability(eqx.Module):
    """Log-normal between-subject SDs: PK exposure (1/(V/F)), ke, ka; PD sensitivity."""

    omega_exposure: Float[Array, ""]
    omega_ke: Float[Array, ""]
    omega_ka: Float[Array, ""]
    omega_pd: Float[Array, ""]

    @classmethod
    def default(cls, **overrides) -> Variability:
        vals = dict(omega_exposure=0.3, omega_ke=0.2, omega_ka=0.3, omega_pd=0.3)
        vals.update(overrides)
        return cls(**{k: jnp.asarray(v, jnp.float32) for k, v in vals.items()})

    def sample(self, key, shape=()) -> tuple[Float[Array, "*s 3"], Float[Array, "*s"]]:
        """Draw ``(eta_pk[..., 3], eta_pd[...])`` from N(0, omega^2)."""
        k1, k2 = jax.random.split(key)
        om = jnp.stack([self.omega_exposure, self.omega_ke, self.omega_ka])
        eta_pk = jax.random.normal(k1, (*shape, 3)) * om
        eta_pd = jax.random.normal(k2, shape) * self.omega_pd
        return eta_pk, eta_pd

    def to_dict(self) -> dict[str, float]:
        return {k: float(getattr(self, k)) for k in self.__dataclass_fields__}


class EcgEffects(eqx.Module):
    """Changes to apply to a patient: fractional QT, PR, QRS and additive heart rate (bpm)."""

    qt_frac: Float[Array, "*b"]
    pr_frac: Float[Array, "*b"]
    qrs_frac: Float[Array, "*b"]
    hr_bpm: Float[Array, "*b"]


def _drug_eta(table: DrugTable, drug, eta_pk) -> Float[Array, "3"]:
    """A patient's PK random effects ``(exposure, ke, ka)`` for one drug: the exposure effect
    is scaled by the drug's ``exposure_scale`` (its own between-subject SD of log exposure
    relative to the population's)."""
    eta = jnp.zeros(3) if eta_pk is None else jnp.asarray(eta_pk)
    return eta.at[0].multiply(table.row("exposure_scale", drug))


def pk_states(
    table: DrugTable, action: Action, eta_pk=None, ktol_per_h=0.5
) -> Float[Array, "5"]:
    """PK state ``(R, G, A, Ce, Ct)`` (mg, mg, mg, mg/L, mg/L) of a scalar action at its time."""
    d = action.drug
    eta = _drug_eta(table, d, eta_pk)
    kr = table.row("release_per_h", d)
    ka = table.row("ka_per_h", d) * jnp.exp(eta[2])
    ke = table.row("ke_per_h", d) * jnp.exp(eta[1])
    v = table.row("v_over_f_l", d) * jnp.exp(-eta[0])
    ke0 = table.row("ke0_per_h", d)
    kt = jnp.asarray(ktol_per_h, jnp.float32)
    ir = jnp.isinf(kr)  # immediate release (NaN, an id outside the table, stays NaN)
    kr_ = jnp.where(ir, 0.0, kr)
    z = jnp.zeros(())
    m = jnp.stack([
        jnp.stack([-kr_, z, z, z, z]),
        jnp.stack([kr_, -ka, z, z, z]),
        jnp.stack([z, ka, -ke, z, z]),
        jnp.stack([z, z, ke0 / v, -ke0, z]),
        jnp.stack([z, z, kt / v, z, -kt]),
    ])
    dose = action.dose_mg * table.row("salt_factor", d)
    x0 = dose * jnp.stack([jnp.where(ir, 0.0, 1.0), jnp.where(ir, 1.0, 0.0), z, z, z])
    te = jnp.maximum(action.time_h - table.row("tlag_h", d), 0.0)
    x = jax.scipy.linalg.expm(m * te) @ x0
    return x.at[3:].set(jnp.where(x0.sum() > 0, x[3:], 0.0))


def concentrations(table: DrugTable, action: Action, eta_pk=None, ktol_per_h=0.5):
    """Total plasma, effect-site and tolerance-site concentrations (ng/mL) of a scalar action."""
    x = pk_states(table, action, eta_pk, ktol_per_h)
    v = table.row("v_over_f_l", action.drug) * jnp.exp(-_drug_eta(table, action.drug, eta_pk)[0])
    return x[2] / v * 1000.0, x[3] * 1000.0, x[4] * 1000.0


def free_nM(table: DrugTable, drug, conc_ng_ml):
    """Free (unbound) molar concentration in nM from total ng/mL."""
    return (conc_ng_ml * 1000.0 / table.row("molecular_weight", drug)
            * table.row("unbound_fraction", drug))


def channel_block(table: DrugTable, drug, conc_ng_ml) -> Float[Array, " target"]:
    """Fractional block (occupancy) per target (order :data:`~ecg_world.drugs.TARGETS`)."""
    cu = jnp.maximum(free_nM(table, drug, conc_ng_ml), 0.0)
    ic50 = table.row("ic50_nM", drug)
    h = table.row("hill", drug)
    # b = x^h / (1 + x^h), x = Cu / IC50, written to stay finite at Cu = 0
    logx = jnp.log(jnp.maximum(cu, 1e-30)) - jnp.log(ic50)
    return jnp.where(jnp.isnan(cu), jnp.nan, jnp.where(cu > 0, jax.nn.sigmoid(h * logx), 0.0))


#: bounds (low, high) of the drug's fractional QT, PR and QRS changes (:func:`soft_bound`):
#: the largest drug-induced changes reported in overdose and in thorough-QT positive
#: controls are well inside them (QT +60% is a QTc of ~650 ms; PR +50% is ~250 ms, a marked
#: first-degree AV block; QRS +50% a bundle-branch-like widening), and no interval can turn
#: negative at any dose. Inside the calibrated range (fractions below ~0.25) the bound
#: changes the map by less than 0.1% (order 6).
RESPONSE_BOUNDS: dict[str, tuple[float, float]] = {
    "qt": (-0.3, 0.6), "pr": (-0.3, 0.5), "qrs": (-0.3, 0.5)}
_BOUND_ORDER = 6


def soft_bound(f, lo: float, hi: float, n: int = _BOUND_ORDER):
    """Smooth saturation of a fractional change ``f`` to ``(lo, hi)`` (``lo < 0 < hi``):
    ``F g(|f| / F)`` with ``F = hi`` for ``f > 0`` and ``-lo`` below, ``g(r) = r / (1 +
    r^n)^(1/n)`` (identity for small ``r``, 1 as ``r -> inf``); written to stay exact for
    ``f = +-inf``; NaN stays NaN (a flagged invalid action)."""
    f = jnp.asarray(f)
    big = jnp.where(f >= 0, hi, -lo)
    r = jnp.abs(f) / big
    small = r <= 1.0
    rs = jnp.where(small, r, 1.0)
    rl = jnp.where(small, 1.0, r)
    g = jnp.where(small, rs / (1.0 + rs**n) ** (1.0 / n), 1.0 / (1.0 + rl ** (-n)) ** (1.0 / n))
    return jnp.sign(f) * big * g


def repolarisation_parts(
    emap: EffectMap, block_e: Float[Array, " target"], eta_pd=0.0
) -> tuple[Float[Array, ""], Float[Array, ""]]:
    """The early (J-Tpeak) and late (Tpeak-Tend) parts of the fractional QT change, before
    the response bound (see the module docstring); their sum is the QT change."""
    b_kr = jnp.minimum(block_e[_IKR], 0.99)
    k = b_kr / (1.0 - b_kr)
    m = emap.w_inal * block_e[_INAL] + emap.w_ical * block_e[_ICAL]
    s = emap.qt_gain * jnp.exp(emap.qt_curv * k) * jnp.exp(eta_pd)
    return s * emap.jt_share * (k - m), s * (1.0 - emap.jt_share) * k


def effects_from_block(
    emap: EffectMap, block_e: Float[Array, " target"], block_t: Float[Array, " target"],
    eta_pd=0.0,
) -> EcgEffects:
    """Apply the shared map to effect-site and tolerance-site block; the fractional QT, PR
    and QRS changes are bounded by :data:`RESPONSE_BOUNDS` (:func:`soft_bound`)."""
    jt, tt = repolarisation_parts(emap, block_e, eta_pd)
    qt = jt + tt
    b_cal = block_e[_ICAL]
    pr = emap.pr_ical * b_cal * jnp.exp(emap.pr_curv * b_cal) + emap.pr_ina * block_e[_INA]
    qrs = emap.qrs_ina * block_e[_INA]
    vaso_e = block_e[_ICAL] + emap.w_alpha * block_e[_ALPHA]
    vaso_t = block_t[_ICAL] + emap.w_alpha * block_t[_ALPHA]
    hr = emap.hr_gain * (vaso_e - emap.tol * vaso_t)
    return EcgEffects(soft_bound(qt, *RESPONSE_BOUNDS["qt"]),
                      soft_bound(pr, *RESPONSE_BOUNDS["pr"]),
                      soft_bound(qrs, *RESPONSE_BOUNDS["qrs"]), hr)


def drug_effects(
    table: DrugTable, emap: EffectMap, action: Action, eta_pk=None, eta_pd=0.0
) -> EcgEffects:
    """Drug part of the ECG change for one scalar action (no diurnal course)."""
    _, ce, ct = concentrations(table, action, eta_pk, emap.ktol_per_h)
    return effects_from_block(emap, channel_block(table, action.drug, ce),
                              channel_block(table, action.drug, ct), eta_pd)


def total_effects(
    table: DrugTable, emap: EffectMap, diurnal: Diurnal, action: Action, eta_pk=None,
    eta_pd=0.0,
) -> EcgEffects:
    """Drug effects plus the placebo/diurnal course at the action's time since dose."""
    e = drug_effects(table, emap, action, eta_pk, eta_pd)
    di = diurnal(action.time_h)
    return EcgEffects(e.qt_frac + di[1], e.pr_frac + di[2], e.qrs_frac + di[3],
                      e.hr_bpm + di[0])


# --------------------------------------------------------------------------------------
# McSharry realisation and the world-model entry point
# --------------------------------------------------------------------------------------

_P, _Q, _R, _S, _T = range(5)


def qrs_anchor(ti, bi):
    """QRS-onset anchor angle ``theta_Q - 3 b_Q`` (the kernel stretches the T wave about it)."""
    return ti[..., _Q] - 3.0 * bi[..., _Q]


def scale_waves(model, qt_frac, pr_frac, qrs_frac):
    """Realise fractional interval changes on McSharry wave parameters (60-bpm beat).

    - QRS: Q and S angles and the Q, R, S widths scale by ``1 + qrs_frac`` about R (amplitudes
      by ``(1 + qrs_frac)^-2`` so that wave heights ``~ a b^2`` stay put);
    - PR: the P wave's distance from the QRS-onset anchor and its width scale by ``1 + pr_frac``;
    - QT: the T wave's distance from the anchor and its width scale by ``1 + qt_frac``.

    With the kernel's ``hr_scaling="physiological"`` (P, Q, R, S fixed in time, T stretched
    about the same anchor by RR^(1/3)) the reference PR, QRS and QT then change by close to
    the same fractions at any rate. Pure JAX; works on batched models (``(..., 5)`` fields).
    """
    ti, ai, bi = model.ti, model.ai, model.bi
    fq = 1.0 + jnp.asarray(qrs_frac)[..., None]
    fp = 1.0 + jnp.asarray(pr_frac)
    ft = 1.0 + jnp.asarray(qt_frac)
    qrs_mask = jnp.array([0.0, 1.0, 1.0, 1.0, 0.0])
    f = 1.0 + (fq - 1.0) * qrs_mask
    anchor0 = qrs_anchor(ti, bi)
    ti1 = ti * f
    bi1 = bi * f
    ai1 = ai / f**2
    anchor1 = qrs_anchor(ti1, bi1)
    tp = anchor1 + (ti[..., _P] - anchor0) * fp
    tt = anchor1 + (ti[..., _T] - anchor0) * ft
    ti1 = ti1.at[..., _P].set(tp).at[..., _T].set(tt)
    bi1 = bi1.at[..., _P].multiply(fp).at[..., _T].multiply(ft)
    ai1 = ai1.at[..., _P].divide(fp**2).at[..., _T].divide(ft**2)
    return McSharryECG(ti1, ai1, bi1)


class PatientParams(eqx.Module):
    """A virtual patient: McSharry waveform parameters (60-bpm beat), heart rate, random
    effects of the pharmacology (log-normal PK etas and PD sensitivity) and a validity flag
    (False after an invalid action: the other fields are then NaN)."""

    ecg: eqx.Module
    heart_rate: Float[Array, "*b"]
    eta_pk: Float[Array, "*b 3"]
    eta_pd: Float[Array, "*b"]
    valid: Bool[Array, "*b"]

    def __init__(self, ecg, heart_rate, eta_pk, eta_pd, valid=None):
        self.ecg = ecg
        self.heart_rate = jnp.asarray(heart_rate, jnp.float32)
        self.eta_pk = jnp.asarray(eta_pk, jnp.float32)
        self.eta_pd = jnp.asarray(eta_pd, jnp.float32)
        self.valid = (jnp.ones(jnp.shape(self.heart_rate), bool) if valid is None
                      else jnp.asarray(valid, bool))


class Pharmacology(eqx.Module):
    """Everything :func:`apply_action` needs: the drug library (static: the drug ids of an
    :class:`~ecg_world.actions.Action` index it), its stacked :class:`DrugTable`, the shared
    map and the placebo course. A pytree: pass it to ``jit`` as an argument, and two
    pharmacologies with the same library run through one compilation.

    Build one with :meth:`from_library`; the calibrated one is
    :func:`ecg_world.calibrated.default_pharmacology` (or ``Calibration.pharmacology``)."""

    table: DrugTable
    emap: EffectMap
    diurnal: Diurnal
    library: DrugLibrary = eqx.field(static=True)

    def __check_init__(self):
        if tuple(self.table.names) != tuple(self.library.names):
            raise ValueError(f"drug table rows {self.table.names} are not the library's "
                             f"drugs {self.library.names}")

    @classmethod
    def from_library(cls, library: DrugLibrary, emap: EffectMap | None = None,
                     diurnal: Diurnal | None = None) -> Pharmacology:
        """A pharmacology on ``library`` (default map and no placebo course if not given)."""
        return cls(library.table(), emap if emap is not None else EffectMap.default(),
                   diurnal if diurnal is not None else Diurnal.zero(), library)


def apply_effects(params: PatientParams, eff: EcgEffects, *, hr_bounds=(30.0, 200.0)):
    """Apply ECG changes to a patient (pure JAX)."""
    ecg = scale_waves(params.ecg, eff.qt_frac, eff.pr_frac, eff.qrs_frac)
    hr = jnp.clip(params.heart_rate + eff.hr_bpm, *hr_bounds)
    return PatientParams(ecg, hr, params.eta_pk, params.eta_pd, params.valid)


def check_action(action: Action, pharm: Pharmacology) -> None:
    """Checks of an action against a pharmacology that need no values (its library) and, for
    concrete values, the values themselves (id inside the table, dose inside the drug's
    plausible range). Raises ``ValueError``; traced values are left to the validity flag."""
    if action.library is not None and tuple(action.library) != tuple(pharm.library.names):
        raise ValueError(
            f"the action refers to drug library {list(action.library)} but the pharmacology's "
            f"is {list(pharm.library.names)}: build the action with "
            "make_action(..., library=pharm.library), or apply it with the pharmacology of "
            "its own library")
    d, dose = action.drug, action.dose_mg
    if isinstance(d, jax.core.Tracer):
        return
    ids = np.asarray(d)
    lib = pharm.library
    n = lib.names
    if np.any(ids < 0) or np.any(ids >= len(n)):
        raise ValueError(f"drug id {ids.tolist()} outside the pharmacology's drug table: valid "
                         f"ids 0..{len(n) - 1} ({', '.join(n)})")
    if isinstance(dose, jax.core.Tracer):
        return
    mg = np.asarray(dose, float)
    ids = np.broadcast_to(ids, mg.shape)
    lo, hi = (np.array([dose_to_mg(dr.plausible_dose_range[k], dr.dose_unit)
                        for dr in lib.drugs.values()]) for k in (0, 1))
    bad = (mg > 0) & ((mg < lo[ids] * (1 - 1e-6)) | (mg > hi[ids] * (1 + 1e-6)))
    if np.any(bad):
        i = tuple(np.argwhere(bad)[0])
        lib.drugs[n[int(ids[i])]].check_dose(float(mg[i]), "mg")


def apply_action(
    params: PatientParams, action: Action, t=None, pharm: Pharmacology | None = None
) -> PatientParams:
    """The patient's parameters ``t`` hours after taking ``action`` (pure JAX, vmappable).

    **Arguments:** ``params`` baseline patient; ``action`` drug id and dose; ``t`` time since
    dose in hours (default: ``action.time_h``); ``pharm`` the pharmacology (drug library and
    table, shared map, placebo course). It is required: resolve a default outside traced
    code, e.g. ``pharm = ecg_world.default_pharmacology()`` (the committed calibration), and
    pass it in, so that a caller's ``jit`` sees it as an argument, not as constants.

    **Checks:** the action's library must be the pharmacology's (``ValueError``, also under
    tracing: it is static); concrete ids and doses are checked against the table and each
    drug's plausible dose range (``ValueError``); under tracing an invalid action (id outside
    the table, negative/NaN dose or time, dose above the drug's range) gives
    ``valid = False`` and NaN parameters, never a clamped drug.

    **Returns:** ``PatientParams`` with the McSharry parameters and heart rate changed by the
    placebo/diurnal course plus the drug's effects (PK -> block -> shared map).
    """
    if pharm is None:
        raise ValueError("apply_action needs a pharmacology: pass pharm=ecg_world."
                         "default_pharmacology() (the committed calibration), "
                         "Calibration.pharmacology, or Pharmacology.from_library(...)")
    if not isinstance(pharm, Pharmacology):
        raise TypeError(f"pharm must be a Pharmacology, got {type(pharm).__name__}")
    if t is not None:
        action = action.at(t)
    check_action(action, pharm)
    return _apply_action(params, action, pharm)


@eqx.filter_jit
def _apply_action(params: PatientParams, action: Action, pharm: Pharmacology) -> PatientParams:
    # jitted so that eager calls (notebooks, loops) run as one program instead of
    # op by op (about 0.7 s per call for the 5x5 expm and the wave scaling); inside a
    # caller's jit/vmap it is simply inlined
    valid = action_validity(action, pharm.table) & params.valid
    nan = jnp.float32(jnp.nan)
    action = Action(action.drug, jnp.where(valid, action.dose_mg, nan),
                    jnp.where(valid, action.time_h, nan), action.library, check=False)
    eff = total_effects(pharm.table, pharm.emap, pharm.diurnal, action, params.eta_pk,
                        params.eta_pd)
    out = apply_effects(params, eff)
    ecg = jax.tree_util.tree_map(lambda x: jnp.where(valid[..., None], x, nan), out.ecg)
    return PatientParams(ecg, jnp.where(valid, out.heart_rate, nan), out.eta_pk, out.eta_pd,
                         valid)
