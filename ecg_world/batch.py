"""The typed hand-off between the synthetic cohorts and the world model: :class:`ECGBatch`.

An :class:`ECGBatch` is an ``eqx.Module`` (a pytree of arrays, so it goes through ``jit``,
``vmap`` and ``jax.sharding`` as it is) holding a grid of cells ``(patient, action,
time_after_dose)``: for each cell the rendered multi-lead ECG segment, its exact intervals
(named fields, never a positional vector), the action that produced it, the drug's plasma
concentration and channel block at that time, the risk labels and the data flags; for each
patient the baseline (pre-dose, no drug) segment and intervals, the random effects and the
split. It converts to and from the cohort netCDF of ``ecg-world synth``
(:meth:`ECGBatch.to_dataset` / :meth:`ECGBatch.from_dataset`, :meth:`ECGBatch.to_netcdf` /
:meth:`ECGBatch.from_netcdf`); the drug library that the drug ids index travels with it
(:attr:`ECGBatch.library`, stored as JSON in the netCDF attributes).

**Shapes** (``P`` patients, ``A`` actions, ``T`` times after dose, ``L`` leads, ``S`` samples):

==================================  ===================  ========================================
field                               shape                units / meaning
==================================  ===================  ========================================
``signals``                         (P, A, T, L, S)      mV, R-aligned (first R peak at
                                                         ``first_r_peak_s``), noise added
``baseline_signals``                (P, L, S)            mV, the patient before the dose
``intervals``                       :class:`Intervals`   (P, A, T); ms, heart rate in bpm
``baseline_intervals``              :class:`Intervals`   (P,)
``dqtcf``                           (P, A, T)            ms, QTcF minus the baseline QTcF
``labels``                          :class:`RiskLabels`  (P, A, T) booleans
``drug``, ``dose_mg``, ``time_h``   (P, A, T)            id into ``library``, mg of the
                                                         labelled product, h since dose
``dose_multiplier``                 (P, A)               dose / the drug's standard dose
``conc_ng_ml``                      (P, A, T)            total plasma concentration, ng/mL
``block``                           (P, A, T, target)    fractional block per target
                                                         (:data:`ecg_world.drugs.TARGETS`)
``ti``, ``ai``, ``bi``              (P, A, T, 5)         McSharry wave parameters of the beat
``baseline_ti/ai/bi``               (P, 5)               the same at baseline
``eta_pk``, ``eta_pd``              (P, 3), (P,)         PK (exposure, ke, ka) and PD effects
``long_qt``                         (P,)                 long-QT baseline drawn
``valid``                           (P, A, T)            the action was valid (else NaN data)
``plausible``                       (P, A, T)            every interval inside
                                                         :data:`PLAUSIBLE_RANGES`
``extrapolated``                    (P, A, T)            exposure outside the calibrated range
``split``                           (P,)                 index into :data:`SPLITS`
``patient_id``                      (P,)                 integer patient ids
``time_after_dose_h``               (T,)                 h
==================================  ===================  ========================================

Static (hashable) metadata: ``sampling_rate_hz``, ``lead_names``, ``action_names`` (the
``action`` coordinate, e.g. ``"dofetilide"``), ``library`` (:class:`~ecg_world.drugs.DrugLibrary`)
and ``attrs_json`` (the netCDF attributes: provenance, noise, seed, calibration).

:meth:`ECGBatch.flatten` gives the cells as one leading batch axis (:class:`ECGCells`), with
each cell's baseline segment next to it: the (pre, action, post) examples of a world model.
"""

from __future__ import annotations

import json
import pathlib

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr
from jaxtyping import Array, Bool, Float, Int

from leads_jax.physics.ecg_fiducials import qtc_bazett, qtc_fridericia

from .actions import Action
from .drugs import TARGETS, DrugLibrary

#: patient-level splits, in the order of the integer codes of :attr:`ECGBatch.split`
SPLITS: tuple[str, ...] = ("train", "val", "test")

#: interval fields of :class:`Intervals` -> (netCDF variable name, units)
INTERVAL_VARIABLES: dict[str, tuple[str, str]] = {
    "rr": ("RR", "ms"), "pr": ("PR", "ms"), "qrs": ("QRS", "ms"), "qt": ("QT", "ms"),
    "qtcf": ("QTcF", "ms"), "qtcb": ("QTcB", "ms"), "heart_rate": ("heart_rate", "bpm"),
}

#: physiological ranges (inclusive) of simulated intervals; a cell outside any of them is
#: flagged ``plausible = False`` (kept as data, never dropped silently). Adult ranges of
#: resting and drug-challenged ECGs: RR 250-2500 ms (24-240 bpm), PR 60-350 ms (beyond:
#: high-degree AV block), QRS 40-200 ms, QT 200-700 ms, QTcF/QTcB 250-700 ms (Rautaharju PM
#: et al., AHA/ACCF/HRS recommendations, Circulation 2009;119:e241-e250; QTc above 600 ms is
#: rare even in overdose).
PLAUSIBLE_RANGES: dict[str, tuple[float, float]] = {
    "rr": (250.0, 2500.0), "pr": (60.0, 350.0), "qrs": (40.0, 200.0), "qt": (200.0, 700.0),
    "qtcf": (250.0, 700.0), "qtcb": (250.0, 700.0), "heart_rate": (24.0, 240.0),
}

#: risk labels: name -> description (the thresholds are in :meth:`RiskLabels.from_intervals`)
RISK_LABELS: dict[str, str] = {
    "qtcf_ge_500": "QTcF >= 500 ms",
    "dqtcf_ge_60": "QTcF minus the patient's baseline QTcF >= 60 ms",
    "torsade_risk": "qtcf_ge_500 or dqtcf_ge_60",
    "qtcf_gt_450": "QTcF > 450 ms (ICH E14)",
    "qtcf_gt_480": "QTcF > 480 ms (ICH E14)",
    "dqtcf_gt_30": "QTcF minus baseline > 30 ms (ICH E14)",
    "pr_gt_200": "PR > 200 ms (first-degree AV block)",
    "qrs_ge_120": "QRS >= 120 ms (ventricular conduction delay)",
    "hr_lt_50": "heart rate < 50 bpm (bradycardia)",
    "hr_gt_100": "heart rate > 100 bpm (tachycardia)",
}


class Intervals(eqx.Module):
    """ECG intervals as named fields (any common leading shape): RR, PR, QRS, QT, QTcF
    (Fridericia), QTcB (Bazett) in ms and the heart rate in bpm. NaN marks a cell whose
    action was invalid."""

    rr: Float[Array, "*b"]
    pr: Float[Array, "*b"]
    qrs: Float[Array, "*b"]
    qt: Float[Array, "*b"]
    qtcf: Float[Array, "*b"]
    qtcb: Float[Array, "*b"]
    heart_rate: Float[Array, "*b"]

    @classmethod
    def from_rr_pr_qrs_qt(cls, rr, pr, qrs, qt) -> Intervals:
        """Intervals from RR, PR, QRS, QT (ms); the corrections by the package's one QTc
        definition (:mod:`leads_jax.physics.ecg_fiducials`)."""
        rr, pr, qrs, qt = (jnp.asarray(x) for x in (rr, pr, qrs, qt))
        return cls(rr, pr, qrs, qt, qtc_fridericia(qt, rr), qtc_bazett(qt, rr), 60000.0 / rr)

    def plausible(self) -> Bool[Array, "*b"]:
        """True where every interval lies inside :data:`PLAUSIBLE_RANGES` (False for NaN)."""
        ok = jnp.ones(jnp.shape(self.rr), bool)
        for k, (lo, hi) in PLAUSIBLE_RANGES.items():
            v = getattr(self, k)
            ok = ok & (v >= lo) & (v <= hi)
        return ok

    def out_of_range(self) -> dict[str, Bool[Array, "*b"]]:
        """Per interval: True where it is finite but outside :data:`PLAUSIBLE_RANGES`."""
        return {k: jnp.isfinite(getattr(self, k)) & ((getattr(self, k) < lo)
                                                     | (getattr(self, k) > hi))
                for k, (lo, hi) in PLAUSIBLE_RANGES.items()}


class RiskLabels(eqx.Module):
    """Boolean risk labels per cell (see :data:`RISK_LABELS`); False where data are NaN."""

    qtcf_ge_500: Bool[Array, "*b"]
    dqtcf_ge_60: Bool[Array, "*b"]
    torsade_risk: Bool[Array, "*b"]
    qtcf_gt_450: Bool[Array, "*b"]
    qtcf_gt_480: Bool[Array, "*b"]
    dqtcf_gt_30: Bool[Array, "*b"]
    pr_gt_200: Bool[Array, "*b"]
    qrs_ge_120: Bool[Array, "*b"]
    hr_lt_50: Bool[Array, "*b"]
    hr_gt_100: Bool[Array, "*b"]

    @classmethod
    def from_intervals(cls, iv: Intervals, dqtcf) -> RiskLabels:
        """Labels from intervals and the QTcF change from baseline (ms)."""
        q, d = iv.qtcf, jnp.asarray(dqtcf)
        return cls(q >= 500.0, d >= 60.0, (q >= 500.0) | (d >= 60.0), q > 450.0, q > 480.0,
                   d > 30.0, iv.pr > 200.0, iv.qrs >= 120.0, iv.heart_rate < 50.0,
                   iv.heart_rate > 100.0)


_FIELDS = {  # the cohort netCDF variable of every cell/patient array field, with its units
    "dqtcf": ("dQTcF", "ms"), "conc_ng_ml": ("conc_ng_ml", "ng/mL"), "block": ("block", "1"),
    "ti": ("ti", "rad"), "ai": ("ai", "1"), "bi": ("bi", "rad"), "drug": ("drug_id", "1"),
    "dose_mg": ("dose_mg", "mg"), "time_h": ("time_since_dose", "h"),
    "dose_multiplier": ("dose_multiplier", "1"), "eta_pk": ("eta_pk", "1"),
    "eta_pd": ("eta_pd", "1"), "baseline_ti": ("baseline_ti", "rad"),
    "baseline_ai": ("baseline_ai", "1"), "baseline_bi": ("baseline_bi", "rad"),
}
_CELL = ("patient", "action", "time_after_dose")


class ECGBatch(eqx.Module):
    """A cohort grid of ECG cells (see the module docstring for every field and shape)."""

    signals: Float[Array, "P A T L S"]
    baseline_signals: Float[Array, "P L S"]
    intervals: Intervals
    baseline_intervals: Intervals
    dqtcf: Float[Array, "P A T"]
    labels: RiskLabels
    drug: Int[Array, "P A T"]
    dose_mg: Float[Array, "P A T"]
    time_h: Float[Array, "P A T"]
    dose_multiplier: Float[Array, "P A"]
    conc_ng_ml: Float[Array, "P A T"]
    block: Float[Array, "P A T target"]
    ti: Float[Array, "P A T 5"]
    ai: Float[Array, "P A T 5"]
    bi: Float[Array, "P A T 5"]
    baseline_ti: Float[Array, "P 5"]
    baseline_ai: Float[Array, "P 5"]
    baseline_bi: Float[Array, "P 5"]
    eta_pk: Float[Array, "P 3"]
    eta_pd: Float[Array, " P"]
    long_qt: Bool[Array, " P"]
    valid: Bool[Array, "P A T"]
    plausible: Bool[Array, "P A T"]
    extrapolated: Bool[Array, "P A T"]
    split: Int[Array, " P"]
    patient_id: Int[Array, " P"]
    time_after_dose_h: Float[Array, " T"]
    sampling_rate_hz: float = eqx.field(static=True)
    lead_names: tuple[str, ...] = eqx.field(static=True)
    action_names: tuple[str, ...] = eqx.field(static=True)
    library: DrugLibrary = eqx.field(static=True)
    attrs_json: str = eqx.field(static=True, default="{}")

    # ------------------------------------------------------------------ conveniences

    @property
    def attrs(self) -> dict:
        """The cohort's attributes (provenance, seed, noise, calibration ...)."""
        return json.loads(self.attrs_json)

    @property
    def action(self) -> Action:
        """The cells' actions as an :class:`~ecg_world.actions.Action` of shape (P, A, T)."""
        return Action(self.drug, self.dose_mg, self.time_h, library=self.library,
                      check=False)

    @property
    def split_names(self) -> np.ndarray:
        """Split of every patient as strings (``"train"``, ``"val"``, ``"test"``)."""
        return np.asarray(SPLITS)[np.asarray(self.split)]

    @property
    def shape(self) -> tuple[int, int, int]:
        """(patients, actions, times after dose)."""
        return tuple(self.drug.shape)

    def select_split(self, split: str) -> ECGBatch:
        """The patients of one split (``"train"``, ``"val"`` or ``"test"``)."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; valid: {list(SPLITS)}")
        return self.select_patients(np.flatnonzero(np.asarray(self.split) == SPLITS.index(split)))

    def select_patients(self, index) -> ECGBatch:
        """A batch with the patients at ``index`` (integer positions, numpy-style)."""
        idx = np.asarray(index)
        t = self.time_after_dose_h  # the one array leaf without a patient axis
        return jax.tree_util.tree_map(lambda x: x if x is t else x[idx], self)

    def flatten(self) -> ECGCells:
        """All cells along one leading axis ``N = P * A * T`` (row-major: patient, action,
        time), each with its patient's baseline segment and intervals."""
        p, a, t = self.shape

        def cell(x):  # (P, A, T, ...) -> (N, ...)
            return jnp.reshape(x, (p * a * t, *x.shape[3:]))

        def per_patient(x):  # (P, ...) -> (N, ...)
            return cell(jnp.broadcast_to(x[:, None, None], (p, a, t, *x.shape[1:])))

        def tree(v, f):
            return jax.tree_util.tree_map(f, v)

        return ECGCells(
            signals=cell(self.signals), baseline_signals=per_patient(self.baseline_signals),
            intervals=tree(self.intervals, cell),
            baseline_intervals=tree(self.baseline_intervals, per_patient),
            dqtcf=cell(self.dqtcf), labels=tree(self.labels, cell),
            action=Action(cell(self.drug), cell(self.dose_mg), cell(self.time_h),
                          library=self.library, check=False),
            conc_ng_ml=cell(self.conc_ng_ml), block=cell(self.block),
            valid=cell(self.valid), plausible=cell(self.plausible),
            extrapolated=cell(self.extrapolated),
            patient=per_patient(jnp.arange(p)), split=per_patient(self.split),
            sampling_rate_hz=self.sampling_rate_hz, lead_names=self.lead_names,
            library=self.library)

    # -------------------------------------------------------------------- conversion

    def to_dataset(self) -> xr.Dataset:
        """The cohort ``xarray.Dataset`` (named dims, units; the layout of ``ecg-world
        synth``, see :mod:`ecg_world.cohort`)."""
        a = {**self.attrs, "sampling_rate_hz": float(self.sampling_rate_hz),
             "drug_library": json.dumps(self.library.to_json_doc())}
        n_s = self.signals.shape[-1]
        v: dict = {
            "ecg": (_CELL + ("lead", "time"), np.asarray(self.signals, np.float32),
                    {"units": "mV"}),
            "baseline_ecg": (("patient", "lead", "time"),
                             np.asarray(self.baseline_signals, np.float32),
                             {"units": "mV", "long_name": "pre-dose segment (no drug)"}),
        }
        for f, (name, unit) in INTERVAL_VARIABLES.items():
            v[name] = (_CELL, np.asarray(getattr(self.intervals, f)), {"units": unit})
            v[f"baseline_{name}"] = ("patient", np.asarray(getattr(self.baseline_intervals, f)),
                                     {"units": unit})
        dims = {"dqtcf": _CELL, "conc_ng_ml": _CELL, "block": _CELL + ("target",),
                "ti": _CELL + ("wave",), "ai": _CELL + ("wave",), "bi": _CELL + ("wave",),
                "drug": _CELL, "dose_mg": _CELL, "time_h": _CELL,
                "dose_multiplier": ("patient", "action"), "eta_pk": ("patient", "eta"),
                "eta_pd": ("patient",), "baseline_ti": ("patient", "wave"),
                "baseline_ai": ("patient", "wave"), "baseline_bi": ("patient", "wave")}
        long = {"dqtcf": "QTcF minus baseline QTcF", "conc_ng_ml": "total plasma",
                "drug": "row of the drug library (attrs drug_library)",
                "dose_mg": "dose of the labelled product",
                "time_h": "time since the dose"}
        for f, d in dims.items():
            name, unit = _FIELDS[f]
            at = {"units": unit} | ({"long_name": long[f]} if f in long else {})
            v[name] = (d, np.asarray(getattr(self, f)), at)
        v["dose_mg"] = (("patient", "action"), np.asarray(self.dose_mg)[:, :, 0],
                        {"units": "mg", "long_name": "dose of the labelled product"})
        for k in RISK_LABELS:
            v[k] = (_CELL, np.asarray(getattr(self.labels, k)), {"long_name": RISK_LABELS[k]})
        v["valid"] = (_CELL, np.asarray(self.valid),
                      {"long_name": "action valid (an invalid action gives NaN data)"})
        v["plausible"] = (_CELL, np.asarray(self.plausible),
                          {"long_name": "every interval inside the physiological ranges",
                           "ranges_ms": json.dumps(PLAUSIBLE_RANGES)})
        v["extrapolated"] = (_CELL, np.asarray(self.extrapolated),
                             {"long_name": "exposure outside the calibrated range"})
        v["long_qt"] = ("patient", np.asarray(self.long_qt))
        v["split"] = ("patient", self.split_names.astype(str))
        coords = {
            "patient": np.asarray(self.patient_id),
            "action": list(self.action_names),
            "time_after_dose": ("time_after_dose", np.asarray(self.time_after_dose_h),
                                {"units": "h"}),
            "lead": list(self.lead_names),
            "time": ("time", np.arange(n_s) / self.sampling_rate_hz, {"units": "s"}),
            "target": list(TARGETS),
            "wave": ["P", "Q", "R", "S", "T"],
            "eta": ["exposure", "ke", "ka"],
        }
        return xr.Dataset(v, coords=coords, attrs=a)

    @classmethod
    def from_dataset(cls, ds: xr.Dataset) -> ECGBatch:
        """The batch of a cohort Dataset (as written by :func:`ecg_world.cohort.synthesize`);
        a missing variable is a ``ValueError`` naming it."""
        need = (["ecg", "baseline_ecg", "split", "long_qt", "valid", "plausible",
                 "extrapolated", "dose_mg"] + [n for n, _ in INTERVAL_VARIABLES.values()]
                + [f"baseline_{n}" for n, _ in INTERVAL_VARIABLES.values()]
                + list(RISK_LABELS) + [_FIELDS[f][0] for f in _FIELDS if f != "dose_mg"])
        missing = [k for k in need if k not in ds]
        if missing:
            raise ValueError(f"cohort dataset lacks variables {missing} (written by an older "
                             "ecg-world? regenerate it with `ecg-world synth`)")
        if "drug_library" not in ds.attrs:
            raise ValueError("cohort dataset lacks attrs['drug_library'] (the drug table its "
                             "drug ids index)")
        ds = ds.transpose(*_CELL, "lead", "time", "target", "wave", "eta")
        lib = DrugLibrary.from_json_doc(json.loads(ds.attrs["drug_library"]))
        attrs = {k: v for k, v in ds.attrs.items()
                 if k not in ("drug_library", "sampling_rate_hz")}
        attrs = {k: (v.tolist() if isinstance(v, np.ndarray) else
                     v.item() if isinstance(v, np.generic) else v) for k, v in attrs.items()}

        def arr(name, dtype=jnp.float32):
            return jnp.asarray(ds[name].values, dtype)

        iv = Intervals(**{f: arr(n) for f, (n, _) in INTERVAL_VARIABLES.items()})
        biv = Intervals(**{f: arr(f"baseline_{n}") for f, (n, _) in INTERVAL_VARIABLES.items()})
        shape = ds["RR"].shape
        split = np.asarray(ds["split"].values).astype(str)
        bad = sorted(set(split) - set(SPLITS))
        if bad:
            raise ValueError(f"unknown split names {bad}; valid: {list(SPLITS)}")
        return cls(
            signals=arr("ecg"), baseline_signals=arr("baseline_ecg"), intervals=iv,
            baseline_intervals=biv, dqtcf=arr("dQTcF"),
            labels=RiskLabels(**{k: arr(k, bool) for k in RISK_LABELS}),
            drug=arr("drug_id", jnp.int32),
            dose_mg=jnp.broadcast_to(arr("dose_mg")[:, :, None], shape),
            time_h=arr("time_since_dose"), dose_multiplier=arr("dose_multiplier"),
            conc_ng_ml=arr("conc_ng_ml"), block=arr("block"), ti=arr("ti"), ai=arr("ai"),
            bi=arr("bi"), baseline_ti=arr("baseline_ti"), baseline_ai=arr("baseline_ai"),
            baseline_bi=arr("baseline_bi"), eta_pk=arr("eta_pk"), eta_pd=arr("eta_pd"),
            long_qt=arr("long_qt", bool), valid=arr("valid", bool),
            plausible=arr("plausible", bool), extrapolated=arr("extrapolated", bool),
            split=jnp.asarray([SPLITS.index(s) for s in split], jnp.int32),
            patient_id=jnp.asarray(ds["patient"].values, jnp.int32),
            time_after_dose_h=arr("time_after_dose"),
            sampling_rate_hz=float(ds.attrs["sampling_rate_hz"]),
            lead_names=tuple(str(x) for x in ds["lead"].values),
            action_names=tuple(str(x) for x in ds["action"].values),
            library=lib, attrs_json=json.dumps(attrs, sort_keys=True, default=str))

    def to_netcdf(self, path: str | pathlib.Path) -> pathlib.Path:
        """Write the cohort netCDF (:func:`ecg_world.cohort.write_cohort`)."""
        return write_cohort(self.to_dataset(), path)

    @classmethod
    def from_netcdf(cls, path: str | pathlib.Path) -> ECGBatch:
        """Read a cohort netCDF written by ``ecg-world synth`` into a batch."""
        return cls.from_dataset(read_cohort(path))


class ECGCells(eqx.Module):
    """The cells of an :class:`ECGBatch` along one leading axis ``N`` (see
    :meth:`ECGBatch.flatten`): the world model's (pre, action, post) examples."""

    signals: Float[Array, "N L S"]
    baseline_signals: Float[Array, "N L S"]
    intervals: Intervals
    baseline_intervals: Intervals
    dqtcf: Float[Array, " N"]
    labels: RiskLabels
    action: Action
    conc_ng_ml: Float[Array, " N"]
    block: Float[Array, "N target"]
    valid: Bool[Array, " N"]
    plausible: Bool[Array, " N"]
    extrapolated: Bool[Array, " N"]
    patient: Int[Array, " N"]
    split: Int[Array, " N"]
    sampling_rate_hz: float = eqx.field(static=True)
    lead_names: tuple[str, ...] = eqx.field(static=True)
    library: DrugLibrary = eqx.field(static=True)


def write_cohort(ds: xr.Dataset, path: str | pathlib.Path) -> pathlib.Path:
    """Write a cohort Dataset to netCDF (h5netcdf); booleans are stored as int8 with a flag
    attribute."""
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
    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"cohort file not found: {path}")
    ds = xr.load_dataset(path, engine="h5netcdf")
    for k, v in ds.data_vars.items():
        if v.attrs.get("boolean"):
            ds[k] = v.astype(bool)
    return ds
