"""Drugs as data: PK constants, unbound fraction and channel potencies read from JSON.

The package ships ``ecg_world/data/drugs.json`` (placebo, dofetilide, quinidine, ranolazine,
verapamil, with literature sources). Users add a drug by writing an entry with the same
fields into their own JSON file and passing it to :func:`load_drugs`; no code changes.

A :class:`DrugLibrary` turns the definitions into a :class:`DrugTable` (an ``eqx.Module`` of
stacked arrays, one row per drug) so that pure-JAX code indexes drugs by an integer id and
stays ``jit``/``vmap``-able.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Iterable, Mapping

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

DATA_DIR = pathlib.Path(__file__).parent / "data"
DRUGS_JSON = DATA_DIR / "drugs.json"

#: Pharmacological targets, in the column order of :attr:`DrugTable.ic50_nM`.
TARGETS: tuple[str, ...] = ("IKr", "INaL", "ICaL", "INa", "alpha1")

#: Dose units accepted, as milligrams per unit.
DOSE_UNITS: dict[str, float] = {"g": 1000.0, "mg": 1.0, "ug": 1e-3, "µg": 1e-3, "mcg": 1e-3}

#: Plasma-concentration units accepted, as ng/mL per unit.
CONCENTRATION_UNITS: dict[str, float] = {
    "ng/mL": 1.0,
    "ug/mL": 1000.0,
    "mg/L": 1000.0,
    "pg/mL": 1e-3,
    "ug/L": 1.0,
}

_PK_FIELDS = ("ka_per_h", "release_per_h", "ke_per_h", "v_over_f_l", "tlag_h", "ke0_per_h")
#: optional PK fields: ``exposure_scale`` is the drug's between-subject SD of log exposure
#: relative to the population's (``Variability.omega_exposure``), estimated from its plasma
#: concentrations by the calibration; a patient's exposure random effect is multiplied by it
#: for this drug (default 1)
_OPTIONAL_PK_FIELDS = ("exposure_scale",)
_REQUIRED = (
    "display_name",
    "aliases",
    "dose_unit",
    "standard_dose",
    "salt_factor",
    "molecular_weight",
    "concentration_unit",
    "unbound_fraction",
    "pk",
    "potency",
)
_NO_BLOCK_IC50 = 1e30  # nM: a target the drug does not touch


def dose_to_mg(dose: float | int, unit: str) -> float:
    """Convert a dose in ``unit`` (g, mg, ug/µg/mcg) to mg; negative doses are an error."""
    if unit not in DOSE_UNITS:
        raise ValueError(f"unknown dose unit {unit!r}; valid units: {sorted(DOSE_UNITS)}")
    dose = float(dose)
    if not dose >= 0.0:  # also catches NaN
        raise ValueError(f"dose must be >= 0 (got {dose} {unit})")
    return dose * DOSE_UNITS[unit]


def concentration_to_ng_ml(value, unit: str):
    """Convert plasma concentrations in ``unit`` (e.g. pg/mL for dofetilide) to ng/mL."""
    if unit not in CONCENTRATION_UNITS:
        raise ValueError(
            f"unknown concentration unit {unit!r}; valid units: {sorted(CONCENTRATION_UNITS)}"
        )
    return value * CONCENTRATION_UNITS[unit]


@dataclasses.dataclass(frozen=True)
class Potency:
    """Half-maximal FREE concentration (nM) and Hill coefficient at one target."""

    ic50_nM: float
    hill: float = 1.0
    source: str = ""
    note: str = ""


@dataclasses.dataclass(frozen=True)
class Drug:
    """One drug definition (see ``data/drugs.json`` for the units of every field)."""

    name: str
    display_name: str
    aliases: tuple[str, ...]
    dose_unit: str
    standard_dose: float
    salt_factor: float
    molecular_weight: float
    concentration_unit: str
    unbound_fraction: float
    pk: Mapping[str, float | None]
    potency: Mapping[str, Potency]
    torsade_risk: str = "unknown"
    sources: tuple[str, ...] = ()
    unbound_fraction_range: tuple[float, float] | None = None
    dose_range: tuple[float, float] | None = None

    @property
    def plausible_dose_range(self) -> tuple[float, float]:
        """(low, high) plausible single oral dose in :attr:`dose_unit`: ``dose_range`` from
        the JSON entry, else ``(standard_dose / 20, 10 * standard_dose)``. A dose of exactly 0
        (no drug) is always accepted."""
        if self.dose_range is not None:
            return self.dose_range
        return (self.standard_dose / 20.0, 10.0 * self.standard_dose)

    def check_dose(self, dose: float | int, unit: str) -> float:
        """The dose in mg, or a ``ValueError`` naming the plausible range and the likely unit
        slip when ``dose unit`` lies outside :attr:`plausible_dose_range`."""
        mg = dose_to_mg(dose, unit)
        if mg == 0.0:
            return mg
        lo, hi = self.plausible_dose_range
        lo_mg, hi_mg = dose_to_mg(lo, self.dose_unit), dose_to_mg(hi, self.dose_unit)
        if lo_mg * (1 - 1e-9) <= mg <= hi_mg * (1 + 1e-9):
            return mg
        hint = ""
        for u in ("g", "mg", "ug"):
            alt = dose_to_mg(dose, u)
            if u != unit and lo_mg <= alt <= hi_mg:
                hint = f"; did you mean {dose:g} {u}?"
                break
        raise ValueError(
            f"{self.name}: dose {dose:g} {unit} ({mg:g} mg) is outside the plausible range "
            f"{lo:g}-{hi:g} {self.dose_unit} of the drug's entry (dose_range){hint}")

    @classmethod
    def from_dict(cls, name: str, d: Mapping) -> Drug:
        missing = [k for k in _REQUIRED if k not in d]
        if missing:
            raise ValueError(f"drug {name!r}: missing fields {missing}")
        pk = dict(d["pk"])
        missing_pk = [k for k in _PK_FIELDS if k not in pk]
        if missing_pk:
            raise ValueError(f"drug {name!r}: missing pk fields {missing_pk}")
        unknown_targets = sorted(set(d["potency"]) - set(TARGETS))
        if unknown_targets:
            raise ValueError(
                f"drug {name!r}: unknown targets {unknown_targets}; valid targets: {list(TARGETS)}"
            )
        if d["dose_unit"] not in DOSE_UNITS:
            raise ValueError(f"drug {name!r}: dose_unit must be one of {sorted(DOSE_UNITS)}")
        if d["concentration_unit"] not in CONCENTRATION_UNITS:
            raise ValueError(
                f"drug {name!r}: concentration_unit must be one of {sorted(CONCENTRATION_UNITS)}"
            )
        if not 0.0 <= float(d["unbound_fraction"]) <= 1.0:
            raise ValueError(f"drug {name!r}: unbound_fraction must lie in [0, 1]")
        for k in ("ka_per_h", "ke_per_h", "v_over_f_l", "ke0_per_h"):
            if not float(pk[k]) > 0:
                raise ValueError(f"drug {name!r}: pk.{k} must be > 0")
        unknown_pk = sorted(set(pk) - set(_PK_FIELDS) - set(_OPTIONAL_PK_FIELDS))
        if unknown_pk:
            raise ValueError(f"drug {name!r}: unknown pk fields {unknown_pk}; valid: "
                             f"{list(_PK_FIELDS + _OPTIONAL_PK_FIELDS)}")
        if "exposure_scale" in pk and not (np.isfinite(float(pk["exposure_scale"]))
                                           and float(pk["exposure_scale"]) > 0):
            raise ValueError(f"drug {name!r}: pk.exposure_scale must be finite and > 0")
        if not (np.isfinite(float(d["standard_dose"])) and float(d["standard_dose"]) >= 0):
            raise ValueError(f"drug {name!r}: standard_dose must be finite and >= 0")
        dose_range = None
        if d.get("dose_range") is not None:
            r = [float(x) for x in d["dose_range"]]
            if len(r) != 2 or not (0 <= r[0] <= r[1]) or not np.all(np.isfinite(r)):
                raise ValueError(f"drug {name!r}: dose_range must be [low, high] with "
                                 f"0 <= low <= high, in dose_unit (got {d['dose_range']})")
            sd = float(d["standard_dose"])
            if sd > 0 and not r[0] <= sd <= r[1]:
                raise ValueError(f"drug {name!r}: standard_dose {sd:g} lies outside its "
                                 f"dose_range {r}")
            dose_range = (r[0], r[1])
        potency = {t: Potency(**p) for t, p in d["potency"].items()}
        for t, p in potency.items():
            if not (p.ic50_nM > 0 and p.hill > 0):
                raise ValueError(f"drug {name!r}: {t} needs ic50_nM > 0 and hill > 0")
        return cls(
            name=name,
            display_name=d["display_name"],
            aliases=tuple(d["aliases"]),
            dose_unit=d["dose_unit"],
            standard_dose=float(d["standard_dose"]),
            salt_factor=float(d["salt_factor"]),
            molecular_weight=float(d["molecular_weight"]),
            concentration_unit=d["concentration_unit"],
            unbound_fraction=float(d["unbound_fraction"]),
            pk=pk,
            potency=potency,
            torsade_risk=d.get("torsade_risk", "unknown"),
            sources=tuple(d.get("sources", ())),
            unbound_fraction_range=(tuple(float(x) for x in d["unbound_fraction_range"])
                                    if d.get("unbound_fraction_range") else None),
            dose_range=dose_range,
        )

    def with_pk(self, **pk) -> Drug:
        """A copy with some PK constants replaced (used for calibrated values); the key
        ``unbound_fraction`` replaces the unbound fraction."""
        if "unbound_fraction" in pk:
            fu = float(pk.pop("unbound_fraction"))
            return dataclasses.replace(self, unbound_fraction=fu).with_pk(**pk)
        unknown = sorted(set(pk) - set(_PK_FIELDS) - set(_OPTIONAL_PK_FIELDS))
        if unknown:
            raise ValueError(f"unknown pk fields {unknown}; valid: "
                             f"{list(_PK_FIELDS + _OPTIONAL_PK_FIELDS)}")
        return dataclasses.replace(self, pk={**self.pk, **pk})


class DrugTable(eqx.Module):
    """Stacked per-drug constants (row = drug id), for pure-JAX pharmacology.

    Doses inside JAX code are in mg of the labelled product; ``salt_factor`` converts to base.
    ``release_per_h`` is ``inf`` for immediate-release products.
    """

    salt_factor: Float[Array, " drug"]
    molecular_weight: Float[Array, " drug"]
    unbound_fraction: Float[Array, " drug"]
    ka_per_h: Float[Array, " drug"]
    release_per_h: Float[Array, " drug"]
    ke_per_h: Float[Array, " drug"]
    v_over_f_l: Float[Array, " drug"]
    tlag_h: Float[Array, " drug"]
    ke0_per_h: Float[Array, " drug"]
    exposure_scale: Float[Array, " drug"]
    ic50_nM: Float[Array, "drug target"]
    hill: Float[Array, "drug target"]
    dose_max_mg: Float[Array, " drug"]
    names: tuple[str, ...] = eqx.field(static=True)

    @property
    def n_drugs(self) -> int:
        return len(self.names)

    def row(self, field: str, drug) -> Array:
        """``table.<field>[drug]`` with a NaN sentinel for an id outside the table (never
        JAX's default clamp to the last row, which would silently give another drug)."""
        return getattr(self, field).at[drug].get(mode="fill", fill_value=jnp.nan)

    def contains(self, drug) -> Array:
        """True where ``drug`` is a row of this table."""
        drug = jnp.asarray(drug)
        return (drug >= 0) & (drug < self.n_drugs)


class DrugLibrary:
    """An ordered collection of :class:`Drug` with alias lookup (case-insensitive)."""

    def __init__(self, drugs: Iterable[Drug], references: Mapping[str, str] | None = None):
        self.drugs: dict[str, Drug] = {}
        for drug in drugs:
            if drug.name in self.drugs:
                raise ValueError(f"duplicate drug {drug.name!r}")
            self.drugs[drug.name] = drug
        self.references = dict(references or {})
        self._alias: dict[str, str] = {}
        for drug in self.drugs.values():
            for alias in (drug.name, drug.display_name, *drug.aliases):
                key = alias.strip().lower()
                other = self._alias.get(key)
                if other is not None and other != drug.name:
                    raise ValueError(f"alias {alias!r} names both {other!r} and {drug.name!r}")
                self._alias[key] = drug.name
        self._fingerprint = json.dumps(self.to_json_doc(), sort_keys=True, default=str)

    # A library is a value: equal content, equal library (it is a static field of
    # jitted pytrees, :class:`~ecg_world.pharmacology.Pharmacology`; content equality keeps
    # one compilation for equal libraries loaded twice).
    def __eq__(self, other) -> bool:
        return isinstance(other, DrugLibrary) and self._fingerprint == other._fingerprint

    def __hash__(self) -> int:
        return hash(self._fingerprint)

    def __repr__(self) -> str:
        return f"DrugLibrary({list(self.drugs)})"

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.drugs)

    def canonical(self, name: str) -> str:
        """Canonical key of a name or alias (``"Quinidine Sulph"`` -> ``"quinidine"``)."""
        key = str(name).strip().lower()
        if key not in self._alias:
            raise KeyError(
                f"unknown drug {name!r}; known drugs: {list(self.drugs)} "
                f"(aliases: {sorted({a for d in self.drugs.values() for a in d.aliases})})"
            )
        return self._alias[key]

    def __getitem__(self, name: str) -> Drug:
        return self.drugs[self.canonical(name)]

    def __contains__(self, name: str) -> bool:
        return str(name).strip().lower() in self._alias

    def index(self, name: str) -> int:
        """Integer id of a drug in :meth:`table`."""
        return self.names.index(self.canonical(name))

    def with_pk(self, pk: Mapping[str, Mapping[str, float]]) -> DrugLibrary:
        """A library whose drugs' PK constants are replaced by ``pk[drug]`` where given."""
        drugs = [d.with_pk(**pk[d.name]) if d.name in pk else d for d in self.drugs.values()]
        return DrugLibrary(drugs, self.references)

    def table(self) -> DrugTable:
        """Stack all drugs into a :class:`DrugTable` (row order = :attr:`names`)."""
        rows = list(self.drugs.values())

        def col(f):
            return jnp.asarray([f(d) for d in rows], dtype=jnp.float32)

        def rel(d):
            r = d.pk["release_per_h"]
            return float("inf") if r is None else float(r)

        ic50 = [[d.potency[t].ic50_nM if t in d.potency else _NO_BLOCK_IC50 for t in TARGETS]
                for d in rows]
        hill = [[d.potency[t].hill if t in d.potency else 1.0 for t in TARGETS] for d in rows]
        return DrugTable(
            salt_factor=col(lambda d: d.salt_factor),
            molecular_weight=col(lambda d: d.molecular_weight),
            unbound_fraction=col(lambda d: d.unbound_fraction),
            ka_per_h=col(lambda d: d.pk["ka_per_h"]),
            release_per_h=col(rel),
            ke_per_h=col(lambda d: d.pk["ke_per_h"]),
            v_over_f_l=col(lambda d: d.pk["v_over_f_l"]),
            tlag_h=col(lambda d: d.pk["tlag_h"]),
            ke0_per_h=col(lambda d: d.pk["ke0_per_h"]),
            exposure_scale=col(lambda d: d.pk.get("exposure_scale", 1.0)),
            ic50_nM=jnp.asarray(ic50, dtype=jnp.float32),
            hill=jnp.asarray(hill, dtype=jnp.float32),
            dose_max_mg=col(lambda d: dose_to_mg(d.plausible_dose_range[1], d.dose_unit)),
            names=tuple(d.name for d in rows),
        )

    def to_json_doc(self) -> dict:
        """The library in the schema of ``drugs.json`` (``{"drugs": ..., "references": ...}``);
        :meth:`from_json_doc` reads it back."""
        return {"drugs": self.to_dict(), "references": dict(self.references)}

    @classmethod
    def from_json_doc(cls, doc: Mapping) -> DrugLibrary:
        """A library from :meth:`to_json_doc`'s output (or a drugs.json document)."""
        if not isinstance(doc, Mapping) or not isinstance(doc.get("drugs"), Mapping):
            raise ValueError("a drug library document needs a 'drugs' mapping")
        return cls([Drug.from_dict(k, v) for k, v in doc["drugs"].items()],
                   doc.get("references", {}))

    def to_dict(self) -> dict:
        out = {}
        for d in self.drugs.values():
            dd = dataclasses.asdict(d)
            dd.pop("name")
            dd["aliases"] = list(d.aliases)
            dd["sources"] = list(d.sources)
            dd["potency"] = {t: dataclasses.asdict(p) for t, p in d.potency.items()}
            dd["pk"] = dict(d.pk)
            if d.unbound_fraction_range is not None:
                dd["unbound_fraction_range"] = list(d.unbound_fraction_range)
            if d.dose_range is None:
                dd.pop("dose_range")
            else:
                dd["dose_range"] = list(d.dose_range)
            out[d.name] = dd
        return out


def load_drugs(*paths: str | pathlib.Path, include_default: bool = True) -> DrugLibrary:
    """Read drug definitions from JSON files (default: the package's ``data/drugs.json``).

    Later files add drugs (or replace a drug of the same key). Each file is either the full
    schema (``{"drugs": {...}, "references": {...}}``) or a bare ``{name: definition}`` mapping.
    """
    files = ([DRUGS_JSON] if include_default else []) + [pathlib.Path(p) for p in paths]
    defs: dict[str, Mapping] = {}
    refs: dict[str, str] = {}
    for f in files:
        if not f.exists():
            raise FileNotFoundError(f"drug file not found: {f}")
        try:
            raw = json.loads(f.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"drug file {f} is not valid JSON: {err}") from None
        if not isinstance(raw, dict) or not isinstance(raw.get("drugs", raw), dict):
            raise ValueError(f"drug file {f}: expected an object {{name: definition}} or "
                             "{\"drugs\": {...}, \"references\": {...}}")
        defs.update(raw.get("drugs", raw))
        refs.update(raw.get("references", {}) if "drugs" in raw else {})
    return DrugLibrary([Drug.from_dict(k, v) for k, v in defs.items()], refs)


_DEFAULT: DrugLibrary | None = None


def default_library() -> DrugLibrary:
    """The package's drug library (cached)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = load_drugs()
    return _DEFAULT
