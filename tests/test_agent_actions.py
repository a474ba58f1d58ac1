"""The agent's action space: typed actions, JSON schema from the types, precise
rejections, and the catalog documentation rendered from the code (no fitting here)."""

from __future__ import annotations

import json

import numpy as np
import pydantic
import pytest

from leads_jax.agent import (
    ActionRejected,
    AddClosure,
    PolicyReply,
    Proposal,
    Refine,
    RemoveClosure,
    ResizeClosure,
    SetDiffusion,
    SetParameter,
    SetReaction,
    action_json_schema,
    apply_action,
    apply_proposal,
    render_catalog_doc,
    reply_json_schema,
)
from leads_jax.physics.reactions import REACTIONS
from leads_jax.structure import Catalog, Structure

AP = Structure.make("aliev-panfilov", free=("D",))


def test_schema_is_generated_and_names_every_kind():
    schema = action_json_schema()
    kinds = set(schema["discriminator"]["mapping"])
    assert kinds == {"set_reaction", "set_diffusion", "add_closure", "remove_closure",
                     "resize_closure", "set_parameter", "refine", "stop"}
    reply = reply_json_schema()
    assert "proposals" in reply["properties"] and "reflection" in reply["properties"]
    json.dumps(reply)  # JSON-able


def test_reply_round_trip_and_unknown_kind():
    text = json.dumps({"reflection": "x", "proposals": [
        {"parent": None, "actions": [{"kind": "set_reaction", "reaction": "FHN"},
                                     {"kind": "set_parameter", "name": "a", "mode": "free"}]}]})
    reply = PolicyReply.model_validate_json(text)
    assert isinstance(reply.proposals[0].actions[1], SetParameter)
    with pytest.raises(pydantic.ValidationError, match="does not match any of the expected"):
        PolicyReply.model_validate({"proposals": [{"actions": [{"kind": "delete_all"}]}]})
    with pytest.raises(pydantic.ValidationError, match="Extra inputs"):
        SetParameter.model_validate({"name": "a", "mode": "free", "code": "import os"})


def test_apply_each_kind():
    s = apply_action(None, SetReaction(reaction="AP"))
    assert s.canonical().reaction == "aliev-panfilov"
    assert {p.name: p.mode for p in s.canonical().parameters}["D"] == "free"
    s = apply_action(s, SetParameter(name="k", mode="per-region", value=np.float32(9.0)))
    assert {p.name: (p.mode, p.value) for p in s.canonical().parameters}["k"] == ("per-region",
                                                                                 9.0)
    s = apply_action(s, AddClosure(target="v", hidden=[8]))
    s = apply_action(s, ResizeClosure(target="v", hidden=[32, 8]))
    assert s.canonical().closures[0].hidden == (32, 8)
    s2 = apply_action(s, RemoveClosure(target="v"))
    assert s2.canonical().closures == ()
    s3 = apply_action(s, SetDiffusion(diffusion="neural-graph", hidden=[4]))
    assert s3.canonical().diffusion.kind == "neural-graph"
    s4 = apply_action(s, SetReaction(reaction="mitchell-schaeffer"))
    assert s4.canonical().reaction == "mitchell-schaeffer" and s4.canonical().closures == ()
    gate = apply_action(s4, AddClosure(target="h", closure="gate"))
    assert gate.canonical().closures[0].kind == "gate"


@pytest.mark.parametrize("action, rule, field", [
    (AddClosure(target="x"), "closure-target", "target"),
    (RemoveClosure(target="u"), "closure-exists", "target"),
    (SetParameter(name="nope", mode="free"), "known-parameter", "name"),
    (SetParameter(name="a", mode="free", value=7.0), "parameter-in-bounds", "value"),
    (SetParameter(name="a", mode="free", value=float("nan")), "parameter-in-bounds", "value"),
    (SetReaction(reaction="hodgkin-huxley"), "known-reaction", "reaction"),
    (AddClosure(target="v", closure="gate"), "gate-closure-on-gate", "closure"),
    (AddClosure(target="u", max_rate=5.0), "closure-bounded", "max_rate"),
    (SetDiffusion(diffusion="laplacian", hidden=[4]), "field-applies", "hidden"),
    (Refine(candidate=3), "known-candidate", "candidate"),
])
def test_rejections_name_rule_and_field(action, rule, field):
    with pytest.raises(ActionRejected) as e:
        apply_action(AP, action)
    assert (e.value.rule, e.value.field) == (rule, field)
    assert e.value.message and e.value.to_dict()["rule"] == rule


def test_catalog_restricts_actions():
    cat = Catalog.default().only("aliev-panfilov", "fitzhugh-nagumo").without("gate")
    with pytest.raises(ActionRejected, match="not in this search's catalog") as e:
        apply_action(AP, SetReaction(reaction="MS"), catalog=cat)
    assert e.value.rule == "catalog"
    with pytest.raises(ActionRejected) as e:
        apply_action(None, SetParameter(name="a", mode="free"))
    assert e.value.rule == "needs-reaction"


def test_proposal_with_refine_warm_starts():
    fitted = {0: (AP, {"D": 0.0012, "a": 0.2})}
    p = Proposal(parent=0, actions=[SetParameter(name="a", mode="free"), Refine(candidate=0)])
    s = apply_proposal(p, {0: AP}, fitted=fitted).canonical()
    vals = {q.name: (q.mode, q.value) for q in s.parameters}
    assert vals["a"] == ("free", 0.2) and vals["D"] == ("free", 0.0012)
    assert vals["k"] == ("fixed", 8.0)  # fixed ones keep their value
    bad = Proposal(parent=0, actions=[SetParameter(name="a", mode="free", value=-1.0)])
    with pytest.raises(ActionRejected) as e:
        apply_proposal(bad, {0: AP})
    assert e.value.field == "actions[0].value"
    with pytest.raises(ActionRejected, match="no candidate 5"):
        apply_proposal(Proposal(parent=5, actions=[Refine(candidate=5)]), {0: AP})


def test_catalog_doc_names_every_entry():
    cat = Catalog.default()
    doc = render_catalog_doc(cat)
    meta = cat.metadata()
    for name, m in meta["reactions"].items():
        assert f"### {name}" in doc
        for p in m["parameters"]:
            assert f"  - {p['name']}: {p['role']}" in doc
        for s in m["states"]:
            assert s in doc
    for kind in list(meta["diffusion"]) + list(meta["closures"]):
        assert f"### {kind}" in doc
    for mode in ("fixed", "free", "per-region", "per-node"):
        assert f"- {mode}:" in doc
    for rule in ("closure-bounded", "parameter-in-bounds", "one-closure-per-equation"):
        assert rule in doc
    assert set(REACTIONS) == set(meta["reactions"])
    small = render_catalog_doc(cat.without("bueno-orovio"))
    assert "### bueno-orovio" not in small and "### aliev-panfilov" in small
