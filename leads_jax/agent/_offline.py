"""Built-in policies that need no network: the diagnostic-guided beam search (LEADS'
default), random search over the grammar, and a fixed hand-designed hybrid.

:class:`OfflinePolicy` (deterministic for a seed):

- **round 0**: every catalog reaction model, physics only (diffusion: the Laplacian
  where the catalog has it and the geometry has edges), with the conductivity ``D``
  free and the reaction parameters at their catalog values;
- **later rounds**: the beam (the `beam` best stable candidates by validation error) is
  expanded by edits, each warm started from its parent's fitted values (``refine``):

  ========================  ==================================================
  ``free-reaction``         free every reaction parameter still fixed
  ``per-region``            conductivity per region (meshes with regions)
  ``closure-voltage``       additive closure on the voltage equation
  ``closure-recovery``      closure on the second state (a gate closure on a gate)
  ``grow-closure``          double the hidden width of an existing closure
  ``remove-closure``        drop a closure (a hybrid that does not generalise)
  ``neural-diffusion``      potential-dependent conduction (CV mismatch)
  ========================  ==================================================

  The order comes from the last **reflection** (:meth:`OfflinePolicy.reflect`), which
  reads the observations of the beam: where the error lives (phase, region, early vs
  late), the generalisation verdict, conduction velocity and APD against the data, and
  writes a ``plan:`` line. Without a reflection (the no-reflection ablation) the order
  is the fixed one of the table. Parents are taken round-robin, candidates already in
  memory are skipped.

With no observations and ``k`` larger than the catalog (the one-round ablation), the
seeds are followed by the blind expansions of each seed (structures only, no warm
start), best-first in catalog order.
"""

from __future__ import annotations

import math
import re

import jax
import numpy as np

from ..structure import Structure, reaction_class
from ._actions import (
    ActionRejected,
    AddClosure,
    Proposal,
    Refine,
    RemoveClosure,
    ResizeClosure,
    SetDiffusion,
    SetParameter,
    SetReaction,
    apply_proposal,
)
from ._policy import AgentContext, Policy, candidate_key

__all__ = ["FixedPolicy", "OfflinePolicy", "RandomPolicy", "EXPANSIONS"]

EXPANSIONS = ("free-reaction", "per-region", "closure-voltage", "closure-recovery",
              "grow-closure", "remove-closure", "neural-diffusion")


def _stable_sorted(obs):
    good = [o for o in obs if o.stable and math.isfinite(o.val_rmse)]
    return sorted(good, key=lambda o: (o.val_rmse, o.n_params, o.id))


def seed_proposals(context: AgentContext) -> list[Proposal]:
    """One physics-only proposal per catalog reaction model (``D`` free)."""
    cat = context.catalog
    diff = "laplacian" if "laplacian" in cat.diffusions else cat.diffusions[0]
    out = []
    for r in cat.reactions:
        acts = [SetReaction(reaction=r)]
        if diff != "laplacian":
            acts.append(SetDiffusion(diffusion=diff))
        out.append(Proposal(parent=None, actions=acts,
                            rationale=f"{r}, physics only: which cell model explains the data?"))
    return out


def expansion_actions(name: str, structure: Structure, context: AgentContext) -> list | None:
    """The actions of one named expansion of `structure` (None: does not apply)."""
    s = structure.canonical()
    cls = reaction_class(s.reaction)
    states = cls.state_names
    closures = {c.target: c for c in s.closures}
    cat = context.catalog
    if name == "free-reaction":
        fixed = [p.name for p in s.parameters if p.mode == "fixed" and p.name != "D"]
        return [SetParameter(name=n, mode="free") for n in fixed] or None
    if name == "per-region":
        if context.n_regions < 2 or "per-region" not in cat.parameter_modes:
            return None
        if s.diffusion.kind == "none":
            return None
        if any(p.name == "D" and p.mode == "per-region" for p in s.parameters):
            return None
        return [SetParameter(name="D", mode="per-region")]
    if name in ("closure-voltage", "closure-recovery"):
        if "additive" not in cat.closures and "gate" not in cat.closures:
            return None
        target = states[0] if name == "closure-voltage" else (states[1] if len(states) > 1
                                                               else None)
        if target is None or target in closures:
            return None
        if target in cls.gate_states and "gate" in cat.closures:
            return [AddClosure(target=target, closure="gate", hidden=[16])]
        if "additive" not in cat.closures:
            return None
        return [AddClosure(target=target, closure="additive", hidden=[16])]
    if name == "grow-closure":
        for t, c in closures.items():
            width = max(c.hidden)
            if width < 64:
                return [ResizeClosure(target=t, hidden=[min(64, 2 * h) for h in c.hidden])]
        return None
    if name == "remove-closure":
        if not closures:
            return None
        return [RemoveClosure(target=next(iter(closures)))]
    if name == "neural-diffusion":
        if "neural-graph" not in cat.diffusions or s.diffusion.kind != "laplacian":
            return None
        return [SetDiffusion(diffusion="neural-graph")]
    raise ValueError(f"unknown expansion {name!r}; known: {EXPANSIONS}")


def diagnose(o, noise: float) -> tuple[list[str], list[str]]:
    """``(plan, reasons)``: expansions in the order the observation `o` suggests."""
    plan, why = [], []
    closured = o.closure_rms > 0
    if closured and o.verdict in ("degrades", "fails-to-extrapolate", "unstable"):
        plan.append("remove-closure")
        why.append(f"#{o.id} is a hybrid whose held-out error is {o.ratio:.3g}x its training "
                   "error: the closure does not generalise")
    if o.params is not None:
        plan.append("free-reaction")
        why.append("freeing the reaction parameters costs no new compilation and lets the "
                   "physics explain what it can")
    if o.rmse_by_region and len(o.rmse_by_region) > 1:
        vals = [v for v in o.rmse_by_region.values() if math.isfinite(v)]
        if vals and max(vals) > 1.5 * float(np.median(vals)):
            plan.append("per-region")
            why.append("the error concentrates in one region: heterogeneous tissue")
    if math.isfinite(o.cv_model) and math.isfinite(o.cv_data) and o.cv_data > 0:
        if abs(o.cv_model - o.cv_data) > 0.2 * o.cv_data:
            plan.append("neural-diffusion")
            why.append(f"conduction velocity {o.cv_model:.3g} vs data {o.cv_data:.3g} cm/ms")
    phase = max(o.rmse_by_phase, key=lambda k: o.rmse_by_phase[k]
                if math.isfinite(o.rmse_by_phase[k]) else -1) if o.rmse_by_phase else ""
    above_noise = o.train_rmse > 1.5 * max(noise, 1e-6)
    if above_noise:
        if phase in ("upstroke", "plateau"):
            plan += ["closure-voltage", "closure-recovery"]
            why.append(f"the error lives in the {phase}: a missing current in the voltage "
                       "equation")
        else:
            plan += ["closure-recovery", "closure-voltage"]
            why.append(f"the error lives in the {phase or 'recovery'}: the recovery dynamics "
                       "are off")
        if closured:
            plan.append("grow-closure")
            why.append("the hybrid still misses the training data: a wider closure")
    else:
        why.append(f"training error {o.train_rmse:.3g} mV is within 1.5x the noise "
                   f"({noise:.3g} mV): no closure needed")
    seen, out = set(), []
    for p in plan:
        if p not in seen:
            seen.add(p)
            out.append(p)
    return out, why


def _parse_plan(text: str) -> list[str] | None:
    m = re.search(r"^plan:\s*(.*)$", text or "", flags=re.MULTILINE)
    if not m:
        return None
    names = [x.strip() for x in m.group(1).split(",") if x.strip()]
    return [n for n in names if n in EXPANSIONS]


class OfflinePolicy(Policy):
    """The diagnostic-guided beam search (module docstring). `beam`: parents expanded
    per round; `seed`: tie-breaking among equal scores (the search is otherwise
    deterministic)."""

    name = "offline"

    def __init__(self, *, beam: int = 2, seed: int = 0):
        if beam < 1:
            raise ValueError(f"OfflinePolicy: beam must be >= 1; got {beam}")
        self.beam = int(beam)
        self.seed = int(seed)

    def _accept(self, proposal, context, taken) -> bool:
        try:
            s = apply_proposal(proposal, context.structures, catalog=context.catalog,
                               fitted=context.fitted)
        except ActionRejected:
            return False
        key = candidate_key(s)
        if key in context.tried or key in taken:
            return False
        taken.add(key)
        return True

    def propose(self, context: AgentContext, k: int, *, key) -> list[Proposal]:
        taken: set[str] = set()
        out: list[Proposal] = []
        if not context.observations:
            seeds = [p for p in seed_proposals(context) if self._accept(p, context, taken)]
            out += seeds[:k]
            if len(out) < k:  # one-round: blind expansions of the seeds, best-first
                for name in EXPANSIONS:
                    for p in seeds:
                        s = apply_proposal(p, {}, catalog=context.catalog)
                        acts = expansion_actions(name, s, context)
                        if acts is None:
                            continue
                        q = Proposal(parent=None, actions=list(p.actions) + acts,
                                     rationale=f"blind {name} of {s.reaction}")
                        if len(out) < k and self._accept(q, context, taken):
                            out.append(q)
            return out[:k]
        ranked = _stable_sorted(context.observations)
        if not ranked:
            # Nothing stable: reseed the reaction models not tried yet.
            return [p for p in seed_proposals(context) if self._accept(p, context, taken)][:k]
        beam = ranked[: self.beam]
        # tie-break parents of equal score with the seed (deterministic)
        rng = np.random.default_rng([self.seed, context.round])
        order = _parse_plan(context.last_reflection)
        plans = []
        for o in beam:
            if order is None:
                plan = list(EXPANSIONS)
            else:
                diag, _ = diagnose(o, context.noise_std)
                plan = [p for p in diag if p in order] + [p for p in EXPANSIONS
                                                          if p not in diag]
            plans.append(plan)
        queues = []
        for o, plan in zip(beam, plans, strict=True):
            q = []
            s = context.structures.get(o.id)
            if s is None:
                continue
            for name in plan:
                acts = expansion_actions(name, s, context)
                if acts is not None:
                    q.append(Proposal(parent=o.id, actions=acts + [Refine(candidate=o.id)],
                                      rationale=f"{name} of #{o.id} (val {o.val_rmse:.3g} mV)"))
            queues.append(q)
        if len(queues) > 1 and len({o.val_rmse for o in beam}) < len(beam):
            perm = rng.permutation(len(queues))
            queues = [queues[i] for i in perm]
        while len(out) < k and any(queues):
            for q in queues:
                while q:
                    p = q.pop(0)
                    if self._accept(p, context, taken):
                        out.append(p)
                        break
                if len(out) >= k:
                    break
        if len(out) < k:  # reaction models not tried yet
            out += [p for p in seed_proposals(context) if self._accept(p, context, taken)]
        return out[:k]

    def reflect(self, context: AgentContext) -> str:
        ranked = _stable_sorted(context.observations)
        if not ranked:
            return "No stable candidate yet: reseed the reaction models.\nplan: " + \
                ", ".join(EXPANSIONS)
        best = ranked[0]
        plan, why = diagnose(best, context.noise_std)
        lines = [f"Best so far: #{best.id} {best.reaction} (val {best.val_rmse:.3g} mV, "
                 f"{best.n_params} parameters, {best.verdict}); the error lives in: "
                 f"{best.where() or 'n/a'}."]
        lines += [f"- {w}" for w in why]
        lines.append("plan: " + ", ".join(plan))
        return "\n".join(lines)


class RandomPolicy(Policy):
    """Random search over the grammar (a baseline): each candidate draws a reaction
    model, a diffusion kind, a random subset of free parameters and, with probability
    `p_closure`, one additive closure of width 8 or 16 on a random state. Deterministic
    for the key."""

    name = "random"

    def __init__(self, *, p_closure: float = 0.3):
        self.p_closure = float(p_closure)

    def propose(self, context: AgentContext, k: int, *, key) -> list[Proposal]:
        seed = int(jax.random.randint(key, (), 0, 2**31 - 1))
        rng = np.random.default_rng(seed)
        cat = context.catalog
        out, taken = [], set()
        for _ in range(50 * k):
            if len(out) >= k:
                break
            r = cat.reactions[rng.integers(len(cat.reactions))]
            cls = reaction_class(r)
            acts = [SetReaction(reaction=r)]
            d = cat.diffusions[rng.integers(len(cat.diffusions))]
            if d != "laplacian":
                acts.append(SetDiffusion(diffusion=d))
            for spec in cls.param_specs:
                if rng.random() < 0.5:
                    acts.append(SetParameter(name=spec.name, mode="free"))
            if "additive" in cat.closures and rng.random() < self.p_closure:
                t = cls.state_names[rng.integers(len(cls.state_names))]
                acts.append(AddClosure(target=t, hidden=[int(rng.choice([8, 16]))]))
            p = Proposal(parent=None, actions=acts, rationale="random draw from the grammar")
            try:
                s = apply_proposal(p, {}, catalog=cat)
            except ActionRejected:
                continue
            kk = candidate_key(s)
            if kk in context.tried or kk in taken:
                continue
            taken.add(kk)
            out.append(p)
        return out


class FixedPolicy(Policy):
    """Proposes a fixed list once (round 0), then nothing (e.g. the hand-designed
    hybrid)."""

    name = "fixed"

    def __init__(self, proposals: list, *, name: str = "fixed"):
        self.proposals = list(proposals)
        self.name = name

    def propose(self, context: AgentContext, k: int, *, key) -> list:
        if context.round > 0:
            return []
        return self.proposals[:k]
