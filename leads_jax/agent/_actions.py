"""The agent's action space: typed edits of a :class:`~leads_jax.structure.Structure`.

Every action is a pydantic (v2) model with a ``kind`` discriminator, so one JSON schema
(:func:`action_json_schema`, generated from the types, never written by hand) tells an
LLM exactly what it may say, and a reply parses into typed actions or fails with a
message naming the field. :func:`apply_action` applies one action to a structure and
returns a new, valid structure, or raises :class:`ActionRejected` carrying the broken
rule, the action's field and a message phrased so a language model can correct itself.

Kinds:

- ``set_reaction``: choose (or swap) the reaction model; closures and reaction-parameter
  choices of the old model are dropped, the conductivity choice is kept.
- ``set_diffusion``: choose the diffusion operator (``none``, ``laplacian``,
  ``neural-graph``).
- ``add_closure`` / ``remove_closure`` / ``resize_closure``: a bounded neural closure
  on the named state equation (see :mod:`leads_jax.physics.closures`).
- ``set_parameter``: fix a parameter (optionally at a value), free it, or make it
  per-region / per-node.
- ``refine``: warm start from a previous candidate: its fitted physical values become
  the initial values of the parameters both structures share.
- ``stop``: end the search.

A :class:`Proposal` is a list of actions applied in order to a parent candidate (or,
with no parent, to nothing: then its first action must be ``set_reaction``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Annotated, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field

from ..physics.closures import MAX_CLOSURE_RATE, MAX_HIDDEN_LAYERS, MAX_HIDDEN_WIDTH
from ..structure import (
    Catalog,
    ClosureTerm,
    DiffusionTerm,
    Structure,
    StructureError,
    parameter_specs,
    reaction_class,
    validate,
)

__all__ = [
    "Action",
    "ActionRejected",
    "AddClosure",
    "PolicyReply",
    "Proposal",
    "Refine",
    "RemoveClosure",
    "ResizeClosure",
    "SetDiffusion",
    "SetParameter",
    "SetReaction",
    "Stop",
    "action_json_schema",
    "apply_action",
    "apply_proposal",
    "describe_action",
    "reply_json_schema",
]

_STRICT = ConfigDict(extra="forbid", frozen=True)
Hidden = Annotated[
    list[Annotated[int, Field(ge=1, le=MAX_HIDDEN_WIDTH)]],
    Field(min_length=1, max_length=MAX_HIDDEN_LAYERS),
]


class SetReaction(BaseModel):
    """Choose or swap the reaction (cell) model."""

    model_config = _STRICT
    kind: Literal["set_reaction"] = "set_reaction"
    reaction: str = Field(description="a reaction model name of the catalog")


class SetDiffusion(BaseModel):
    """Choose the diffusion operator."""

    model_config = _STRICT
    kind: Literal["set_diffusion"] = "set_diffusion"
    diffusion: Literal["none", "laplacian", "neural-graph"]
    hidden: Hidden | None = Field(None, description="neural-graph only: hidden widths")
    max_gain: float | None = Field(None, description="neural-graph only: gain bound")


class AddClosure(BaseModel):
    """Add a bounded neural closure on the equation of one state."""

    model_config = _STRICT
    kind: Literal["add_closure"] = "add_closure"
    target: str = Field(description="a state name of the current reaction model")
    closure: Literal["additive", "gate"] = "additive"
    hidden: Hidden = Field(default_factory=lambda: [16], description="MLP hidden widths")
    neighbours: bool = Field(False, description="additive only: read neighbour differences")
    max_rate: float | None = Field(
        None, description=f"additive only: cap of the closure, in (0, {MAX_CLOSURE_RATE}]"
    )


class RemoveClosure(BaseModel):
    """Remove the closure on one state equation."""

    model_config = _STRICT
    kind: Literal["remove_closure"] = "remove_closure"
    target: str


class ResizeClosure(BaseModel):
    """Change the hidden widths of an existing closure."""

    model_config = _STRICT
    kind: Literal["resize_closure"] = "resize_closure"
    target: str
    hidden: Hidden


class SetParameter(BaseModel):
    """Fix, free or localise (per region / per node) one physical parameter."""

    model_config = _STRICT
    kind: Literal["set_parameter"] = "set_parameter"
    name: str = Field(description="a parameter of the reaction model, or 'D'")
    mode: Literal["fixed", "free", "per-region", "per-node"]
    value: float | None = Field(
        None, description="fixed value or initial value (physical units); null keeps the current"
    )


class Refine(BaseModel):
    """Warm start from a previous candidate's fitted parameter values."""

    model_config = _STRICT
    kind: Literal["refine"] = "refine"
    candidate: int = Field(ge=0, description="id of a fitted candidate")


class Stop(BaseModel):
    """End the search."""

    model_config = _STRICT
    kind: Literal["stop"] = "stop"
    reason: str = ""


Action = Annotated[
    SetReaction | SetDiffusion | AddClosure | RemoveClosure | ResizeClosure | SetParameter
    | Refine | Stop,
    Field(discriminator="kind"),
]
ACTION_TYPES = (SetReaction, SetDiffusion, AddClosure, RemoveClosure, ResizeClosure,
                SetParameter, Refine, Stop)


class Proposal(BaseModel):
    """A candidate to fit: `actions` applied in order to candidate `parent` (its
    structure; ``null``: start from nothing, the first action is then ``set_reaction``)."""

    model_config = _STRICT
    parent: int | None = Field(None, ge=0, description="id of the candidate to edit, or null")
    actions: list[Action] = Field(min_length=1, max_length=12)
    rationale: str = Field("", max_length=2000)


class PolicyReply(BaseModel):
    """What a policy answers each round: its reasoning and up to K proposals."""

    model_config = _STRICT
    reflection: str = Field("", max_length=4000, description="what to change and why")
    proposals: list[Proposal] = Field(max_length=64)


def action_json_schema() -> dict:
    """The JSON schema of one action (a discriminated union on ``kind``)."""
    return pydantic.TypeAdapter(Action).json_schema()


def reply_json_schema() -> dict:
    """The JSON schema of a :class:`PolicyReply`."""
    return PolicyReply.model_json_schema()


# ---------------------------------------------------------------------------------------
# rejections
# ---------------------------------------------------------------------------------------
class ActionRejected(ValueError):
    """An action cannot be applied. ``rule`` names the rule (a grammar rule of
    :mod:`leads_jax.structure` or an action rule), ``field`` the action's field at
    fault, ``message`` says what to do instead (it is shown to the proposer)."""

    def __init__(self, rule: str, field: str, message: str, *, action: str = ""):
        self.rule = rule
        self.field = field
        self.message = message
        self.action = action
        where = f"{action}.{field}" if action else field
        super().__init__(f"rejected ({rule}) at {where}: {message}")

    def to_dict(self) -> dict:
        return {"rule": self.rule, "field": self.field, "action": self.action,
                "message": self.message}


_RULE_FIELD = {
    "known-reaction": "reaction",
    "known-diffusion": "diffusion",
    "known-closure-kind": "closure",
    "closure-target": "target",
    "gate-closure-on-gate": "closure",
    "one-closure-per-equation": "target",
    "closure-bounded": "max_rate",
    "diffusion-dissipative": "max_gain",
    "network-size": "hidden",
    "field-applies": "kind",
    "known-parameter": "name",
    "one-choice-per-parameter": "name",
    "parameter-mode": "mode",
    "parameter-in-bounds": "value",
    "catalog": "kind",
}


def _checked(structure: Structure, catalog: Catalog | None, action: str) -> Structure:
    try:
        validate(structure, catalog)
        structure.canonical()
    except StructureError as e:
        raise ActionRejected(e.rule, _RULE_FIELD.get(e.rule, "kind"), e.detail,
                             action=action) from None
    return structure


def _number(x) -> float | None:
    """Python float of a numeric value (numpy/JAX scalars included); None passes."""
    if x is None:
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        raise ActionRejected("number", "value", f"{x!r} is not a number") from None
    return v


def apply_action(structure: Structure | None, action, *, catalog: Catalog | None = None,
                 fitted: Mapping[int, tuple[Structure, Mapping[str, float]]] | None = None
                 ) -> Structure:
    """Apply one action; return the new (valid) structure or raise :class:`ActionRejected`.

    **Arguments:**

    - `structure`: the structure to edit (``None``: nothing yet; only ``set_reaction``
      applies).
    - `action`: an action model (or its dict / JSON text).
    - `catalog`: the terms the search may use (default: everything).
    - `fitted`: for ``refine``: ``{candidate id: (structure, {parameter: fitted value})}``.
    """
    if isinstance(action, str | bytes):
        try:
            action = json.loads(action)
        except json.JSONDecodeError as e:
            raise ActionRejected("json", "kind", f"the action is not valid JSON ({e})") from None
    if isinstance(action, Mapping):
        try:
            action = pydantic.TypeAdapter(Action).validate_python(dict(action))
        except pydantic.ValidationError as e:
            raise ActionRejected("schema", _first_loc(e), _pydantic_message(e)) from None
    if not isinstance(action, ACTION_TYPES):
        raise ActionRejected("schema", "kind", f"not an action: {action!r}")
    cat = Catalog.default() if catalog is None else catalog
    kind = action.kind
    if kind == "stop":
        raise ActionRejected("stop-is-not-an-edit", "kind",
                             "'stop' ends the search; it does not edit a structure", action=kind)
    if structure is None and kind != "set_reaction":
        raise ActionRejected(
            "needs-reaction", "kind",
            f"there is no structure yet: start with a 'set_reaction' action (one of "
            f"{list(cat.reactions)}) or give a parent candidate", action=kind)

    if kind == "set_reaction":
        try:
            name = reaction_class(action.reaction).name
        except StructureError as e:
            raise ActionRejected(e.rule, "reaction", f"{e.detail}; the catalog offers "
                                 f"{list(cat.reactions)}", action=kind) from None
        if name not in cat.reactions:
            raise ActionRejected("catalog", "reaction", f"reaction {name!r} is not in this "
                                 f"search's catalog; choose one of {list(cat.reactions)}",
                                 action=kind)
        if structure is None:
            # From nothing: the conductivity is tissue-specific, so it starts free.
            diff = "laplacian" if "laplacian" in cat.diffusions else cat.diffusions[0]
            free = ("D",) if diff != "none" and "free" in cat.parameter_modes else ()
            return _checked(Structure.make(name, diff, free=free), cat, kind)
        return _checked(structure.with_reaction(name), cat, kind)

    s = structure.canonical() if structure is not None else None
    states = reaction_class(s.reaction).state_names
    closures = {c.target: c for c in s.closures}

    if kind == "set_diffusion":
        if action.diffusion not in cat.diffusions:
            raise ActionRejected("catalog", "diffusion", f"diffusion {action.diffusion!r} is "
                                 f"not in this search's catalog; choose one of "
                                 f"{list(cat.diffusions)}", action=kind)
        if action.diffusion != "neural-graph" and (action.hidden or action.max_gain):
            raise ActionRejected("field-applies", "hidden", "hidden and max_gain apply to "
                                 "'neural-graph' only; leave them null", action=kind)
        hidden = None if action.hidden is None else tuple(action.hidden)
        term = DiffusionTerm(action.diffusion, hidden, _number(action.max_gain))
        new = structure.with_diffusion(term)
        if action.diffusion != "none" and "D" not in {p.name for p in new.parameters}:
            new = new.with_parameter("D", "free")
        return _checked(new, cat, kind)

    if kind in ("add_closure", "remove_closure", "resize_closure"):
        if action.target not in states:
            raise ActionRejected("closure-target", "target", f"{action.target!r} is not a state "
                                 f"of {s.reaction}; its states are {list(states)}", action=kind)
        if kind == "add_closure":
            if action.target in closures:
                raise ActionRejected(
                    "one-closure-per-equation", "target",
                    f"state {action.target!r} already has a closure; use 'resize_closure' or "
                    "'remove_closure' on it, or target another state", action=kind)
            if action.closure not in cat.closures:
                raise ActionRejected("catalog", "closure", f"closure kind {action.closure!r} "
                                     f"is not in this search's catalog {list(cat.closures)}",
                                     action=kind)
            if action.closure == "gate":
                if action.max_rate is not None or action.neighbours:
                    raise ActionRejected("field-applies", "max_rate", "max_rate and neighbours "
                                         "apply to additive closures only", action=kind)
                term = ClosureTerm(action.target, "gate", tuple(action.hidden))
            else:
                term = ClosureTerm(action.target, "additive", tuple(action.hidden),
                                   bool(action.neighbours), _number(action.max_rate))
            return _checked(structure.with_closure(term), cat, kind)
        if action.target not in closures:
            have = list(closures) or "none"
            raise ActionRejected("closure-exists", "target", f"state {action.target!r} has no "
                                 f"closure to {kind.split('_')[0]}; closures are on {have}",
                                 action=kind)
        if kind == "remove_closure":
            return _checked(structure.without_closure(action.target), cat, kind)
        old = closures[action.target]
        term = ClosureTerm(old.target, old.kind, tuple(action.hidden), old.neighbours,
                           old.max_rate, old.tau_min, old.tau_max)
        return _checked(structure.with_closure(term), cat, kind)

    if kind == "set_parameter":
        specs = parameter_specs(s)
        if action.name not in specs:
            extra = " (the diffusion is 'none', so there is no D)" if action.name == "D" else ""
            raise ActionRejected("known-parameter", "name", f"{action.name!r} is not a "
                                 f"parameter of this structure{extra}; valid names are "
                                 f"{list(specs)}", action=kind)
        if action.mode != "fixed" and action.mode not in cat.parameter_modes:
            raise ActionRejected("catalog", "mode", f"mode {action.mode!r} is not allowed in "
                                 f"this search; allowed: {list(cat.parameter_modes)}", action=kind)
        value = _number(action.value)
        spec = specs[action.name]
        if value is not None and not (math.isfinite(value) and spec.lower < value < spec.upper):
            raise ActionRejected("parameter-in-bounds", "value", f"{action.name} = {value!r} "
                                 f"must be finite and strictly inside ({spec.lower}, "
                                 f"{spec.upper}) {spec.units}", action=kind)
        return _checked(structure.with_parameter(action.name, action.mode, value), cat, kind)

    if kind == "refine":
        if not fitted or action.candidate not in fitted:
            known = sorted(fitted) if fitted else []
            raise ActionRejected("known-candidate", "candidate", f"no fitted candidate "
                                 f"{action.candidate}; fitted candidates are {known}",
                                 action=kind)
        _, values = fitted[action.candidate]
        new = structure
        specs = parameter_specs(s)
        for p in s.parameters:
            v = values.get(p.name)
            if v is None or p.mode == "fixed":
                continue
            v = float(v)
            spec = specs[p.name]
            if math.isfinite(v) and spec.lower < v < spec.upper:
                new = new.with_parameter(p.name, p.mode, v)
        return _checked(new, cat, kind)

    raise ActionRejected("schema", "kind", f"unknown action kind {kind!r}")  # pragma: no cover


def apply_proposal(proposal: Proposal, structures: Mapping[int, Structure], *,
                   catalog: Catalog | None = None,
                   fitted: Mapping[int, tuple[Structure, Mapping[str, float]]] | None = None
                   ) -> Structure:
    """The structure a proposal describes: its actions applied in order to the parent's
    structure (``structures[parent]``). A ``refine`` action without an explicit earlier
    edit warm starts from the candidate it names. Raises :class:`ActionRejected`
    (``field`` prefixed with the action's position, e.g. ``actions[2].value``)."""
    if proposal.parent is None:
        s = None
    elif proposal.parent not in structures:
        raise ActionRejected("known-candidate", "parent", f"no candidate {proposal.parent}; "
                             f"known candidates are {sorted(structures)}")
    else:
        s = structures[proposal.parent]
    refines = [a for a in proposal.actions if a.kind == "refine"]
    edits = [a for a in proposal.actions if a.kind not in ("refine", "stop")]
    if not edits and not refines:
        raise ActionRejected("nothing-to-fit", "actions", "the proposal has no edit; a "
                             "'stop' must be the only action of its proposal")
    for a in edits:
        try:
            s = apply_action(s, a, catalog=catalog, fitted=fitted)
        except ActionRejected as e:
            pos = proposal.actions.index(a)
            raise ActionRejected(e.rule, f"actions[{pos}].{e.field}", e.message,
                                 action=e.action) from None
    # Warm starts last: fitted values then initialise every parameter the edits kept.
    for a in refines:
        try:
            s = apply_action(s, a, catalog=catalog, fitted=fitted)
        except ActionRejected as e:
            pos = proposal.actions.index(a)
            raise ActionRejected(e.rule, f"actions[{pos}].{e.field}", e.message,
                                 action=e.action) from None
    return s


def _first_loc(err: pydantic.ValidationError) -> str:
    errs = err.errors()
    if not errs:
        return "kind"
    return ".".join(str(x) for x in errs[0].get("loc", ())) or "kind"


def _pydantic_message(err: pydantic.ValidationError) -> str:
    parts = []
    for e in err.errors()[:5]:
        loc = ".".join(str(x) for x in e.get("loc", ()))
        parts.append(f"{loc}: {e.get('msg', '')}")
    return "; ".join(parts)


def describe_action(action) -> str:
    """One line for transcripts and the search tree."""
    d = action.model_dump(exclude_none=True)
    kind = d.pop("kind")
    return kind + "(" + ", ".join(f"{k}={v}" for k, v in d.items()) + ")"

