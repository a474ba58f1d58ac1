"""The parallel fitting engine (LEADS issue 4).

Fit many candidate structures at once: candidates are grouped by topology (one
compilation per group), each candidate gets several restarts, and every
(candidate, restart) *member* trains with its own optimizer state and its own
gradient clipping, vmapped (and optionally sharded across devices) on one axis.
Diverging members are stopped and marked, never raise, and never touch the
others' updates. After fitting, a stability audit rolls each candidate out over
the test horizon (3x training) and from unseen pacing sites.

Public entry points: :class:`FitConfig`, :func:`fit` -> :class:`FitResult`, and its
parts :func:`prepare` -> :class:`FitPlan` (validated inputs, :class:`FitGroup` s) and
:func:`fit_group` -> :class:`GroupFit` (typed :class:`CandidateRecord` s and fitted
models); :func:`stability_audit`, :func:`save_candidate` / :func:`load_candidate`; the
lower-level engine (:func:`train_members`, :class:`SplitData`, :class:`Rollout`)
works on any stacked Equinox model with a rollout function. Batching (buckets,
stacking, sharding) is :mod:`leads_jax.batching`, re-exported here.
"""

from ..batching import bucket_size as bucket_size
from ..batching import candidate_mesh as candidate_mesh
from ..batching import pad_members as pad_members
from ..batching import shard_members as shard_members
from ..batching import stack_members as stack_members
from ..batching import unstack_member as unstack_member
from ._audit import audit_members as audit_members
from ._config import FitConfig as FitConfig
from ._engine import MemberStatus as MemberStatus
from ._engine import Rollout as Rollout
from ._engine import SplitData as SplitData
from ._engine import TrainOutcome as TrainOutcome
from ._engine import evaluate_members as evaluate_members
from ._engine import make_optimizer as make_optimizer
from ._engine import member_loss as member_loss
from ._engine import member_step as member_step
from ._engine import train_members as train_members
from ._fit import Candidate as Candidate
from ._fit import FitGroup as FitGroup
from ._fit import FitPlan as FitPlan
from ._fit import GroupFit as GroupFit
from ._fit import SimulateRollout as SimulateRollout
from ._fit import fit as fit
from ._fit import fit_group as fit_group
from ._fit import prepare as prepare
from ._fit import result_attrs as result_attrs
from ._fit import stability_audit as stability_audit
from ._io import load_candidate as load_candidate
from ._io import read_candidate_header as read_candidate_header
from ._io import save_candidate as save_candidate
from ._progress import FitProgress as FitProgress
from ._results import CandidateRecord as CandidateRecord
from ._results import FitResult as FitResult
from ._results import build_dataset as build_dataset
from ._results import load_results as load_results
from ._results import save_dataset as save_dataset
