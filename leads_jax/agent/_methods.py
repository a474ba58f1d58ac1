"""Methods a discovery run can use (``--method``): LEADS, baselines and ablations.

Every method runs through the same loop, the same fitting engine and the same budget
(candidates x fitting steps), so their errors compare:

=================  =====================================================================
``leads``          the policy (offline beam search or an LLM) over the typed action
                   space, with memory and reflection, round after round
``hand-hybrid``    a hand-designed hybrid as in published hybrid-EP work: Aliev-Panfilov
                   (a, k, eps0 and D free) + an additive MLP closure (16, 16) on u,
                   fitted once with ``restarts = min(candidates, 8)``
``unstructured``   free-form right-hand sides, one expression per state, parsed by the
                   safe expression parser (:mod:`leads_jax.agent._expr`) and evaluated
                   as data; offline they come from the documented random generator
                   (``random_program``), with an LLM policy from the LLM. No stability
                   guarantee. (Also ``no-structure``: the ablation without the
                   structured action space.)
``random``         random search over the grammar (:class:`~leads_jax.agent.RandomPolicy`)
``neural``         a purely neural (graph) ODE, no physics
                   (:mod:`leads_jax.agent._neural`), width 32, one candidate per
                   initialisation seed (drawn from the run's key); fitted with the
                   caller's ``FitConfig``, whose step should suit network weights
                   (the LEADS benchmark uses Adam's default 1e-3: at its 0.03 for
                   physical parameters every network diverges within 30 steps)
``one-round``      LEADS without iterative reasoning: the whole candidate budget in one
                   round (the policy proposes blind)
``no-memory``      LEADS whose policy sees only the last round and whose memory does
                   not stop refits
``no-reflection``  LEADS without the reflection step (the offline policy then expands in
                   a fixed order instead of the diagnosed one)
=================  =====================================================================
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import jax
import numpy as np

from ._actions import AddClosure, Proposal, SetParameter, SetReaction
from ._expr import expression_model, random_program
from ._llm import LLMUnavailable
from ._llm_policy import LLMPolicy
from ._neural import neural_ode_model
from ._offline import FixedPolicy, OfflinePolicy, RandomPolicy
from ._policy import ModelProposal, Policy, candidate_key

__all__ = ["METHODS", "MethodSpec", "resolve_method"]

METHODS = ("leads", "hand-hybrid", "unstructured", "random", "neural", "no-structure",
           "one-round", "no-memory", "no-reflection")


def _make_base_policy(policy, *, budget, llm, catalog, data) -> Policy:
    if isinstance(policy, Policy):
        return policy
    if policy == "offline":
        return OfflinePolicy()
    if policy == "llm":
        kw = dict(llm or {})
        if "model" not in kw:
            raise ValueError("discover: policy='llm' needs llm={'model': 'provider/model', ...} "
                             "(CLI: --llm-model)")
        if budget.max_cost is not None:
            kw.setdefault("max_cost", budget.max_cost)
        if budget.max_tokens is not None:
            kw.setdefault("max_tokens", budget.max_tokens)
        return LLMPolicy(kw.pop("model"), **kw)
    raise ValueError(f"discover: unknown policy {policy!r}; use 'offline', 'llm' or a Policy")


class _ExpressionPolicy(Policy):
    """Unstructured generation: random expression programs (offline) or the LLM's."""

    name = "unstructured"

    def __init__(self, llm_policy: LLMPolicy | None = None, n_params: int = 4):
        self.llm = llm_policy
        self.n_params = n_params
        self.source = "llm" if llm_policy is not None else "random_program (offline)"
        self.events: list[dict] = []

    def propose(self, context, k, *, key):
        names = context.state_names[:2] if len(context.state_names) >= 2 else ("u", "v")
        out = []
        if self.llm is not None:
            out = _llm_expressions(self.llm, context, k, names, self.n_params, self.events)
        i = 0
        while len(out) < k and i < 50 * k:
            prog = random_program(jax.random.fold_in(key, i), names, self.n_params)
            i += 1
            p = ModelProposal(kind="expression", spec={"equations": prog,
                                                       "state_names": list(names),
                                                       "n_params": self.n_params},
                              rationale="random expression program")
            if candidate_key(p) not in context.tried and all(
                    candidate_key(p) != candidate_key(q) for q in out):
                out.append(p)
        return out[:k]

    def state(self):
        return {} if self.llm is None else self.llm.state()

    def restore(self, state):
        if self.llm is not None and state:
            self.llm.restore(state)


def _llm_expressions(llm: LLMPolicy, context, k, names, n_params, events) -> list:
    """Ask the LLM for free-form right-hand sides (parsed, never executed)."""
    from pydantic import BaseModel, ConfigDict, Field


    class Equations(BaseModel):
        model_config = ConfigDict(extra="forbid")
        equations: dict[str, str]
        rationale: str = ""

    class Reply(BaseModel):
        model_config = ConfigDict(extra="forbid")
        candidates: list[Equations] = Field(max_length=32)

    if llm.stopped or llm.client.budget_exhausted:
        return []
    msg = [{"role": "system", "content": (
        "Write right-hand sides of an ODE model of cardiac action potentials, one "
        f"expression per state {list(names)} (the first is the voltage, 0 at rest, 1 at "
        f"peak; time in ms). Use the states, parameters p0..p{n_params - 1}, lap_<state> "
        "for diffusion, + - * / ** (integer 0..4), exp, tanh, sigmoid, min, max. "
        "Reply with one JSON object.")},
        {"role": "user", "content": f"Data: {context.data_summary}. Propose {k} models."}]

    def check(reply):
        for c in reply.candidates:
            try:
                expression_model(c.equations, state_names=names, n_params=n_params)
            except ValueError as e:
                return f"{c.equations}: {e}"
        return None

    try:
        reply = llm.client.ask_until_valid(msg, Reply, check=check)
    except LLMUnavailable as e:
        llm.stopped = f"LLM unavailable or budget spent ({e})"
        events.append({"event": "fallback", "round": context.round, "reason": llm.stopped})
        return []
    if reply.parsed is None:
        events.append({"event": "fallback", "round": context.round,
                       "reason": f"no valid expressions ({reply.rejection}); random programs"})
        return []
    return [ModelProposal(kind="expression", spec={"equations": c.equations,
                                                   "state_names": list(names),
                                                   "n_params": n_params},
                          rationale=c.rationale or "LLM expressions")
            for c in reply.parsed.candidates[:k]]


class _NeuralPolicy(Policy):
    """Pure neural ODEs: width 32, two hidden layers, one candidate per initialisation
    seed (one topology, so one compilation), as many as the budget allows. The seeds are
    drawn from the round's `key`, so runs of other seeds start from other networks (with
    fixed seeds 0, 1, ... every run of the benchmark fitted the same networks and the
    seed spread of this baseline was zero by construction)."""

    name = "neural"
    WIDTH = 32

    def propose(self, context, k, *, key):
        draws = np.asarray(jax.random.randint(key, (k + 64,), 0, 2**31 - 1)).tolist()
        out, keys = [], set()
        for seed in draws:
            if len(out) == k:
                break
            p = ModelProposal(kind="neural", spec={"width": self.WIDTH, "n_states": 2,
                                                   "seed": seed},
                              rationale=f"neural ODE, width {self.WIDTH}, seed {seed}")
            ck = candidate_key(p)
            if ck not in context.tried and ck not in keys:
                keys.add(ck)
                out.append(p)
        return out


@dataclasses.dataclass(frozen=True)
class MethodSpec:
    name: str
    memory: bool = True
    reflect: bool = True
    one_round: bool = False
    kind: str = "grammar"  # grammar | hand-hybrid | unstructured | random | neural

    def make_policy(self, policy, *, budget, llm, catalog, data) -> Policy:
        if self.kind == "hand-hybrid":
            acts = [SetReaction(reaction="aliev-panfilov")]
            acts += [SetParameter(name=n, mode="free") for n in ("a", "k", "eps0")]
            acts.append(AddClosure(target="u", hidden=[16, 16]))
            return FixedPolicy([Proposal(parent=None, actions=acts,
                                         rationale="hand-designed hybrid: Aliev-Panfilov + "
                                         "MLP closure")], name="hand-hybrid")
        if self.kind == "random":
            return RandomPolicy()
        if self.kind == "neural":
            return _NeuralPolicy()
        if self.kind == "unstructured":
            base = None
            if policy == "llm" or isinstance(policy, LLMPolicy):
                base = _make_base_policy(policy, budget=budget, llm=llm, catalog=catalog,
                                         data=data)
            elif policy != "offline":
                _make_base_policy(policy, budget=budget, llm=llm, catalog=catalog, data=data)
            return _ExpressionPolicy(base)
        return _make_base_policy(policy, budget=budget, llm=llm, catalog=catalog, data=data)

    def per_round(self, budget) -> int:
        return budget.candidates if self.one_round else budget.k

    def rounds(self, budget) -> int:
        if self.one_round or self.kind == "hand-hybrid":
            return 1
        return budget.rounds

    def adjust_config(self, config, budget):
        if self.kind == "hand-hybrid":
            return dataclasses.replace(config, restarts=max(1, min(budget.candidates, 8)))
        return config

    def build_model(self, spec: Mapping, data, key):
        kind = spec.get("kind")
        if kind == "expression":
            return expression_model(dict(spec["equations"]),
                                    state_names=tuple(spec["state_names"]),
                                    n_params=int(spec["n_params"]))
        if kind == "neural":
            return neural_ode_model(data.geometry, int(spec.get("n_states", 2)),
                                    int(spec["width"]),
                                    key=jax.random.key(int(spec.get("seed", 0))))
        raise ValueError(f"unknown model kind {kind!r} in a candidate spec")

    def notes(self, policy) -> list[str]:
        out = []
        if self.kind == "unstructured":
            out.append(f"unstructured generation: expressions from "
                       f"{getattr(policy, 'source', '?')}")
        stopped = getattr(policy, "stopped", "") or getattr(getattr(policy, "llm", None),
                                                             "stopped", "")
        if stopped:
            out.append(f"LLM stopped being asked: {stopped}")
        fb = getattr(policy, "fallback_rounds", [])
        if fb:
            out.append(f"offline fallback in round(s) {sorted(set(fb))}")
        return out


_SPECS = {
    "leads": MethodSpec("leads"),
    "hand-hybrid": MethodSpec("hand-hybrid", kind="hand-hybrid"),
    "unstructured": MethodSpec("unstructured", kind="unstructured"),
    "no-structure": MethodSpec("no-structure", kind="unstructured"),
    "random": MethodSpec("random", kind="random"),
    "neural": MethodSpec("neural", kind="neural"),
    "one-round": MethodSpec("one-round", one_round=True),
    "no-memory": MethodSpec("no-memory", memory=False),
    "no-reflection": MethodSpec("no-reflection", reflect=False),
}


def resolve_method(method: str) -> MethodSpec:
    if isinstance(method, MethodSpec):
        return method
    if method not in _SPECS:
        raise ValueError(f"discover: unknown method {method!r}; valid methods are {METHODS}")
    return _SPECS[method]
