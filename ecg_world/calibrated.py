"""The frozen calibrated artifact: :class:`Calibration`, read from (and written to) JSON.

This module holds what the calibration produced and nothing that fits it (that is
:mod:`ecg_world.calibration`) or reports on it (:mod:`ecg_world.calibration_report`):

- the :class:`~ecg_world.pharmacology.Pharmacology` (the drug library with its calibrated
  PK constants, the shared channel-block -> ECG map, the placebo/diurnal course), which is
  all that :func:`~ecg_world.pharmacology.apply_action` needs;
- the between-subject :class:`~ecg_world.pharmacology.Variability`;
- metadata: provenance, the per-drug PK fit, fit statistics, the study's baseline
  distribution (from which cohorts draw their virtual patients), the kernel sensitivity
  used by the effect-space fit.

``ecg_world/data/calibrated.json`` is the committed one (:func:`default_calibration`,
:func:`default_pharmacology`). Resolve it at the public boundary, outside traced code, and
pass ``cal.pharmacology`` into jitted functions as an argument.
"""

from __future__ import annotations

import json
import pathlib

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .drugs import DATA_DIR, DrugLibrary, default_library
from .pharmacology import BASELINE_TIME_H, Diurnal, EffectMap, Pharmacology, Variability

CALIBRATED_JSON = DATA_DIR / "calibrated.json"

#: kernel response used when none is given: exact proportional realisation, no rate coupling
NEUTRAL_SENSITIVITY = {"gain_qt": 1.0, "gain_pr": 1.0, "gain_qrs": 1.0, "dQTcF_dHR": 0.0,
                       "dPR_dHR": 0.0, "dQRS_dHR": 0.0, "dPR_dqt": 0.0}

#: fallback baseline distribution (the dev table's values, rounded) for a Calibration without one
DEFAULT_BASELINE = {
    "variables": ["log_RR_ms", "PR_ms", "QRS_ms", "QTcF_ms"],
    "mean": [6.96, 165.0, 98.0, 395.0],
    "cov": [[0.012, 0.0, 0.0, 0.0], [0.0, 540.0, 0.0, 0.0], [0.0, 0.0, 46.0, 0.0],
            [0.0, 0.0, 0.0, 340.0]],
}

_PK_FIELDS = ("ka_per_h", "ke_per_h", "v_over_f_l", "tlag_h", "release_per_h", "ke0_per_h",
              "unbound_fraction", "exposure_scale")


class Calibration(eqx.Module):
    """Calibrated state: pharmacology (drug library with fitted PK, effect map, diurnal
    course), variability and metadata (JSON-serialisable dicts, exposed as properties).

    An ``eqx.Module``; its arrays live in :attr:`pharmacology` and :attr:`variability`, the
    metadata is one static JSON string, so the whole object is hashable-static-safe. Pass
    :attr:`pharmacology` (not the Calibration) to traced code."""

    pharmacology: Pharmacology
    variability: Variability
    metadata_json: str = eqx.field(static=True)

    def __init__(self, library: DrugLibrary, emap: EffectMap, diurnal: Diurnal,
                 variability: Variability, provenance: dict | None = None,
                 pk: dict | None = None, fit_info: dict | None = None,
                 baseline_distribution: dict | None = None, sensitivity: dict | None = None):
        self.pharmacology = Pharmacology(library.table(), emap, diurnal, library)
        self.variability = variability
        self.metadata_json = json.dumps({
            "provenance": provenance or {}, "pk": pk or {}, "fit": fit_info or {},
            "baseline_distribution": baseline_distribution or DEFAULT_BASELINE,
            "kernel_sensitivity": {**NEUTRAL_SENSITIVITY, **(sensitivity or {})},
        }, sort_keys=True, default=float)

    # the parts, by name
    @property
    def library(self) -> DrugLibrary:
        return self.pharmacology.library

    @property
    def emap(self) -> EffectMap:
        return self.pharmacology.emap

    @property
    def diurnal(self) -> Diurnal:
        return self.pharmacology.diurnal

    def _meta(self, key):
        return json.loads(self.metadata_json)[key]

    @property
    def provenance(self) -> dict:
        return self._meta("provenance")

    @property
    def pk(self) -> dict:
        return self._meta("pk")

    @property
    def fit_info(self) -> dict:
        return self._meta("fit")

    @property
    def baseline_distribution(self) -> dict:
        return self._meta("baseline_distribution")

    @property
    def sensitivity(self) -> dict:
        return self._meta("kernel_sensitivity")

    def with_library(self, library: DrugLibrary) -> Calibration:
        """The same calibration on another drug library (e.g. the package's plus a user's
        drugs file): drugs in the calibration's PK keep their calibrated constants, new drugs
        keep their JSON values."""
        pk = {library.canonical(d): {k: v for k, v in p.items() if k in _PK_FIELDS}
              for d, p in self.pk.items() if d in library}
        return Calibration(library.with_pk(pk), self.emap, self.diurnal, self.variability,
                           self.provenance, self.pk, self.fit_info, self.baseline_distribution,
                           self.sensitivity)

    def to_json(self, path: str | pathlib.Path = CALIBRATED_JSON) -> pathlib.Path:
        path = pathlib.Path(path)
        doc = {
            "schema_version": 1,
            "provenance": self.provenance,
            "effect_map": self.emap.to_dict(),
            "diurnal": {"endpoints": ["HR_bpm", "QTc_frac", "PR_frac", "QRS_frac"],
                        "basis": ["cos 24h", "sin 24h", "cos 12h", "sin 12h"],
                        "reference_time_h": BASELINE_TIME_H,
                        "coef": np.asarray(self.diurnal.coef).round(8).tolist()},
            "variability": self.variability.to_dict(),
            "pk": self.pk,
            "fit": self.fit_info,
            "baseline_distribution": self.baseline_distribution,
            "kernel_sensitivity": self.sensitivity,
        }
        path.write_text(json.dumps(doc, indent=2) + "\n")
        return path

    @classmethod
    def from_json(cls, path: str | pathlib.Path = CALIBRATED_JSON,
                  library: DrugLibrary | None = None) -> Calibration:
        """Read a calibration file; ``library`` (default: the package's drugs) receives the
        calibrated PK constants of the drugs it shares with the file."""
        path = pathlib.Path(path)
        if not path.exists():
            raise FileNotFoundError(f"calibration file not found: {path}")
        try:
            doc = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from None
        missing = [k for k in ("effect_map", "diurnal", "variability", "pk") if k not in doc]
        if missing:
            raise ValueError(f"{path}: missing sections {missing}")
        library = library or default_library()
        pk = {d: {k: v for k, v in p.items() if k in _PK_FIELDS} for d, p in doc["pk"].items()
              if d in library}
        lib = library.with_pk({library.canonical(d): p for d, p in pk.items()})
        emap = EffectMap.default(**doc["effect_map"])
        diurnal = Diurnal(jnp.asarray(doc["diurnal"]["coef"], jnp.float32))
        var = Variability.default(**doc["variability"])
        return cls(lib, emap, diurnal, var, doc.get("provenance", {}), doc["pk"],
                   doc.get("fit", {}), doc.get("baseline_distribution"),
                   doc.get("kernel_sensitivity"))


_DEFAULT: Calibration | None = None


def default_calibration() -> Calibration:
    """The committed calibration (``ecg_world/data/calibrated.json``), cached. Call it at the
    public boundary (eagerly), never inside traced code."""
    global _DEFAULT
    if _DEFAULT is None:
        # build the cached arrays eagerly even if a caller's trace is active
        with jax.ensure_compile_time_eval():
            _DEFAULT = Calibration.from_json()
    return _DEFAULT


def default_pharmacology() -> Pharmacology:
    """The committed calibration's :class:`~ecg_world.pharmacology.Pharmacology` (the
    package's drug library with calibrated PK, the shared map, the placebo course)."""
    return default_calibration().pharmacology
