"""Policies: who proposes the next candidates.

A :class:`Policy` reads an :class:`AgentContext` (the catalog's documentation, the
action schema, the observations so far, the best-so-far set, the last reflection) and
returns up to K proposals; :meth:`Policy.reflect` states, after a round, what to change
and why (saved in the transcript). Two policies ship:

- :class:`~leads_jax.agent.OfflinePolicy` (default; no network; deterministic for a
  seed): a diagnostic-guided beam search over the action space;
- :class:`~leads_jax.agent.LLMPolicy` (:mod:`leads_jax.agent._llm_policy`): any LLM
  litellm can reach (:class:`~leads_jax.agent._llm.LLMClient`).
  Its replies are JSON parsed into typed actions and applied by the grammar, never
  executed. A reply that does not validate is sent back with the rejection (up to the
  client's ``max_invalid``); after that the round falls back to the offline policy.
  When the LLM budget (dollars or tokens) is spent, or the provider is unreachable
  after retries, the policy stops asking and the offline policy proposes the rest of
  the run; the report says so.
"""

from __future__ import annotations

import abc
import dataclasses
import json
from collections.abc import Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field

from ..structure import Catalog, Structure
from ._observe import Observation

__all__ = ["AgentContext", "ModelProposal", "Policy", "Reflection", "candidate_key"]


class ModelProposal(BaseModel):
    """A candidate that is not a sentence of the grammar (the unstructured and
    neural baselines): `spec` describes it (e.g. expressions per state)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: str
    spec: dict
    rationale: str = ""


class Reflection(BaseModel):
    """A reflection reply: what to change next and why."""

    model_config = ConfigDict(extra="forbid")
    reflection: str = Field(max_length=4000)


@dataclasses.dataclass
class AgentContext:
    """What a policy sees when it proposes (see the module docstring)."""

    round: int
    k: int
    catalog: Catalog
    catalog_doc: str
    data_summary: str
    noise_std: float
    n_regions: int
    state_names: tuple[str, ...]
    observations: list[Observation]
    last_round: list[Observation]
    top: list[Observation]
    structures: dict[int, Structure]
    fitted: dict[int, tuple[Structure, dict]]
    tried: set[str]
    reflections: list[str]
    rejections: list[dict]
    rounds_left: int
    candidates_left: int

    @property
    def last_reflection(self) -> str:
        return self.reflections[-1] if self.reflections else ""


class Policy(abc.ABC):
    """Proposes candidates each round (module docstring)."""

    name: str = "policy"

    @abc.abstractmethod
    def propose(self, context: AgentContext, k: int, *, key) -> list:
        """Up to `k` proposals (:class:`~leads_jax.agent.Proposal`, or
        :class:`ModelProposal` for non-grammar baselines)."""

    def reflect(self, context: AgentContext) -> str:
        """What to change next and why (default: nothing to say)."""
        return ""

    def state(self) -> dict:
        """JSON-able state saved with each round (budgets, counters)."""
        return {}

    def restore(self, state: Mapping) -> None:  # noqa: B027 - optional hook
        """Restore :meth:`state` on resume (default: stateless)."""


def candidate_key(spec) -> str:
    """The memory key of a candidate: the canonical JSON of a structure, or the sorted
    JSON of a non-grammar spec."""
    if isinstance(spec, Structure):
        return "S:" + spec.canonical().to_json()
    if isinstance(spec, ModelProposal):
        return "M:" + json.dumps({"kind": spec.kind, **spec.spec}, sort_keys=True)
    if isinstance(spec, Mapping):
        return "M:" + json.dumps(dict(spec), sort_keys=True)
    raise TypeError(f"not a candidate spec: {spec!r}")


def proposals_digest(items: Sequence) -> list[dict]:
    out = []
    for p in items:
        if isinstance(p, BaseModel):
            out.append(p.model_dump(mode="json"))
    return out
