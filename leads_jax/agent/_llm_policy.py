"""The LLM policy: prompts built from the catalog documentation, the action schema and
the observations; replies validated into typed actions, never executed (see
:mod:`leads_jax.agent._policy` for the contract and the fallbacks)."""

from __future__ import annotations

import json
from collections.abc import Mapping

from ._actions import ActionRejected, PolicyReply, apply_proposal, reply_json_schema
from ._llm import LLMClient, LLMUnavailable
from ._observe import Observation, render_observations
from ._offline import OfflinePolicy
from ._policy import AgentContext, Policy, Reflection, candidate_key

__all__ = ["LLMPolicy", "build_messages"]


# ---------------------------------------------------------------------------------------
# the LLM policy
# ---------------------------------------------------------------------------------------
SYSTEM_PROMPT = """You are the proposer of LEADS, an agent that discovers hybrid models of \
cardiac electrophysiology. Each round you propose candidate model structures; gradient \
descent fits every candidate to the data; you then read quantitative observations and \
propose again. Candidates are edits of earlier candidates (by id) or new structures, \
written as typed actions of the JSON schema below. Prefer the simplest structure that \
explains the data: selection is by validation error with a complexity penalty (the model \
with the fewest fitted parameters within noise of the best wins). Neural closures are \
bounded and cost parameters; add them only where the observations show a physics model \
cannot fit. Reply with ONE JSON object only, no prose around it."""


def _observation_digest(o: Observation) -> str:
    return (f"#{o.id}: {o.reaction or 'model'} val {o.val_rmse:.3g} mV, "
            f"params {o.n_params}, {o.verdict}")


def build_messages(context: AgentContext, k: int) -> list[dict]:
    """The chat messages of one proposal request (catalog doc + action schema +
    observations + memory + last reflection)."""
    schema = json.dumps(reply_json_schema(), separators=(",", ":"))
    system = (f"{SYSTEM_PROMPT}\n\n{context.catalog_doc}\n\n# Reply schema (PolicyReply)\n"
              f"{schema}")
    memory = "\n".join(_observation_digest(o) for o in context.observations) or "nothing yet"
    top = render_observations(context.top) or "nothing yet"
    last = render_observations(context.last_round) or "nothing yet"
    rej = "\n".join(f"- {r.get('message', r)}" for r in context.rejections) or "none"
    user = (
        f"Round {context.round}. Data: {context.data_summary}.\n"
        f"Budget left: {context.rounds_left} round(s), {context.candidates_left} "
        f"candidate(s).\n\n## Everything tried so far (memory)\n{memory}\n\n"
        f"## Best so far (top by validation error)\n{top}\n\n## Last round\n{last}\n\n"
        f"## Rejected last round\n{rej}\n\n## Your last reflection\n"
        f"{context.last_reflection or 'none'}\n\n"
        f"Propose up to {k} NEW candidates (not in memory) as a PolicyReply. Use 'parent' to "
        "edit a fitted candidate, and add a 'refine' action naming it to warm start from its "
        "fitted values. With parent null, the first action must be set_reaction."
    )
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


class LLMPolicy(Policy):
    """Proposals from an LLM through :class:`~leads_jax.agent._llm.LLMClient` (module
    docstring). `client` may be an ``LLMClient`` or its constructor keywords;
    `fallback` (default: a fresh :class:`OfflinePolicy`) proposes when the LLM cannot."""

    name = "llm"

    def __init__(self, client=None, *, fallback: Policy | None = None, **client_kwargs):
        if client is None:
            client = LLMClient(**client_kwargs)
        elif isinstance(client, str):
            client = LLMClient(client, **client_kwargs)
        self.client = client
        if fallback is None:
            fallback = OfflinePolicy()
        self.fallback = fallback
        self.stopped: str = ""  # why the LLM is no longer asked ("" while it is)
        self.events: list[dict] = []  # rejections and fallbacks, for the transcript
        self.fallback_rounds: list[int] = []

    def _check(self, context: AgentContext):
        def check(reply: PolicyReply):
            reasons, ok = [], 0
            for i, p in enumerate(reply.proposals):
                try:
                    s = apply_proposal(p, context.structures, catalog=context.catalog,
                                       fitted=context.fitted)
                except ActionRejected as e:
                    reasons.append(f"proposals[{i}]: {e}")
                    continue
                if candidate_key(s) in context.tried:
                    reasons.append(f"proposals[{i}]: this structure was already fitted "
                                   "(see memory); propose something new")
                    continue
                ok += 1
            for r in reasons:
                self.events.append({"event": "rejected", "round": context.round, "reason": r})
            if ok == 0 and not any(a.kind == "stop" for p in reply.proposals
                                   for a in p.actions):
                return "no valid new proposal: " + "; ".join(reasons[:8])
            return None

        return check

    def _harvest(self, context: AgentContext, start: int) -> None:
        """Copy the client's records of invalid replies and errors (already redacted)
        into the run's transcript, with their rejection reasons."""
        for rec in self.client.transcript[start:]:
            ev = rec.get("event")
            if ev == "reply" and rec.get("rejection"):
                self.events.append({"event": "rejected", "round": context.round,
                                    "rule": "llm-reply", "reason": rec["rejection"],
                                    "raw": str(rec.get("raw", ""))[:2000]})
            elif ev in ("error", "gave-up", "refused", "budget"):
                self.events.append({"event": f"llm-{ev}", "round": context.round,
                                    **{k: v for k, v in rec.items()
                                       if k in ("kind", "status", "message", "reason",
                                                "attempts", "rejection")}})

    def _give_up(self, context: AgentContext, why: str):
        self.events.append({"event": "fallback", "round": context.round, "reason": why})
        self.fallback_rounds.append(context.round)

    def propose(self, context: AgentContext, k: int, *, key) -> list:
        if not self.stopped and self.client.budget_exhausted:
            self.stopped = "LLM budget spent"
        if self.stopped:
            self._give_up(context, self.stopped + "; offline policy proposes")
            return self.fallback.propose(context, k, key=key)
        start = len(self.client.transcript)
        try:
            reply = self.client.ask_until_valid(build_messages(context, k), PolicyReply,
                                                check=self._check(context))
        except LLMUnavailable as e:
            self._harvest(context, start)
            self.stopped = f"LLM unavailable or budget spent ({e})"
            self._give_up(context, self.stopped + "; offline policy proposes")
            return self.fallback.propose(context, k, key=key)
        self._harvest(context, start)
        if reply.parsed is None:
            self._give_up(context, f"no valid reply after {self.client.max_invalid} tries "
                          f"({reply.rejection}); offline policy proposes this round")
            return self.fallback.propose(context, k, key=key)
        if self.client.budget_exhausted:
            self.stopped = "LLM budget spent"
        out = []
        for p in reply.parsed.proposals[:k]:
            out.append(p)
        return out

    def reflect(self, context: AgentContext) -> str:
        if self.stopped or self.client.budget_exhausted:
            return self.fallback.reflect(context)
        msgs = build_messages(context, context.k)
        msgs[-1]["content"] += ("\n\nDo not propose yet. In at most 120 words, state what the "
                                "observations show and what to change next, and why.")
        start = len(self.client.transcript)
        try:
            reply = self.client.ask(msgs, Reflection)
        except LLMUnavailable as e:
            self._harvest(context, start)
            self.stopped = f"LLM unavailable or budget spent ({e})"
            return self.fallback.reflect(context)
        self._harvest(context, start)
        if reply.parsed is None:
            return self.fallback.reflect(context)
        return reply.parsed.reflection

    def state(self) -> dict:
        c = self.client
        return {"stopped": self.stopped, "total_prompt_tokens": c.total_prompt_tokens,
                "total_completion_tokens": c.total_completion_tokens,
                "total_cost": c.total_cost, "n_invalid": c.n_invalid,
                "fallback_rounds": list(self.fallback_rounds)}

    def restore(self, state: Mapping) -> None:
        c = self.client
        self.stopped = str(state.get("stopped", ""))
        c.total_prompt_tokens = int(state.get("total_prompt_tokens", 0))
        c.total_completion_tokens = int(state.get("total_completion_tokens", 0))
        c.total_cost = float(state.get("total_cost", 0.0))
        c.n_invalid = int(state.get("n_invalid", 0))
        self.fallback_rounds = list(state.get("fallback_rounds", []))
