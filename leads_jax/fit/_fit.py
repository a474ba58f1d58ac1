"""`fit`: candidates + observations + a configuration -> fitted candidates, in parts.

The parts compose (and the agent's loop calls them one by one):

1. :func:`prepare` validates everything before anything is compiled: the candidates
   (grammar :class:`~leads_jax.structure.Structure` sentences, their JSON, or models
   that are already compiled, e.g. from :func:`~leads_jax.compile.compile_vector_field`),
   the observations (read once into a :class:`~leads_jax.datasets.FitData`) and the
   configuration; it groups the candidates by compilation group and returns a
   :class:`FitPlan`;
2. :func:`fit_group` fits one :class:`FitGroup`: every (candidate, restart) member is
   built, stacked on one axis padded to a bucket size (a multiple of the device count
   when sharded), perturbed for its restart, trained with
   :func:`~leads_jax.fit.train_members` (per-member optimizer, clipping, divergence
   masking, curriculum, early stopping on the validation split), the best restart of
   each candidate is kept, and the stability audit rolls it out on the held-out splits
   (test horizon 3x training, unseen pacing sites); it returns typed
   :class:`~leads_jax.fit.CandidateRecord` rows and the fitted models;
3. :func:`fit` = :func:`prepare` + :func:`fit_group` for each group + the results
   Dataset (optionally saved, atomically).

Models are used only through :class:`~leads_jax.compile.AbstractCompiledModel`: no
step here looks at a model's type.

Compilation is paid once per (topology, bucket size): the learning rate, step count,
curriculum, restarts and candidate count within a bucket are data (see
:mod:`leads_jax.fit._engine`), and a second ``fit`` of a compiled topology compiles
nothing (``tests/test_compile_count.py``). What is *not* data: the topology itself
(reaction model, diffusion kind, closure targets and hidden widths), the bucket size,
``eval_every``, the solver, ``dt``, the record length, ``clip_norm`` and whether the
APHYNITY term is on. Making a closure's hidden width (within a bucket of widths) or
its presence data would mean compiling every candidate at the bucket's largest width
with a mask over unused units (and an always-present, gated closure): the programs
would then cost what the widest member costs for every member (e.g. a 4-unit closure
padded to 16x16 does ~16x the MLP work) and each step would also run the masked
closures of physics-only candidates, which here are the majority and whose rollout
is otherwise cheap. We did not do it: the agent compiles new topologies off its
critical path instead (persistent cache, :func:`leads_jax.enable_compilation_cache`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
import warnings
from collections.abc import Callable, Iterable, Sequence

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from ..batching import (
    bucket_size,
    candidate_mesh,
    group_key,
    pad_members,
    stack_members,
    to_device,
    unstack_member,
)
from ..codes import ResultCode
from ..compile import AbstractCompiledModel, compile_structure
from ..datasets import EXTRAPOLATION, TEST, TRAIN, VAL, FitData
from ..datasets import _same_geometry as same_geometry
from ..simulate import simulate
from ..structure import Structure, validate
from ._audit import audit_members
from ._config import FitConfig
from ._engine import Rollout, SplitData, evaluate_members, train_members
from ._io import save_candidate
from ._progress import FitProgress
from ._results import CandidateRecord, FitResult, build_dataset, candidate_metadata, save_dataset

__all__ = ["Candidate", "FitGroup", "FitPlan", "GroupFit", "SimulateRollout", "fit",
           "fit_group", "prepare", "stability_audit"]


# ---------------------------------------------------------------------------------------
# the rollout: leads_jax.simulate.simulate behind the engine's contract
# ---------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class SimulateRollout:
    """``simulate`` as the engine's rollout (hashable: it keys compiled programs).

    `max_steps` is set from the problem (horizon / dt + 2), and reverse mode uses
    diffrax's ``RecursiveCheckpointAdjoint`` (binomial checkpointing sized from
    `max_steps`: about log(max_steps) stored states, recomputation in between).

    The APHYNITY term is the mean square, along the simulated trajectory, of what the
    closures add to the physics (:meth:`AbstractBoundModel.closure_rates`: additive
    closures, their output; gate closures, their departure from the catalog gate
    equation); zero for models without closures.
    """

    solver: str
    dt: float
    max_steps: int
    aphynity: bool

    def __call__(self, model, geometry, stimulus, ts):
        traj = simulate(model, geometry, stimulus, ts, solver=self.solver, dt=self.dt,
                        max_steps=self.max_steps, adjoint=diffrax.RecursiveCheckpointAdjoint())
        neural_sq = jnp.zeros((), traj.observed.dtype)
        if self.aphynity:
            bound = model.bind(geometry)
            states = jnp.where(jnp.isfinite(traj.state), traj.state, 0.0)
            diff = jax.vmap(bound.closure_rates)(ts, states)
            if diff is not None:
                neural_sq = jnp.mean(diff**2)
        return Rollout(traj.observed, traj.diverged, traj.reason, traj.t_diverged, neural_sq)


def _max_steps(ts, dt, config: FitConfig) -> int:
    if config.max_steps is not None:
        return int(config.max_steps)
    ts = np.asarray(ts, dtype=float)
    return int(math.ceil((ts[-1] - ts[0]) / dt)) + 2


# ---------------------------------------------------------------------------------------
# typed parts
# ---------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, eq=False)
class Candidate:
    """One candidate as :func:`prepare` read it: a grammar `structure` (compiled on the
    geometry once per restart, with that restart's key) or an already-compiled `model`
    (used as given; restarts perturb it)."""

    index: int
    structure: Structure | None = None
    model: AbstractCompiledModel | None = None

    def build(self, geometry, key) -> AbstractCompiledModel:
        if self.structure is not None:
            return compile_structure(self.structure, geometry, key=key)
        return self.model

    def structure_json(self) -> str:
        return self.structure.to_json() if self.structure is not None else ""

    def formula(self) -> str:
        try:
            if self.structure is not None:
                return self.structure.formula()
            return self.model.formula()
        except Exception:  # rendering must never break a fit
            return ""


@dataclasses.dataclass(frozen=True, eq=False)
class FitGroup:
    """Candidates that share compiled programs: `candidates` (indices into
    ``FitPlan.candidates``), their compilation `key` and the `topology` text recorded."""

    key: tuple
    topology: str
    candidates: tuple[int, ...]


@dataclasses.dataclass(frozen=True, eq=False)
class FitPlan:
    """Validated inputs of a fit (what :func:`prepare` returns).

    - `candidates`, `groups`: the candidates and their compilation groups, in order;
    - `data`: the :class:`~leads_jax.datasets.FitData`; `train`, `val` (or ``None``) and
      `audit` (held-out splits, by name): the engine's :class:`SplitData`;
    - `config`, `mesh`, `n_devices`, `dt` (ms, ``None``: each group's model default);
    - `warnings`: problems that are not errors (recorded in the results).
    """

    candidates: tuple[Candidate, ...]
    groups: tuple[FitGroup, ...]
    data: FitData
    config: FitConfig
    train: SplitData
    val: SplitData | None
    audit: dict
    mesh: object
    n_devices: int
    dt: float | None
    warnings: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True, eq=False)
class GroupFit:
    """What :func:`fit_group` returns: one record and one fitted model per candidate of
    the group (in the group's order), the candidates' indices, and the wall time."""

    candidates: tuple[int, ...]
    records: tuple[CandidateRecord, ...]
    models: tuple
    seconds: float
    warnings: tuple[str, ...] = ()


# ---------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------
def _as_candidates(candidates) -> tuple[Candidate, ...]:
    if isinstance(candidates, (str, bytes, dict, Structure, AbstractCompiledModel)):
        candidates = [candidates]
    elif not isinstance(candidates, Sequence):
        candidates = list(candidates) if isinstance(candidates, Iterable) else [candidates]
    if len(candidates) == 0:
        raise ValueError("fit: the candidate list is empty; give at least one Structure")
    out = []
    for i, c in enumerate(candidates):
        if isinstance(c, AbstractCompiledModel):
            out.append(Candidate(i, model=c))
            continue
        if isinstance(c, (str, bytes, dict)):
            try:
                c = Structure.from_json(c)
            except ValueError as e:
                raise ValueError(f"fit: candidate {i}: {e}") from None
        if not isinstance(c, Structure):
            raise ValueError(
                f"fit: candidate {i} is a {type(c).__name__}, not a Structure (or its JSON) "
                "nor a compiled model (leads_jax.compile.AbstractCompiledModel)"
            )
        try:
            validate(c)
        except ValueError as e:
            raise ValueError(f"fit: candidate {i} is invalid: {e}") from None
        out.append(Candidate(i, structure=c))
    return tuple(out)


def as_fit_data(data, geometry=None) -> FitData:
    """`data` (a :class:`FitData`, an ``xarray.Dataset`` or the path of one) as FitData."""
    if isinstance(data, FitData):
        if geometry is not None:
            data = dataclasses.replace(
                data, geometry=_same_geometry(geometry, data.geometry))
        return data
    if not isinstance(data, (xr.Dataset, str, os.PathLike)):
        raise ValueError(
            "fit: dataset must be a leads_jax.datasets.FitData, an xarray.Dataset or a path, "
            f"got {type(data).__name__}"
        )
    try:
        return FitData.from_dataset(data, geometry=geometry)
    except ValueError as e:
        raise ValueError(f"fit: {e}") from None


def _same_geometry(geometry, stored):
    try:
        return same_geometry(geometry, stored)
    except ValueError as e:
        raise ValueError(f"fit: {e}") from None


def _as_config(config) -> FitConfig:
    if config is None:
        return FitConfig()
    if isinstance(config, dict):
        unknown = sorted(set(config) - {f.name for f in dataclasses.fields(FitConfig)})
        if unknown:
            raise ValueError(f"fit: unknown FitConfig field(s) {unknown}")
        return FitConfig(**config)
    if not isinstance(config, FitConfig):
        raise ValueError(f"fit: config must be a FitConfig or a dict, got {type(config).__name__}")
    return config


def _check_key(key, where="fit"):
    """A JAX PRNG key (typed, ``jax.random.key``, or legacy uint32 ``(2,)``), or an error."""
    if isinstance(key, jax.Array):
        if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) and key.shape == ():
            return key
        if key.dtype == jnp.uint32 and key.shape == (2,):
            return key
    raise ValueError(
        f"{where}: key must be a JAX PRNG key such as jax.random.key(0), not "
        f"{type(key).__name__} {key!r}" + (
            f"; use key=jax.random.key({key})" if isinstance(key, int) else "")
    )


def _resolve_mesh(mesh):
    if isinstance(mesh, str):
        if mesh != "auto":
            raise ValueError(f"fit: mesh must be None, 'auto' or a jax.sharding.Mesh, got {mesh!r}")
        return candidate_mesh() if len(jax.devices()) > 1 else None
    return mesh


def _split(data: FitData, name: str) -> SplitData | None:
    arrays = data.split_arrays(name)
    if arrays is None:
        return None
    stim, targets, ts, weights = arrays
    return SplitData(stim, to_device(targets, np.float32), to_device(ts, np.float32),
                     to_device(weights, np.float32))


def _group_of(c: Candidate) -> tuple[tuple, str]:
    if c.structure is not None:
        topo = c.structure.topology_key()
        return ("structure", topo), json.dumps(topo, default=str)
    key = group_key(c.model)
    shapes = [list(s) for s, _ in key[2]]
    return ("model", key), json.dumps([type(c.model).__name__, shapes])


def prepare(candidates, data, config: FitConfig | dict | None = None, *, geometry=None,
            mesh="auto") -> FitPlan:
    """Validate the inputs of a fit and group its candidates (nothing is compiled).

    **Arguments:** as :func:`fit` (`data`: a :class:`~leads_jax.datasets.FitData`, an
    ``xarray.Dataset`` in the :mod:`leads_jax.datasets` format, or its path).

    **Returns:** a :class:`FitPlan`. Invalid inputs raise ``ValueError`` naming what to
    fix.
    """
    config = _as_config(config)
    cands = _as_candidates(candidates)
    data = as_fit_data(data, geometry)
    mesh = _resolve_mesh(mesh)
    n_dev = 1 if mesh is None else int(np.prod(mesh.devices.shape))
    train = _split(data, TRAIN)
    val = _split(data, VAL)
    audit = {}
    if config.audit:
        # the test split first: the audit reports the first split a member fails on
        names = [n for n in (TEST, EXTRAPOLATION) if n in data.splits]
        names += [n for n in data.audit_splits if n not in names]
        audit = {n: _split(data, n) for n in names}
    dt = config.dt if config.dt is not None else data.dt
    groups: dict[tuple, tuple[str, list[int]]] = {}
    for c in cands:
        key, topo = _group_of(c)
        groups.setdefault(key, (topo, []))[1].append(c.index)
    return FitPlan(
        candidates=cands,
        groups=tuple(FitGroup(k, t, tuple(idx)) for k, (t, idx) in groups.items()),
        data=data, config=config, train=train, val=val, audit=audit, mesh=mesh,
        n_devices=n_dev, dt=None if dt is None else float(dt), warnings=data.warnings,
    )


# ---------------------------------------------------------------------------------------
# one group
# ---------------------------------------------------------------------------------------
@eqx.filter_jit
def _perturb_members(stacked, key, codes, scales):
    """Restart noise for every member at once: member ``m`` gets
    ``perturb(fold_in(fold_in(key, codes[m]), 7), scales[m])`` (scale 0: unchanged)."""
    def one(model, code, scale):
        k = jax.random.fold_in(jax.random.fold_in(key, code), 7)
        new = model.perturb(k, scale)
        # a restart keeps the member's dtypes (random draws are float64 under
        # JAX_ENABLE_X64; the parameters stay what the model was built with)
        return jax.tree.map(lambda a, b: a.astype(b.dtype) if eqx.is_array(a) else a,
                            new, model)

    return eqx.filter_vmap(one)(stacked, codes, scales)


def fit_group(plan: FitPlan, group: FitGroup, *, key,
              on_eval: Callable[[int, float | None], None] | None = None) -> GroupFit:
    """Fit one group of a :class:`FitPlan`; returns a :class:`GroupFit`.

    `key` is the fit's PRNG key (member ``(c, r)`` of candidate ``c`` uses
    ``fold_in(key, c * 1009 + r)``, so a group fitted alone equals the same group in
    :func:`fit`). `on_eval(done, best_val_rmse)` is called after each evaluation.
    """
    key = _check_key(key, "fit_group")
    config, geo = plan.config, plan.data.geometry
    t0 = time.perf_counter()
    members, owner, codes, scales = [], [], [], []
    for c in group.candidates:
        cand = plan.candidates[c]
        for r in range(config.restarts):
            members.append(cand.build(geo, jax.random.fold_in(key, c * 1009 + r)))
            owner.append(c)
            codes.append(c * 1009 + r)
            scales.append(0.0 if r == 0 else config.restart_noise)
    n = len(members)
    size = bucket_size(n, multiple_of=plan.n_devices, minimum=config.min_bucket)
    pad = size - n
    stacked = pad_members(stack_members(members), n, size)
    stacked = _perturb_members(stacked, key,
                               to_device(codes + [codes[0]] * pad, np.uint32),
                               to_device(scales + [0.0] * pad, np.float32))
    params, rest = eqx.partition(stacked, members[0].trainable_filter())
    group_dt = plan.dt if plan.dt is not None else members[0].default_dt

    notes = []
    for pos, c in enumerate(group.candidates):
        limit = members[pos * config.restarts].stable_dt(geo, config.solver)
        if group_dt > limit:
            notes.append((c, f"dt = {group_dt:g} ms is above the candidate's stable step "
                             f"{limit:.3g} ms for {config.solver} (it may diverge)"))
    for c, text in notes:
        warnings.warn(f"fit: candidate {c}: {text}", stacklevel=3)
    note_of = dict(notes)

    def rollout_for(ts):
        return SimulateRollout(config.solver, group_dt, _max_steps(ts, group_dt, config),
                               config.aphynity_weight > 0)

    # max_steps bounds the solve (and sizes the checkpointing of reverse mode);
    # the full training horizon bounds the curriculum's shorter stages too.
    # Validation shares this rollout (train_members evaluates it every chunk), so size it by
    # the longer of the two: a time-window split (a recording) has val *after* train.
    fitted_ts = [plan.train.ts] + ([plan.val.ts] if plan.val is not None else [])
    rollout = rollout_for(max(fitted_ts, key=lambda t: float(t[-1] - t[0])))
    owner_arr = np.asarray(owner + [-1] * pad)
    idx = group.candidates

    def progress(status):
        if on_eval is None:
            return
        finished = ~status["alive"] | status["stopped"]
        done = sum(bool(np.all(finished[:n][owner_arr[:n] == c])) for c in idx)
        best = np.min(np.where(status["alive"][:n], status["best_loss"][:n], np.inf))
        on_eval(done, math.sqrt(best) * config.loss_scale if np.isfinite(best) else None)

    ctx = dict(context=geo, config=config, mesh=plan.mesh)
    out = train_members(params, rest, rollout=rollout, train=plan.train, val=plan.val,
                        on_eval=progress, **ctx)
    evals = {"train": evaluate_members(out.params, rest, rollout=rollout, data=plan.train,
                                       **ctx)}
    if plan.val is not None:
        evals["val"] = evaluate_members(out.params, rest, rollout=rollout, data=plan.val, **ctx)
    audit = None
    if plan.audit:
        longest = max((v.ts for v in plan.audit.values()), key=lambda t: float(t[-1] - t[0]))
        audit = audit_members(out.params, rest, rollout=rollout_for(longest),
                              splits=plan.audit, **ctx)
    seconds = time.perf_counter() - t0
    fitted = eqx.combine(out.params, rest)
    st = out.status
    records, models = [], []
    for c in idx:
        mine = np.flatnonzero(owner_arr == c)
        score = np.where(np.isfinite(st["best_loss"][mine]), st["best_loss"][mine], np.inf)
        j = int(mine[int(np.argmin(score))])
        model = unstack_member(fitted, j)
        models.append(model)
        rmse = {k: float(np.sqrt(v["mse"][j]) * config.loss_scale) if not v["diverged"][j]
                else math.inf for k, v in evals.items()}
        code = ResultCode.describe(st["reason"][j])
        never_ok = not np.isfinite(st["best_loss"][j])
        if never_ok:
            status_text = f"diverged: {code}"
        elif not st["alive"][j]:
            status_text = "diverged during training (best earlier parameters kept)"
        elif st["stopped"][j]:
            status_text = "early-stopped"
        else:
            status_text = "max steps"
        if audit is not None:
            stable = bool(audit["stable"][j]) and not never_ok
            reason = audit["reason"][j]
            test_rmse = float(audit["test_rmse"][j])
        else:
            stable, reason, test_rmse = not never_ok, "", math.nan
        if never_ok:
            reason = f"{code} during training at t={float(st['t_diverged'][j]):.1f} ms"
            test_rmse = math.inf
        fitted_vals = model.fitted_values()
        cand = plan.candidates[c]
        records.append(CandidateRecord(
            structure_json=cand.structure_json(),
            formula=cand.formula(),
            topology=group.topology,
            params={k: (v if isinstance(v, float) else float(np.mean(v)))
                    for k, v in fitted_vals.items()},
            n_params=model.n_params,
            train_rmse=rmse["train"],
            val_rmse=rmse.get("val", math.nan),
            test_rmse=test_rmse,
            train_loss=float(evals["train"]["loss"][j]),
            stable=stable,
            stability_reason=reason,
            fit_status=status_text,
            diverged_reason="" if st["reason"][j] == 0 else code,
            t_diverged=float(st["t_diverged"][j]),
            best_restart=int(j - mine[0]),
            best_step=int(st["best_step"][j]),
            fit_seconds=seconds / len(idx),
            train_curve=np.asarray(out.train_curve[j], dtype=float),
            val_curve=np.asarray(out.val_curve[j], dtype=float),
            val_steps=np.asarray(out.val_steps),
            warning=note_of.get(c, ""),
        ))
    return GroupFit(tuple(idx), tuple(records), tuple(models), seconds,
                    tuple(f"candidate {c}: {t}" for c, t in notes))


# ---------------------------------------------------------------------------------------
# fit
# ---------------------------------------------------------------------------------------
def fit(candidates, dataset, config: FitConfig | dict | None = None, *, key, geometry=None,
        mesh="auto", progress=True, save_dir=None) -> FitResult:
    """Fit every candidate to observations.

    **Arguments:**

    - `candidates`: a list of :class:`~leads_jax.structure.Structure` (or their JSON)
      and/or compiled models (:class:`~leads_jax.compile.AbstractCompiledModel`, e.g.
      from :func:`~leads_jax.compile.compile_vector_field`), fitted side by side.
    - `dataset`: a :class:`~leads_jax.datasets.FitData`, a ground-truth
      ``xarray.Dataset`` (:mod:`leads_jax.datasets` format) or the path of one.
    - `config`: a :class:`FitConfig` (or a dict of its fields); default ``FitConfig()``.
    - `key`: PRNG key, e.g. ``jax.random.key(0)`` (restarts, neural initialisation) —
      keyword-only.
    - `geometry`: optional; must match the dataset's geometry (default: the dataset's).
    - `mesh`: ``"auto"`` (shard the candidate axis over ``jax.devices()`` when there
      are several), ``None`` (one device) or a ``jax.sharding.Mesh`` with axis
      ``"cand"`` (see :func:`~leads_jax.fit.candidate_mesh`; multi-host: module
      docstring of :mod:`leads_jax.batching`).
    - `progress`: progress bar (candidates done, best validation error); quiet when
      stderr is not a terminal. ``"always"`` forces it.
    - `save_dir`: if given, every candidate is saved there as soon as its group is
      done (``candidate_<i>.eqx``, atomic), and ``results.nc`` at the end.

    **Returns:** a :class:`FitResult` (``.dataset``: xarray indexed by candidate;
    ``.models``: fitted models in candidate order).

    Invalid inputs (empty candidate list, invalid structures, NaN samples, a geometry
    that does not match, a bad configuration, a key that is not a PRNG key) raise
    ``ValueError`` before anything is compiled. Numerical failure never raises: it is
    reported per candidate. A ``dt`` above a candidate's stable step is warned about
    (``warnings.warn``) and recorded (``warning`` variable of the results).
    """
    key = _check_key(key)
    plan = prepare(candidates, dataset, config, geometry=geometry, mesh=mesh)
    n = len(plan.candidates)
    records: list[CandidateRecord | None] = [None] * n
    models: list = [None] * n
    notes = list(plan.warnings)
    for text in plan.warnings:
        warnings.warn(f"fit: {text}", stacklevel=2)
    bar = FitProgress(n, progress)
    done_before = 0
    try:
        for group in plan.groups:
            out = fit_group(plan, group, key=key,
                            on_eval=lambda d, best, b=done_before: bar.update(b + d, best))
            for c, rec, model in zip(out.candidates, out.records, out.models, strict=True):
                records[c], models[c] = rec, model
            notes.extend(out.warnings)
            done_before += len(group.candidates)
            bar.update(done_before)
            if save_dir is not None:
                partial = build_dataset(list(out.records), {})
                for pos, c in enumerate(out.candidates):
                    save_candidate(os.path.join(save_dir, f"candidate_{c:04d}.eqx"), models[c],
                                   plan.candidates[c].structure,
                                   metadata=candidate_metadata(partial, pos))
    finally:
        bar.close()
    result = FitResult(build_dataset(records, result_attrs(plan, notes)), models,
                       [c.structure for c in plan.candidates])
    if save_dir is not None:
        save_dataset(result.dataset, os.path.join(save_dir, "results.nc"))
    return result


def result_attrs(plan: FitPlan, notes: Sequence[str] = ()) -> dict:
    """The attributes of a results Dataset (configuration and provenance)."""
    return {
        "config": plan.config.to_dict(),
        "dataset": plan.data.provenance.get("description", ""),
        "true_structure": plan.data.provenance.get("true_structure", ""),
        "n_devices": plan.n_devices,
        "n_groups": len(plan.groups),
        "warnings": list(notes),
        "loss": "mean over train samples, times and nodes of ((V - V_obs) / loss_scale)^2 "
                "+ aphynity_weight * mean square of the closures' contribution",
    }


def stability_audit(models, dataset, config: FitConfig | None = None, *, geometry=None,
                    mesh="auto") -> xr.Dataset:
    """Audit fitted models (e.g. ``FitResult.models``) on observations: roll each out on
    every held-out split (datasets of this package: the test horizon, 3x training, on
    the training sites and on the unseen pacing sites). Unstable models (divergence:
    non-finite state, state out of bounds, max steps) get ``test_rmse = inf`` and a
    reason.

    Models are grouped by compilation group (one compiled program per group and bucket
    size). **Returns:** an ``xarray.Dataset`` over ``candidate`` with ``stable``,
    ``stability_reason`` and ``test_rmse`` (mV).
    """
    config = FitConfig() if config is None else _as_config(config)
    data = as_fit_data(dataset, geometry)
    mesh = _resolve_mesh(mesh)
    n_dev = 1 if mesh is None else int(np.prod(mesh.devices.shape))
    models = list(models)
    if not models:
        raise ValueError("stability_audit: no models given")
    bad = [i for i, m in enumerate(models) if not isinstance(m, AbstractCompiledModel)]
    if bad:
        raise ValueError(f"stability_audit: model(s) {bad} are not compiled models "
                         "(leads_jax.compile.AbstractCompiledModel)")
    names = [n for n in (TEST, EXTRAPOLATION) if n in data.splits]
    names += [n for n in data.audit_splits if n not in names]
    splits = {n: _split(data, n) for n in names}
    if not splits:
        raise ValueError("stability_audit: the data have no held-out split")
    longest = max((v.ts for v in splits.values()), key=lambda t: float(t[-1] - t[0]))
    groups: dict = {}
    for i, m in enumerate(models):
        groups.setdefault(group_key(m), []).append(i)
    stable = np.zeros(len(models), bool)
    reason = [""] * len(models)
    test_rmse = np.full(len(models), np.nan)
    for idx in groups.values():
        members = [models[i] for i in idx]
        size = bucket_size(len(members), multiple_of=n_dev, minimum=config.min_bucket)
        stacked = pad_members(stack_members(members), len(members), size)
        params, rest = eqx.partition(stacked, members[0].trainable_filter())
        dt = config.dt if config.dt is not None else data.dt
        dt = float(dt) if dt is not None else members[0].default_dt
        rollout = SimulateRollout(config.solver, dt, _max_steps(longest, dt, config), False)
        out = audit_members(params, rest, rollout=rollout, context=data.geometry, splits=splits,
                            config=config, mesh=mesh)
        for pos, i in enumerate(idx):
            stable[i] = bool(out["stable"][pos])
            reason[i] = out["reason"][pos]
            test_rmse[i] = float(out["test_rmse"][pos])
    return xr.Dataset(
        {
            "stable": ("candidate", stable),
            "stability_reason": ("candidate", np.asarray(reason, dtype=object)),
            "test_rmse": ("candidate", test_rmse, {"units": "mV"}),
        },
        coords={"candidate": np.arange(len(models))},
    )
