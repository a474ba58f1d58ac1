"""The sentences of the grammar: typed, frozen descriptions of a hybrid model.

A :class:`Structure` says *which terms exist* (a reaction model, a diffusion operator,
neural closures on named state equations) and *how each physical parameter is treated*
(fixed at a value, one free value, one free value per region, or one per node). It holds
no arrays: compiling it onto a geometry (:func:`leads_jax.compile.compile_structure`)
produces the trainable model.

Everything is a frozen dataclass, so an agent transforms structures with
``dataclasses.replace`` or the ``with_*`` / ``without_*`` helpers, and every structure
renders as JSON (lossless), a formula (plain text or LaTeX) and a canonical form.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from collections.abc import Mapping
from typing import Any, SupportsFloat

from ._formula import formula as _formula
from ._terms import (
    CLOSURE_DEFAULT_HIDDEN,
    CLOSURE_DEFAULT_MAX_RATE,
    DIFFUSION_DEFAULT_HIDDEN,
    DIFFUSION_DEFAULT_MAX_GAIN,
    GATE_DEFAULT_TAU_MAX,
    GATE_DEFAULT_TAU_MIN,
    PARAMETER_MODES,
    ClosureTerm,
    DiffusionTerm,
    ParameterChoice,
    StructureError,
)
from ._validate import canonicalise


def _fields(cls) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


def _check_keys(obj: Any, cls, where: str) -> dict:
    if not isinstance(obj, dict):
        raise ValueError(f"structure JSON: {where} must be an object, got {type(obj).__name__}")
    names = set(_fields(cls))
    missing = sorted(names - set(obj))
    extra = sorted(set(obj) - names)
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing field(s) {missing}")
        if extra:
            parts.append(f"unknown field(s) {extra}")
        raise ValueError(
            f"structure JSON: {where} has {' and '.join(parts)}; expected exactly {sorted(names)}"
        )
    return obj


def _as_str(x, where):
    if not isinstance(x, str):
        raise ValueError(f"structure JSON: {where} must be a string, got {x!r}")
    return x


def _as_float_or_none(x, where):
    if x is None:
        return None
    if isinstance(x, bool) or not isinstance(x, int | float):
        raise ValueError(f"structure JSON: {where} must be a number or null, got {x!r}")
    return float(x)


def _as_hidden(x, where):
    if x is None:
        return None
    if not isinstance(x, list | tuple) or not all(
        isinstance(h, int) and not isinstance(h, bool) for h in x
    ):
        raise ValueError(f"structure JSON: {where} must be a list of integers or null, got {x!r}")
    return tuple(x)


def _json_float(x):
    # JSON has no NaN/inf; keep them representable so invalid structures still round-trip.
    if x is None or math.isfinite(x):
        return x
    return str(x)


def _parse_float(x, where):
    if isinstance(x, str) and x in ("nan", "inf", "-inf"):
        return float(x)
    return _as_float_or_none(x, where)


@dataclasses.dataclass(frozen=True, eq=False)
class Structure:
    """A sentence of the grammar: reaction + diffusion + closures + parameter treatment.

    Parameters not listed in `parameters` are fixed at their catalog default. Equality
    and hashing use the :meth:`canonical` form, so two spellings of one structure (an
    alias of the reaction name, closures in another order, a default spelled out)
    compare and hash equal.

    **Arguments:**

    - `reaction`: a reaction model name of the catalog (aliases accepted).
    - `diffusion`: a :class:`DiffusionTerm` (default: the Laplacian).
    - `closures`: :class:`ClosureTerm` s, at most one per state equation.
    - `parameters`: :class:`ParameterChoice` s, at most one per parameter.
    """

    reaction: str
    diffusion: DiffusionTerm = DiffusionTerm()
    closures: tuple[ClosureTerm, ...] = ()
    parameters: tuple[ParameterChoice, ...] = ()

    def __post_init__(self):
        # Accept lists from user code; keep the dataclass hashable and replace-friendly.
        object.__setattr__(self, "closures", tuple(self.closures))
        object.__setattr__(self, "parameters", tuple(self.parameters))
        if isinstance(self.diffusion, str):
            object.__setattr__(self, "diffusion", DiffusionTerm(self.diffusion))

    # -- construction helpers ------------------------------------------------------
    @classmethod
    def make(
        cls,
        reaction: str,
        diffusion: str | DiffusionTerm = "laplacian",
        *,
        free: tuple[str, ...] = (),
        per_region: tuple[str, ...] = (),
        per_node: tuple[str, ...] = (),
        values: Mapping[str, SupportsFloat] | None = None,
        closures: tuple[ClosureTerm, ...] = (),
    ) -> Structure:
        """Convenience constructor: ``Structure.make("aliev-panfilov", free=("a", "D"))``."""
        values = dict(values or {})
        choices = []
        for mode, names in (("free", free), ("per-region", per_region), ("per-node", per_node)):
            for n in names:
                choices.append(ParameterChoice(n, mode, values.pop(n, None)))
        for n, v in values.items():
            choices.append(ParameterChoice(n, "fixed", v))
        diff = DiffusionTerm(diffusion) if isinstance(diffusion, str) else diffusion
        return cls(reaction, diff, tuple(closures), tuple(choices))

    def with_parameter(self, name: str, mode: str,
                       value: SupportsFloat | None = None) -> Structure:
        """The structure with parameter `name` set to `mode` (keeps its value if None)."""
        old = {p.name: p for p in self.parameters}
        if value is None and name in old:
            value = old[name].value
        rest = tuple(p for p in self.parameters if p.name != name)
        return dataclasses.replace(self, parameters=rest + (ParameterChoice(name, mode, value),))

    def with_closure(self, closure: ClosureTerm) -> Structure:
        """The structure with `closure` added (replacing any closure on the same target)."""
        rest = tuple(c for c in self.closures if c.target != closure.target)
        return dataclasses.replace(self, closures=rest + (closure,))

    def without_closure(self, target: str) -> Structure:
        return dataclasses.replace(
            self, closures=tuple(c for c in self.closures if c.target != target)
        )

    def with_diffusion(self, kind: str | DiffusionTerm) -> Structure:
        """Swap the diffusion term (a choice for ``D`` is dropped when the new kind has none)."""
        diff = DiffusionTerm(kind) if isinstance(kind, str) else kind
        params = self.parameters
        if diff.kind == "none":
            params = tuple(p for p in params if p.name != "D")
        return dataclasses.replace(self, diffusion=diff, parameters=params)

    def with_reaction(self, reaction: str) -> Structure:
        """Swap the reaction model; choices for its parameters and closures are dropped,
        the choice for the conductivity ``D`` is kept."""
        params = tuple(p for p in self.parameters if p.name == "D")
        return dataclasses.replace(self, reaction=reaction, closures=(), parameters=params)

    # -- canonical form, equality -----------------------------------------------------
    @functools.cached_property
    def _canonical(self) -> Structure:
        return canonicalise(self)

    def canonical(self) -> Structure:
        """The canonical spelling: validated, canonical reaction name, kind defaults
        filled, closures in state order, every parameter listed in catalog order with
        its value. Raises :class:`StructureError` for invalid structures."""
        return self._canonical

    def _key(self):
        try:
            c = self._canonical
        except (StructureError, KeyError):
            c = self
        return ("Structure", c.to_json())

    def __eq__(self, other):
        if not isinstance(other, Structure):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self):
        return hash(self._key())

    def topology_key(self) -> tuple:
        """The static part (what changes the compiled program): reaction, diffusion kind
        and network sizes, closure targets/kinds/sizes. Free/fixed/per-node choices and
        all values are data and do not enter it."""
        c = self.canonical()
        return (
            c.reaction,
            (c.diffusion.kind, c.diffusion.hidden),
            tuple((k.target, k.kind, k.hidden, k.neighbours) for k in c.closures),
        )

    # -- JSON ---------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """Plain JSON-able dict (lists for tuples); inverse of :meth:`from_dict`."""
        d = self.diffusion
        return {
            "reaction": self.reaction,
            "diffusion": {
                "kind": d.kind,
                "hidden": None if d.hidden is None else list(d.hidden),
                "max_gain": _json_float(d.max_gain),
            },
            "closures": [
                {
                    "target": c.target,
                    "kind": c.kind,
                    "hidden": None if c.hidden is None else list(c.hidden),
                    "neighbours": c.neighbours,
                    "max_rate": _json_float(c.max_rate),
                    "tau_min": _json_float(c.tau_min),
                    "tau_max": _json_float(c.tau_max),
                }
                for c in self.closures
            ],
            "parameters": [
                {"name": p.name, "mode": p.mode, "value": _json_float(p.value)}
                for p in self.parameters
            ],
        }

    def to_json(self, indent: int | None = None) -> str:
        """Lossless JSON text (``Structure.from_json(s.to_json())`` reproduces every field)."""
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    @classmethod
    def from_dict(cls, obj: dict) -> Structure:
        """Parse a dict; missing or unknown fields raise ``ValueError`` naming them."""
        obj = _check_keys(obj, cls, "the structure")
        d = _check_keys(obj["diffusion"], DiffusionTerm, "'diffusion'")
        diffusion = DiffusionTerm(
            _as_str(d["kind"], "diffusion.kind"),
            _as_hidden(d["hidden"], "diffusion.hidden"),
            _parse_float(d["max_gain"], "diffusion.max_gain"),
        )
        if not isinstance(obj["closures"], list):
            raise ValueError("structure JSON: 'closures' must be a list")
        closures = []
        for i, c in enumerate(obj["closures"]):
            c = _check_keys(c, ClosureTerm, f"closures[{i}]")
            if not isinstance(c["neighbours"], bool):
                raise ValueError(f"structure JSON: closures[{i}].neighbours must be true/false")
            closures.append(
                ClosureTerm(
                    _as_str(c["target"], f"closures[{i}].target"),
                    _as_str(c["kind"], f"closures[{i}].kind"),
                    _as_hidden(c["hidden"], f"closures[{i}].hidden"),
                    c["neighbours"],
                    _parse_float(c["max_rate"], f"closures[{i}].max_rate"),
                    _parse_float(c["tau_min"], f"closures[{i}].tau_min"),
                    _parse_float(c["tau_max"], f"closures[{i}].tau_max"),
                )
            )
        if not isinstance(obj["parameters"], list):
            raise ValueError("structure JSON: 'parameters' must be a list")
        params = []
        for i, p in enumerate(obj["parameters"]):
            p = _check_keys(p, ParameterChoice, f"parameters[{i}]")
            params.append(
                ParameterChoice(
                    _as_str(p["name"], f"parameters[{i}].name"),
                    _as_str(p["mode"], f"parameters[{i}].mode"),
                    _parse_float(p["value"], f"parameters[{i}].value"),
                )
            )
        return cls(_as_str(obj["reaction"], "reaction"), diffusion, tuple(closures), tuple(params))

    @classmethod
    def from_json(cls, text: str | bytes | dict) -> Structure:
        """Parse JSON text (or an already decoded dict). Malformed JSON, missing or unknown
        fields, or wrongly typed values raise ``ValueError`` naming the problem. The result
        is not validated against the catalog: call :func:`validate` for that."""
        if isinstance(text, dict):
            return cls.from_dict(text)
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"structure JSON: not valid JSON ({e})") from None
        return cls.from_dict(obj)

    # -- rendering ------------------------------------------------------------------------
    def formula(self, latex: bool = False) -> str:
        """Readable equations (plain text, or LaTeX with ``latex=True``)."""
        return _formula(self, latex=latex)

    def __str__(self):
        try:
            return self.formula()
        except (StructureError, KeyError):
            return repr(self)


__all__ = [
    "CLOSURE_DEFAULT_HIDDEN",
    "CLOSURE_DEFAULT_MAX_RATE",
    "ClosureTerm",
    "DIFFUSION_DEFAULT_HIDDEN",
    "DIFFUSION_DEFAULT_MAX_GAIN",
    "DiffusionTerm",
    "GATE_DEFAULT_TAU_MAX",
    "GATE_DEFAULT_TAU_MIN",
    "PARAMETER_MODES",
    "ParameterChoice",
    "Structure",
    "StructureError",
]
