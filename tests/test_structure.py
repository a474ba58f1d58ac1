"""The grammar: property tests of JSON round-trip, canonical form, validation rules,
distance and catalog subsetting (hypothesis)."""

import dataclasses
import json
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from leads_jax.physics.reactions import REACTIONS
from leads_jax.structure import (
    PARAMETER_MODES,
    Catalog,
    ClosureTerm,
    DiffusionTerm,
    ParameterChoice,
    Structure,
    StructureError,
    structure_distance,
    validate,
)
from leads_jax.structure._validate import parameter_specs

# beartype (the runtime checker behind --jaxtyping-packages) samples one element of each
# tuple argument with the `random` module; hypothesis warns about that during drawing.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Do not use the `random` module:hypothesis.errors.HypothesisDeprecationWarning"
)
SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
ALIASES = {
    "aliev-panfilov": ["aliev-panfilov", "AP", "aliev_panfilov", "AlievPanfilov"],
    "fitzhugh-nagumo": ["fitzhugh-nagumo", "FHN", "FitzHugh_Nagumo"],
    "mitchell-schaeffer": ["mitchell-schaeffer", "MS", "Mitchell Schaeffer"],
    "fenton-karma": ["fenton-karma", "FK"],
    "bueno-orovio": ["bueno-orovio", "BO", "bueno_orovio"],
}


def _hidden():
    return st.one_of(st.none(), st.lists(st.integers(1, 32), min_size=0, max_size=3).map(tuple))


@st.composite
def structures(draw):
    """Random valid structures of every catalog model, spelled in random ways."""
    name = draw(st.sampled_from(sorted(REACTIONS)))
    cls = REACTIONS[name]
    kind = draw(st.sampled_from(["none", "laplacian", "neural-graph"]))
    if kind == "neural-graph":
        diffusion = DiffusionTerm(
            kind, draw(_hidden()), draw(st.one_of(st.none(), st.floats(0.1, 5.0)))
        )
    else:
        diffusion = DiffusionTerm(kind)
    closures = []
    for state in draw(st.lists(st.sampled_from(cls.state_names), unique=True, max_size=3)):
        gate = state in cls.gate_states and draw(st.booleans())
        if gate:
            lo = draw(st.one_of(st.none(), st.floats(0.01, 10.0)))
            hi = draw(st.one_of(st.none(), st.floats(20.0, 1e4)))
            closures.append(ClosureTerm(state, "gate", draw(_hidden()), False, None, lo, hi))
        else:
            rate = draw(st.one_of(st.none(), st.floats(1e-4, 1.0)))
            closures.append(
                ClosureTerm(state, "additive", draw(_hidden()), draw(st.booleans()), rate)
            )
    specs = list(cls.param_specs)
    if kind != "none":
        from leads_jax.physics.diffusion import CONDUCTIVITY_SPEC

        specs.append(CONDUCTIVITY_SPEC)
    params = []
    for spec in draw(st.lists(st.sampled_from(specs), unique_by=lambda s: s.name, max_size=5)):
        value = draw(
            st.one_of(
                st.none(),
                st.floats(spec.lower, spec.upper, exclude_min=True, exclude_max=True),
            )
        )
        params.append(ParameterChoice(spec.name, draw(st.sampled_from(PARAMETER_MODES)), value))
    return Structure(
        draw(st.sampled_from(ALIASES[name])), diffusion, tuple(closures), tuple(params)
    )


def _respell(s: Structure, rnd) -> Structure:
    """Another spelling of the same structure: canonical name, shuffled terms, every
    default written out."""
    c = s.canonical()
    closures = list(s.closures)
    params = list(c.parameters)  # explicit values for every parameter
    rnd.shuffle(closures)
    rnd.shuffle(params)
    return Structure(c.reaction, s.diffusion, tuple(closures), tuple(params))


@SETTINGS
@given(structures(), st.randoms())
def test_json_round_trip_and_canonical_form(s, rnd):
    validate(s)
    text = s.to_json()
    back = Structure.from_json(text)
    assert back.to_dict() == s.to_dict()  # lossless, field by field
    assert back == s and hash(back) == hash(s)
    c = s.canonical()
    assert c.canonical().to_dict() == c.to_dict()  # idempotent
    assert c == s and hash(c) == hash(s)
    other = _respell(s, rnd)
    assert other == s and hash(other) == hash(s)
    assert structure_distance(s, other) == 0
    assert Structure.from_json(json.loads(c.to_json())) == c
    # The topology ignores parameter modes and values.
    freed = s
    for p in parameter_specs(s):
        freed = freed.with_parameter(p, "per-node")
    assert freed.topology_key() == s.topology_key()
    # Rendering works and names every state.
    text = s.formula()
    latex = s.formula(latex=True)
    for state in REACTIONS[c.reaction].state_names:
        assert f"d{state}/dt" in text
    assert latex.startswith("\\begin{aligned}")


BREAKERS = [
    ("known-reaction", lambda s: dataclasses.replace(s, reaction="hodgkin-huxley")),
    ("known-diffusion", lambda s: dataclasses.replace(s, diffusion=DiffusionTerm("fractional"))),
    ("diffusion-dissipative", lambda s: dataclasses.replace(
        s, diffusion=DiffusionTerm("neural-graph", (4,), math.inf))),
    ("field-applies", lambda s: dataclasses.replace(
        s, diffusion=DiffusionTerm("laplacian", (4,)))),
    ("network-size", lambda s: dataclasses.replace(
        s, diffusion=DiffusionTerm("neural-graph", (0,)))),
    ("closure-target", lambda s: s.with_closure(ClosureTerm("calcium"))),
    ("known-closure-kind", lambda s: s.with_closure(ClosureTerm("u", "transformer"))),
    ("gate-closure-on-gate", lambda s: s.with_closure(ClosureTerm("u", "gate"))),
    ("closure-bounded", lambda s: s.with_closure(ClosureTerm("u", max_rate=50.0))),
    ("closure-bounded", lambda s: s.with_closure(ClosureTerm("u", max_rate=-0.1))),
    ("one-closure-per-equation", lambda s: dataclasses.replace(
        s, closures=(ClosureTerm("u"), ClosureTerm("u", hidden=(3,))))),
    ("known-parameter", lambda s: s.with_parameter("not_a_parameter", "free")),
    ("parameter-mode", lambda s: s.with_parameter(
        REACTIONS[s.canonical().reaction].param_specs[0].name, "learned")),
    ("parameter-in-bounds", lambda s: s.with_parameter(
        REACTIONS[s.canonical().reaction].param_specs[0].name, "free", 1e9)),
    ("parameter-in-bounds", lambda s: s.with_parameter(
        REACTIONS[s.canonical().reaction].param_specs[0].name, "fixed", math.nan)),
    ("one-choice-per-parameter", lambda s: dataclasses.replace(
        s, parameters=s.parameters + (ParameterChoice("D"), ParameterChoice("D", "fixed")))),
]


@SETTINGS
@given(structures(), st.sampled_from(BREAKERS))
def test_invalid_structures_are_rejected_naming_the_rule(s, breaker):
    rule, breaks = breaker
    if rule == "one-choice-per-parameter":
        s = s.with_diffusion("laplacian")
    bad = breaks(s)
    with pytest.raises(StructureError) as info:
        validate(bad)
    assert info.value.rule == rule
    assert rule in str(info.value)
    assert isinstance(info.value, ValueError)
    # Invalid structures still round-trip through JSON (the agent can store them).
    assert Structure.from_json(bad.to_json()).to_dict() == bad.to_dict()


@SETTINGS
@given(structures(), structures(), structures())
def test_distance_is_a_metric(a, b, c):
    d = structure_distance
    assert d(a, a) == 0
    assert d(a, b) == d(b, a)
    assert d(a, c) <= d(a, b) + d(b, c)
    assert d(a, b) >= (a.topology_key() != b.topology_key())


def test_distance_counts_terms():
    base = Structure.make("aliev-panfilov", free=("a", "D"))
    assert structure_distance(base, base.with_closure(ClosureTerm("v"))) == 1  # added
    assert structure_distance(base, base.with_parameter("k", "free")) == 1  # freed
    assert structure_distance(base, base.with_parameter("a", "per-region")) == 1  # localised
    assert structure_distance(base, base.with_diffusion("neural-graph")) == 1  # swapped
    swapped = base.with_reaction("fitzhugh-nagumo")
    assert structure_distance(base, swapped) == 2  # reaction + its free parameter 'a'
    assert structure_distance(base, base.with_parameter("a", "free", 0.1)) == 0  # values


def test_json_errors_name_the_problem():
    good = json.loads(Structure.make("AP").to_json())
    missing = dict(good)
    del missing["closures"]
    with pytest.raises(ValueError, match=r"missing field\(s\) \['closures'\]"):
        Structure.from_json(json.dumps(missing))
    extra = dict(good, colour="red")
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['colour'\]"):
        Structure.from_json(json.dumps(extra))
    nested = json.loads(json.dumps(good))
    nested["diffusion"]["conductivity"] = 1.0
    with pytest.raises(ValueError, match=r"'diffusion' has unknown field\(s\) \['conductivity'\]"):
        Structure.from_json(json.dumps(nested))
    nested = json.loads(Structure.make("AP", free=("a",)).to_json())
    del nested["parameters"][0]["mode"]
    with pytest.raises(ValueError, match=r"parameters\[0\] has missing field\(s\) \['mode'\]"):
        Structure.from_json(nested)
    with pytest.raises(ValueError, match="not valid JSON"):
        Structure.from_json("{reaction: AP")
    bad_type = dict(good, reaction=3)
    with pytest.raises(ValueError, match="reaction must be a string"):
        Structure.from_json(bad_type)
    with pytest.raises(StructureError, match="unknown reaction model 'HH'"):
        validate(Structure("HH"))


def test_catalog_subsetting():
    full = Catalog.default()
    assert set(full.reactions) == set(REACTIONS)
    no_bo = full.without("BO")
    assert "bueno-orovio" not in no_bo.reactions and len(no_bo.reactions) == len(REACTIONS) - 1
    bo = Structure.make("bueno-orovio")
    assert full.allows(bo) and not no_bo.allows(bo)
    with pytest.raises(StructureError, match="catalog"):
        validate(bo, catalog=no_bo)
    assert no_bo.without("neural-graph", "gate").allows(Structure.make("AP"))
    assert not full.without("neural-graph").allows(Structure.make("AP", "neural-graph"))
    assert not full.without("per-node").allows(Structure.make("AP", per_node=("a",)))
    with pytest.raises(ValueError, match="unknown catalog term 'hodgkin'"):
        full.without("hodgkin")
    only = full.only("aliev-panfilov", "FHN")
    assert only.reactions == ("aliev-panfilov", "fitzhugh-nagumo")
    assert len(only.base_structures()) == 2 * len(only.diffusions)
    meta = only.metadata()
    json.dumps(meta)
    assert set(meta["reactions"]) == {"aliev-panfilov", "fitzhugh-nagumo"}


def test_formula_example():
    s = Structure.make(
        "aliev-panfilov", "laplacian", free=("k",), per_region=("D",), values={"a": 0.12}
    ).with_closure(ClosureTerm("v", max_rate=0.05))
    text = s.formula()
    assert "du/dt = f_u[aliev-panfilov](u, v) + div(D grad u) + I_stim(t)" in text
    assert "s_v*tanh(NN_v(u, v)) [|.| <= 0.05/ms]" in text
    assert "trainable: k (free), D (per region)" in text
    assert "a=0.12" in text
    latex = s.formula(latex=True)
    assert r"\hat{D}_{r(x)}" in latex and r"\hat{k}" in latex and "a=0.12" in latex
