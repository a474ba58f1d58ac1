"""Validation rules of the grammar and the canonical form.

Every rule has a name (``StructureError.rule``); the rules keep each sentence
interpretable and stable:

- ``known-reaction``: the reaction model is in the catalog.
- ``known-diffusion``: the diffusion kind is in the catalog.
- ``known-closure-kind``: each closure kind is ``additive`` or ``gate``.
- ``closure-target``: each closure names a state of the reaction model (its physical
  role: a correction to, or the replacement of, that state's equation).
- ``gate-closure-on-gate``: a gate closure replaces a gate equation of the model.
- ``one-closure-per-equation``: at most one closure per state equation.
- ``closure-bounded``: neural closures are bounded: ``0 < max_rate <= MAX_CLOSURE_RATE``;
  ``MIN_GATE_TAU <= tau_min < tau_max <= MAX_GATE_TAU``, all finite.
- ``diffusion-dissipative``: the neural diffusion's gain bound is finite and in
  ``(0, MAX_NEURAL_GAIN]``, so its conductance stays positive and bounded.
- ``network-size``: hidden widths are integers in ``[1, MAX_HIDDEN_WIDTH]``, at most
  ``MAX_HIDDEN_LAYERS`` layers.
- ``field-applies``: a field is only set for the kind it belongs to (e.g. ``max_rate``
  not on a gate closure, ``hidden`` not on the Laplacian).
- ``known-parameter``: each parameter choice names a parameter of the reaction model or
  the conductivity ``D`` of a diffusion term that has one.
- ``one-choice-per-parameter``: at most one choice per parameter.
- ``parameter-mode``: the mode is one of ``fixed``, ``free``, ``per-region``, ``per-node``.
- ``parameter-in-bounds``: a given value is finite and strictly inside the parameter's
  bounds (its constrained parameterisation).
- ``catalog``: with a :class:`Catalog`, every term is in the catalog.
"""

from __future__ import annotations

import dataclasses
import math

from ..physics.closures import (
    MAX_CLOSURE_RATE,
    MAX_GATE_TAU,
    MAX_HIDDEN_LAYERS,
    MAX_HIDDEN_WIDTH,
    MIN_GATE_TAU,
)
from ..physics.diffusion import CONDUCTIVITY_SPEC, DIFFUSION_KINDS, MAX_NEURAL_GAIN
from ..physics.reactions import get_reaction
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

CLOSURE_KIND_NAMES = ("additive", "gate")


def reaction_class(name: str):
    """The reaction class for `name` (aliases accepted); unknown -> ``StructureError``."""
    if not isinstance(name, str):
        raise StructureError("known-reaction", f"reaction must be a name, got {name!r}")
    try:
        return get_reaction(name)
    except KeyError as e:
        raise StructureError("known-reaction", str(e.args[0] if e.args else e)) from None


def parameter_specs(structure):
    """``{name: ParamSpec}`` of every parameter the structure has (reaction + ``D``)."""
    cls = reaction_class(structure.reaction)
    specs = {s.name: s for s in cls.param_specs}
    diff_cls = DIFFUSION_KINDS.get(structure.diffusion.kind)
    if diff_cls is not None and diff_cls.uses_conductivity:
        specs[CONDUCTIVITY_SPEC.name] = CONDUCTIVITY_SPEC
    return specs


def _check_hidden(hidden, where):
    if hidden is None:
        return
    if len(hidden) > MAX_HIDDEN_LAYERS:
        raise StructureError(
            "network-size", f"{where} has {len(hidden)} hidden layers; at most {MAX_HIDDEN_LAYERS}"
        )
    for h in hidden:
        if not isinstance(h, int) or isinstance(h, bool) or not (1 <= h <= MAX_HIDDEN_WIDTH):
            raise StructureError(
                "network-size",
                f"{where} hidden width {h!r} must be an integer in [1, {MAX_HIDDEN_WIDTH}]",
            )


def _finite_in(x, lo, hi, rule, what, lo_open=True):
    ok = isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)
    ok = ok and (lo < x if lo_open else lo <= x) and x <= hi
    if not ok:
        bracket = "(" if lo_open else "["
        raise StructureError(rule, f"{what} = {x!r} must be finite and in {bracket}{lo}, {hi}]")


def validate(structure, catalog=None):
    """Check every rule (see the module docstring) of a
    :class:`~leads_jax.structure.Structure`; raise :class:`StructureError` (a
    ``ValueError``) naming the first rule broken. Returns `structure` unchanged."""
    if type(structure).__name__ != "Structure" or not dataclasses.is_dataclass(structure):
        raise TypeError(f"expected a Structure, got {type(structure).__name__}")
    cls = reaction_class(structure.reaction)
    states = cls.state_names

    # diffusion
    d = structure.diffusion
    if not isinstance(d, DiffusionTerm):
        raise StructureError("known-diffusion", f"diffusion must be a DiffusionTerm, got {d!r}")
    if d.kind not in DIFFUSION_KINDS:
        raise StructureError(
            "known-diffusion",
            f"unknown diffusion kind {d.kind!r}; valid kinds are {sorted(DIFFUSION_KINDS)}",
        )
    if d.kind == "neural-graph":
        _check_hidden(d.hidden, "the neural diffusion")
        if d.max_gain is not None:
            _finite_in(
                d.max_gain, 0.0, MAX_NEURAL_GAIN, "diffusion-dissipative", "diffusion.max_gain"
            )
    else:
        for f in ("hidden", "max_gain"):
            if getattr(d, f) is not None:
                raise StructureError(
                    "field-applies", f"diffusion.{f} applies to 'neural-graph' only, not {d.kind!r}"
                )

    # closures
    seen_targets = set()
    for i, c in enumerate(structure.closures):
        where = f"closures[{i}]"
        if not isinstance(c, ClosureTerm):
            raise StructureError("known-closure-kind", f"{where} must be a ClosureTerm, got {c!r}")
        if c.kind not in CLOSURE_KIND_NAMES:
            raise StructureError(
                "known-closure-kind",
                f"{where}: unknown closure kind {c.kind!r}; valid kinds are {CLOSURE_KIND_NAMES}",
            )
        if c.target not in states:
            raise StructureError(
                "closure-target",
                f"{where}: target {c.target!r} is not a state of {cls.name} (states: {states})",
            )
        if c.kind == "gate" and c.target not in cls.gate_states:
            raise StructureError(
                "gate-closure-on-gate",
                f"{where}: a gate closure replaces a gate equation, but {c.target!r} is not a "
                f"gate of {cls.name} (gates: {tuple(cls.gate_states) or 'none'})",
            )
        if c.target in seen_targets:
            raise StructureError(
                "one-closure-per-equation", f"{where}: a second closure on state {c.target!r}"
            )
        seen_targets.add(c.target)
        _check_hidden(c.hidden, where)
        if not isinstance(c.neighbours, bool):
            raise StructureError("field-applies", f"{where}.neighbours must be a bool")
        if c.kind == "additive":
            for f in ("tau_min", "tau_max"):
                if getattr(c, f) is not None:
                    raise StructureError(
                        "field-applies", f"{where}.{f} applies to gate closures only"
                    )
            if c.max_rate is not None:
                _finite_in(
                    c.max_rate, 0.0, MAX_CLOSURE_RATE, "closure-bounded", f"{where}.max_rate"
                )
        else:
            if c.max_rate is not None:
                raise StructureError("field-applies", f"{where}.max_rate applies to additive only")
            if c.neighbours:
                raise StructureError(
                    "field-applies", f"{where}.neighbours applies to additive closures only"
                )
            lo = GATE_DEFAULT_TAU_MIN if c.tau_min is None else c.tau_min
            hi = GATE_DEFAULT_TAU_MAX if c.tau_max is None else c.tau_max
            _finite_in(lo, MIN_GATE_TAU, MAX_GATE_TAU, "closure-bounded", f"{where}.tau_min", False)
            _finite_in(hi, MIN_GATE_TAU, MAX_GATE_TAU, "closure-bounded", f"{where}.tau_max", False)
            if not lo < hi:
                raise StructureError(
                    "closure-bounded", f"{where}: tau_min = {lo} must be below tau_max = {hi}"
                )

    # parameters
    specs = parameter_specs(structure)
    seen = set()
    for i, p in enumerate(structure.parameters):
        where = f"parameters[{i}]"
        if not isinstance(p, ParameterChoice):
            raise StructureError("known-parameter", f"{where} must be a ParameterChoice, got {p!r}")
        if p.name not in specs:
            extra = "" if d.kind != "none" or p.name != "D" else " (diffusion is 'none')"
            raise StructureError(
                "known-parameter",
                f"{where}: {p.name!r} is not a parameter of this structure{extra}; "
                f"valid names are {tuple(specs)}",
            )
        if p.name in seen:
            raise StructureError(
                "one-choice-per-parameter", f"{where}: a second choice for {p.name!r}"
            )
        seen.add(p.name)
        if p.mode not in PARAMETER_MODES:
            raise StructureError(
                "parameter-mode",
                f"{where}: mode {p.mode!r} of {p.name!r} is not one of {PARAMETER_MODES}",
            )
        if p.value is not None:
            s = specs[p.name]
            v = p.value
            ok = isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
            if not (ok and s.lower < v < s.upper):
                raise StructureError(
                    "parameter-in-bounds",
                    f"{where}: {p.name} = {v!r} must be finite and strictly inside "
                    f"({s.lower}, {s.upper}) {s.units}",
                )

    if catalog is not None:
        catalog.check(structure)
    return structure


def canonicalise(structure):
    """The canonical spelling of a valid structure (see :meth:`Structure.canonical`)."""
    validate(structure)
    cls = reaction_class(structure.reaction)
    d = structure.diffusion
    if d.kind == "neural-graph":
        diffusion = DiffusionTerm(
            d.kind,
            DIFFUSION_DEFAULT_HIDDEN if d.hidden is None else tuple(d.hidden),
            DIFFUSION_DEFAULT_MAX_GAIN if d.max_gain is None else float(d.max_gain),
        )
    else:
        diffusion = DiffusionTerm(d.kind)
    closures = []
    for c in structure.closures:
        hidden = CLOSURE_DEFAULT_HIDDEN if c.hidden is None else tuple(c.hidden)
        if c.kind == "additive":
            rate = CLOSURE_DEFAULT_MAX_RATE if c.max_rate is None else float(c.max_rate)
            closures.append(ClosureTerm(c.target, "additive", hidden, bool(c.neighbours), rate))
        else:
            lo = GATE_DEFAULT_TAU_MIN if c.tau_min is None else float(c.tau_min)
            hi = GATE_DEFAULT_TAU_MAX if c.tau_max is None else float(c.tau_max)
            closures.append(ClosureTerm(c.target, "gate", hidden, False, None, lo, hi))
    order = {s: i for i, s in enumerate(cls.state_names)}
    closures.sort(key=lambda c: order[c.target])
    chosen = {p.name: p for p in structure.parameters}
    params = []
    for name, spec in parameter_specs(structure).items():
        p = chosen.get(name, ParameterChoice(name, "fixed", None))
        value = float(spec.default if p.value is None else p.value)
        params.append(ParameterChoice(name, p.mode, value))
    return dataclasses.replace(structure, reaction=cls.name, diffusion=diffusion,
                               closures=tuple(closures), parameters=tuple(params))


__all__ = ["canonicalise", "parameter_specs", "reaction_class", "validate"]
