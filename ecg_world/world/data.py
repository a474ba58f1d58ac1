"""Training data of the world model: fixed-length strips and (pre, action, post) pairs.

**The strip.** 4.096 s at 250 Hz = 1024 samples per lead, from the start of the cohort's
segment (its first R peak is at 0.25 s, so every strip is R-aligned the same way). Why:

- at least 4 s holds 3 full beats at 45 bpm and 5-7 at 70-100 bpm, enough for the median beat
  that :func:`ecg_world.intervals.measure_intervals` reads QT from;
- 250 Hz is the cohort's native rate (no resampling of the training data) and resolves QRS
  onset/offset to 4 ms; LUDB's 500 Hz records are decimated by 2 (anti-aliased);
- 1024 = 2^10 samples halve cleanly through the autoencoder's five stride-2 convolutions
  (1024 -> 32 positions x 8 channels = a 256-number latent).

**Leads:** II always (the rhythm lead, clear P waves, the QT lead of most thorough-QT
studies), plus V2 and V5 where the cohort has them (the precordial leads in which IKr block
shows first and T waves are largest). :func:`choose_leads` picks them; a cohort without lead II
is a ``ValueError``.

**Pairs:** every cell of the cohort (patient x action x time after dose) gives one example:
the patient's pre-dose strip, the action (drug, dose, time since dose; the drug by its
pharmacology, see :func:`action_features`) and the post-dose strip. Splits are the cohort's
patient-level splits (``ECGBatch.split``), never re-drawn.

**The truth is not the anchor.** The energy anchor (:mod:`ecg_world.world.anchor`) sees only the
pre strip and the population pharmacology. The post strips it is compared with have, beyond it:

1. **PK/PD random effects** of each virtual patient (``eta_pk`` on exposure, elimination and
   absorption; ``eta_pd`` on QT sensitivity; drawn by ``ecg-world synth``); the anchor uses
   the typical patient (``eta = 0``).
2. **Recording noise** (white, baseline wander, mains; the cohort's documented levels), which
   the anchor's fit has to see through.
3. **Beat-to-beat and morphology variation beyond McSharry's parametric map**, added here to
   the truth (pre and post strips alike, seeded per patient and cell; :func:`perturb_truth`),
   because the cohort's beats are identical within a segment:

   - beat-to-beat amplitude: each beat scaled by ``1 + 0.05 N(0, 1)`` (linear between R peaks);
   - respiratory amplitude modulation ``1 + 0.04 sin(2 pi f t + phi)``, f ~ U(0.2, 0.33) Hz
     (the electrical axis moves with breathing);
   - beat-to-beat RR jitter: each beat's R-to-R segment is stretched in time by
     ``1 + 0.015 N(0, 1)`` (the strip keeps its length; the QT follows its own beat);
   - a U wave, per patient: a Gaussian of SD 35 ms and amplitude U(0, 0.06) mV x the lead's
     T-wave sign, peaking 60 ms after each T end (R + QT - QRS/2 + 60 ms). The McSharry model
     has five waves and no U wave, so no anchor fit can express it.

None of these enter the anchor's model or its pharmacology.
"""

from __future__ import annotations

import dataclasses
import hashlib

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from ..actions import Action
from ..pharmacology import Pharmacology, channel_block, concentrations, drug_effects

__all__ = ["StripSpec", "choose_leads", "PairSet", "pairs_from_batch", "action_features",
           "perturb_truth", "N_FEATURES", "strips_from_record"]

#: precordial leads used when present, after lead II
OPTIONAL_LEADS = ("V2", "V5")


@dataclasses.dataclass(frozen=True)
class StripSpec:
    """The strip: ``n_samples`` at ``sampling_rate`` Hz of ``leads`` (see the module docstring)."""

    sampling_rate: float = 250.0
    n_samples: int = 1024
    leads: tuple[str, ...] = ("II", "V2")

    def __post_init__(self):
        if "II" not in self.leads or self.leads[0] != "II":
            raise ValueError(f"the strip's first lead must be II (got {self.leads})")
        if self.n_samples % 32:
            raise ValueError(f"n_samples must be a multiple of 32 (got {self.n_samples})")

    @property
    def duration_s(self) -> float:
        return self.n_samples / self.sampling_rate

    def to_dict(self) -> dict:
        return {"sampling_rate": self.sampling_rate, "n_samples": self.n_samples,
                "leads": list(self.leads)}

    @classmethod
    def from_dict(cls, d) -> StripSpec:
        return cls(float(d["sampling_rate"]), int(d["n_samples"]), tuple(d["leads"]))


def choose_leads(available) -> tuple[str, ...]:
    """Lead II plus V2/V5 where available; ``ValueError`` without lead II."""
    available = [str(a) for a in available]
    if "II" not in available:
        raise ValueError(f"the world model needs lead II; the data have leads {available}")
    return ("II",) + tuple(ld for ld in OPTIONAL_LEADS if ld in available)


#: length of :func:`action_features`
N_FEATURES = 17


def action_features(pharm: Pharmacology, action: Action) -> Float[Array, "*batch 17"]:
    """Continuous pharmacology of an action, the diffusion model's condition (pure JAX).

    For the typical patient (population PK/PD): fractional block at the effect site (5
    targets) and at the slow tolerance site (5), the shared map's ECG effects (fractional QT,
    PR, QRS change and heart-rate change / 60 bpm), ``log1p`` of the dose (mg) and of the
    plasma concentration (ng/mL), and the time since dose / 24 h. A drug added as JSON gets
    these from its own IC50s and PK, so it is a valid condition without retraining.
    """
    def one(a: Action):
        c, ce, ct = concentrations(pharm.table, a, None, pharm.emap.ktol_per_h)
        be = channel_block(pharm.table, a.drug, ce)
        bt = channel_block(pharm.table, a.drug, ct)
        e = drug_effects(pharm.table, pharm.emap, a)
        eff = jnp.stack([e.qt_frac, e.pr_frac, e.qrs_frac, e.hr_bpm / 60.0])
        rest = jnp.stack([jnp.log1p(a.dose_mg) / 5.0, jnp.log1p(jnp.maximum(c, 0.0)) / 5.0,
                          a.time_h / 24.0])
        return jnp.concatenate([be, bt, eff, rest]).astype(jnp.float32)

    flat = jax.tree_util.tree_map(lambda x: jnp.reshape(x, (-1,)), action)
    out = jax.vmap(one)(Action(flat.drug, flat.dose_mg, flat.time_h, check=False))
    return out.reshape(jnp.shape(action.drug) + (N_FEATURES,))


_action_features_jit = eqx.filter_jit(action_features)


class PairSet(eqx.Module):
    """(pre strip, action, post strip) examples; ``N`` pairs, ``L`` leads, ``S`` samples.

    ``features`` are :func:`action_features`; ``truth_*`` the exact post-dose intervals of the
    cohort (ms); ``split`` 0/1/2 = train/val/test (the cohort's, per patient).
    """

    pre: Float[Array, "N L S"]
    post: Float[Array, "N L S"]
    drug: Int[Array, " N"]
    dose_mg: Float[Array, " N"]
    time_h: Float[Array, " N"]
    features: Float[Array, "N F"]
    patient: Int[Array, " N"]
    split: Int[Array, " N"]
    truth_rr: Float[Array, " N"]
    truth_pr: Float[Array, " N"]
    truth_qrs: Float[Array, " N"]
    truth_qt: Float[Array, " N"]
    truth_qtcf: Float[Array, " N"]
    pre_qtcf: Float[Array, " N"]
    spec: StripSpec = eqx.field(static=True)
    drug_names: tuple[str, ...] = eqx.field(static=True)

    @property
    def n(self) -> int:
        return int(self.pre.shape[0])

    def select(self, index) -> PairSet:
        idx = np.asarray(index)
        return jax.tree_util.tree_map(lambda x: x[idx], self)

    def split_index(self, name: str) -> np.ndarray:
        from ..batch import SPLITS

        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; valid: {list(SPLITS)}")
        return np.flatnonzero(np.asarray(self.split) == SPLITS.index(name))

    @property
    def action(self) -> Action:
        return Action(self.drug, self.dose_mg, self.time_h, self.drug_names, check=False)


def _rng(seed: int, *parts) -> np.random.Generator:
    h = hashlib.sha256(repr((int(seed),) + tuple(int(p) for p in parts)).encode()).digest()
    return np.random.default_rng(int.from_bytes(h[:8], "little"))


def perturb_truth(x: np.ndarray, *, sampling_rate: float, first_r_s: float, rr_ms: float,
                  qt_ms: float, qrs_ms: float, patient_rng: np.random.Generator,
                  cell_rng: np.random.Generator, t_sign: np.ndarray) -> np.ndarray:
    """Add the documented beat-to-beat and morphology variation to one truth strip (lead, time).

    See the module docstring for the four terms. `patient_rng` draws what belongs to the
    patient (U-wave amplitude; the same generator state must be used for all of a patient's
    strips), `cell_rng` what varies strip by strip. `t_sign` (lead,) is +1/-1 for the sign of
    each lead's T wave.
    """
    n_l, n = x.shape
    t = np.arange(n) / sampling_rate
    rr = rr_ms / 1000.0
    n_beats = int(np.ceil((t[-1] - first_r_s) / rr)) + 3
    r_times = first_r_s + rr * np.arange(-1, n_beats - 1)
    # 3. RR jitter: a piecewise-linear time warp that stretches every R-R segment
    stretch = 1.0 + 0.015 * cell_rng.standard_normal(n_beats - 1)
    warped = np.concatenate([[r_times[0]], r_times[0] + np.cumsum(rr * stretch)])
    warped += r_times[1] - warped[1]  # the first R in the strip stays where it is
    src_t = np.interp(t, warped, r_times)  # output time -> time in the unperturbed strip
    y = np.stack([np.interp(src_t, t, x[i]) for i in range(n_l)])
    # 1. beat amplitude, linear between the (warped) R peaks; 2. respiratory modulation
    g = 1.0 + 0.05 * cell_rng.standard_normal(n_beats)
    f = cell_rng.uniform(0.2, 0.33)
    ph = cell_rng.uniform(0, 2 * np.pi)
    gain = np.interp(t, warped, g) * (1.0 + 0.04 * np.sin(2 * np.pi * f * t + ph))
    y = y * gain[None]
    # 4. U wave after every T end (per patient amplitude)
    amp = patient_rng.uniform(0.0, 0.06)
    t_u = warped + (qt_ms - 0.5 * qrs_ms) / 1000.0 + 0.06
    u = np.exp(-0.5 * ((t[:, None] - t_u[None, :]) / 0.035) ** 2).sum(axis=1)
    return (y + amp * t_sign[:, None] * u[None]).astype(np.float32)


def _t_sign(signals: np.ndarray, first_r_s: float, rr_ms: np.ndarray, fs: float) -> np.ndarray:
    """+1/-1 per lead: the sign of the T wave's largest deflection in the first beat."""
    x = signals
    i0 = int(round((first_r_s + 0.15) * fs))
    i1 = int(round((first_r_s + 0.5 * float(np.median(rr_ms)) / 1000.0 + 0.25) * fs))
    seg = x[..., i0:max(i1, i0 + 2)]
    base = np.median(x, axis=-1, keepdims=True)
    dev = seg - base
    k = np.argmax(np.abs(dev), axis=-1)
    s = np.sign(np.take_along_axis(dev, k[..., None], axis=-1)[..., 0])
    return np.where(s == 0, 1.0, s)


def pairs_from_batch(batch, pharm: Pharmacology, spec: StripSpec | None = None, *,
                     seed: int = 0, perturb: bool = True,
                     post_realization: int = 0) -> PairSet:
    """All (pre, action, post) pairs of an :class:`ecg_world.batch.ECGBatch`.

    `pharm` must be the pharmacology of the batch's drug library (its actions' ids index
    it). `spec` defaults to 1024 samples at the batch's rate with :func:`choose_leads`.
    `perturb` adds :func:`perturb_truth` (seeded by `seed`, the patient and the cell).
    `post_realization` > 0 redraws the post strips' strip-by-strip variation (beat amplitude,
    respiration, RR jitter) from another stream, keeping the patient's draws (U wave), the
    pre strips and the recording noise: a second realization of the same truth, the reference
    for what a perfect model could match (:mod:`benchmarks.ecg_world_model`).
    """
    if int(post_realization) < 0:
        raise ValueError(f"post_realization must be >= 0 (got {post_realization})")
    fs = float(batch.sampling_rate_hz)
    if spec is None:
        spec = StripSpec(sampling_rate=fs, leads=choose_leads(batch.lead_names))
    if abs(fs - spec.sampling_rate) > 1e-6:
        raise ValueError(f"cohort sampled at {fs} Hz, the strip at {spec.sampling_rate} Hz")
    missing = [ld for ld in spec.leads if ld not in batch.lead_names]
    if missing:
        raise ValueError(f"the cohort lacks leads {missing} (has {list(batch.lead_names)})")
    if tuple(pharm.library.names) != tuple(batch.library.names):
        raise ValueError(f"the pharmacology's drugs {pharm.library.names} are not the cohort's "
                         f"{batch.library.names}")
    n_s = batch.signals.shape[-1]
    if n_s < spec.n_samples:
        raise ValueError(f"cohort segments have {n_s} samples ({n_s / fs:.2f} s): too short; "
                         f"a strip needs "
                         f"{spec.n_samples} ({spec.duration_s:.3f} s): synthesize with "
                         f"--duration >= {spec.duration_s}")
    li = [batch.lead_names.index(ld) for ld in spec.leads]
    cells = batch.flatten()
    pre = np.asarray(cells.baseline_signals)[:, li, :spec.n_samples]
    post = np.asarray(cells.signals)[:, li, :spec.n_samples]
    keep = np.asarray(cells.valid) & np.all(np.isfinite(post), axis=(1, 2))
    first_r = float(batch.attrs.get("first_r_peak_s", 0.25))
    patient = np.asarray(cells.patient)
    pid = np.asarray(batch.patient_id)[patient]
    iv, biv = cells.intervals, cells.baseline_intervals
    if perturb:
        sign = _t_sign(np.asarray(batch.baseline_signals)[:, li], first_r,
                       np.asarray(batch.baseline_intervals.rr), fs)  # (P, L)
        pre_p = np.empty_like(pre)
        post_p = np.empty_like(post)
        pre_done: dict[int, np.ndarray] = {}
        redraw = (int(post_realization),) if post_realization else ()  # 0: the default stream
        for j in range(pre.shape[0]):
            p = int(patient[j])
            if p not in pre_done:
                pre_done[p] = perturb_truth(
                    pre[j], sampling_rate=fs, first_r_s=first_r, rr_ms=float(biv.rr[j]),
                    qt_ms=float(biv.qt[j]), qrs_ms=float(biv.qrs[j]),
                    patient_rng=_rng(seed, pid[j], 0), cell_rng=_rng(seed, pid[j], 1, -1),
                    t_sign=sign[p])
            pre_p[j] = pre_done[p]
            if keep[j]:
                post_p[j] = perturb_truth(
                    post[j], sampling_rate=fs, first_r_s=first_r, rr_ms=float(iv.rr[j]),
                    qt_ms=float(iv.qt[j]), qrs_ms=float(iv.qrs[j]),
                    patient_rng=_rng(seed, pid[j], 0),
                    cell_rng=_rng(seed, pid[j], 2, j, *redraw),
                    t_sign=sign[p])
        pre, post = pre_p, post_p
    idx = np.flatnonzero(keep)
    act = cells.action
    feats = np.asarray(_action_features_jit(pharm, Action(act.drug, act.dose_mg, act.time_h,
                                                          check=False)))
    return PairSet(
        pre=jnp.asarray(pre[idx]), post=jnp.asarray(post[idx]),
        drug=jnp.asarray(np.asarray(act.drug)[idx]),
        dose_mg=jnp.asarray(np.asarray(act.dose_mg)[idx]),
        time_h=jnp.asarray(np.asarray(act.time_h)[idx]),
        features=jnp.asarray(feats[idx]), patient=jnp.asarray(pid[idx].astype(np.int32)),
        split=jnp.asarray(np.asarray(cells.split)[idx]),
        truth_rr=jnp.asarray(np.asarray(iv.rr)[idx]), truth_pr=jnp.asarray(np.asarray(iv.pr)[idx]),
        truth_qrs=jnp.asarray(np.asarray(iv.qrs)[idx]),
        truth_qt=jnp.asarray(np.asarray(iv.qt)[idx]),
        truth_qtcf=jnp.asarray(np.asarray(iv.qtcf)[idx]),
        pre_qtcf=jnp.asarray(np.asarray(biv.qtcf)[idx]),
        spec=spec, drug_names=tuple(batch.library.names))


def strips_from_record(signal: np.ndarray, lead_names, sampling_rate: float,
                       spec: StripSpec, *, start_s: float = 0.0) -> np.ndarray:
    """One strip (lead, time) from a recording (lead, time) in mV at any rate.

    Resamples to the strip's rate (FFT resampling, anti-aliased), selects the spec's leads and
    cuts ``spec.n_samples`` from `start_s`. Clear ``ValueError`` for a missing lead, NaN/inf
    samples or a record too short for one strip.
    """
    from scipy.signal import resample_poly

    x = np.asarray(signal, np.float64)
    names = [str(n) for n in lead_names]
    if x.ndim != 2 or x.shape[0] != len(names):
        raise ValueError(f"record must be (lead, time) with {len(names)} leads; got {x.shape}")
    missing = [ld for ld in spec.leads if ld not in names]
    if missing:
        raise ValueError(f"record lacks leads {missing} (has {names}); the model was trained on "
                         f"{list(spec.leads)}")
    x = x[[names.index(ld) for ld in spec.leads]]
    if not np.all(np.isfinite(x)):
        bad = int((~np.isfinite(x)).sum())
        raise ValueError(f"record has {bad} NaN/inf samples in leads {list(spec.leads)}; "
                         "repair them first (ecg_world.records.repair_nan)")
    fs = float(sampling_rate)
    need = (start_s + spec.duration_s) * fs
    if x.shape[1] < need - 1e-6:
        raise ValueError(f"record too short for one strip: {x.shape[1] / fs:.2f} s, need "
                         f"{start_s + spec.duration_s:.3f} s ({spec.duration_s:.3f} s strip "
                         f"from {start_s} s)")
    if abs(fs - spec.sampling_rate) > 1e-6:
        from fractions import Fraction

        fr = Fraction(spec.sampling_rate / fs).limit_denominator(1000)
        x = resample_poly(x, fr.numerator, fr.denominator, axis=1)
    i0 = int(round(start_s * spec.sampling_rate))
    out = x[:, i0:i0 + spec.n_samples]
    if out.shape[1] < spec.n_samples:
        raise ValueError("record too short for one strip after resampling")
    return out.astype(np.float32)
