"""The LEADS agent: structured actions, discovery rounds, offline and LLM policies.

    >>> import jax
    >>> from leads_jax.agent import Budget, discover          # doctest: +SKIP
    >>> res = discover(data, budget=Budget(rounds=3), key=jax.random.key(0),
    ...                out="runs/demo")                        # doctest: +SKIP
    >>> print(res.best.formula())                              # doctest: +SKIP

Modules: :mod:`._actions` (typed actions, JSON schema, :func:`apply_action`),
:mod:`._catalog_doc` (the catalog documentation rendered for the agent),
:mod:`._observe` (observations), :mod:`._loop` (:func:`discover`, budgets, selection),
:mod:`._policy` / :mod:`._offline` (policies), :mod:`._methods` (baselines and
ablations), :mod:`._io` / :mod:`._report` (run folders, resume, reports), and, by the
LLM/baselines work, :mod:`._llm`, :mod:`._expr`, :mod:`._neural`.
"""

from ._actions import Action as Action
from ._actions import ActionRejected as ActionRejected
from ._actions import AddClosure as AddClosure
from ._actions import PolicyReply as PolicyReply
from ._actions import Proposal as Proposal
from ._actions import Refine as Refine
from ._actions import RemoveClosure as RemoveClosure
from ._actions import ResizeClosure as ResizeClosure
from ._actions import SetDiffusion as SetDiffusion
from ._actions import SetParameter as SetParameter
from ._actions import SetReaction as SetReaction
from ._actions import Stop as Stop
from ._actions import action_json_schema as action_json_schema
from ._actions import apply_action as apply_action
from ._actions import apply_proposal as apply_proposal
from ._actions import reply_json_schema as reply_json_schema
from ._catalog_doc import render_catalog_doc as render_catalog_doc
from ._data import DiscoveryData as DiscoveryData
from ._data import discovery_data as discovery_data
from ._llm_policy import LLMPolicy as LLMPolicy
from ._loop import Budget as Budget
from ._loop import CompileLog as CompileLog
from ._loop import DiscoveryResult as DiscoveryResult
from ._loop import discover as discover
from ._methods import METHODS as METHODS
from ._observe import Observation as Observation
from ._observe import render_observations as render_observations
from ._offline import OfflinePolicy as OfflinePolicy
from ._offline import RandomPolicy as RandomPolicy
from ._policy import AgentContext as AgentContext
from ._policy import ModelProposal as ModelProposal
from ._policy import Policy as Policy
from ._report import write_report as write_report
from ._select import Selection as Selection
from ._select import select as select
