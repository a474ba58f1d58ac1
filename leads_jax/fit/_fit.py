"""`fit`: candidates + a ground-truth dataset + a configuration -> fitted candidates.

Pipeline (all checks on the inputs happen before anything is compiled):

1. validate the candidates (grammar rules), the dataset (format, NaN samples,
   geometry) and the configuration;
2. group candidates by ``Structure.topology_key()``; per group, compile every
   (candidate, restart) member, stack them on one axis padded to a bucket size
   (a multiple of the device count when sharded);
3. train the group with :func:`~leads_jax.fit.train_members` (per-member optimizer,
   clipping, divergence masking, curriculum, early stopping on the validation split);
4. keep the best restart of each candidate (lowest validation loss);
5. audit stability: roll every candidate out over the test horizon (3x training) on
   the training sites and on the unseen (test) pacing sites; unstable ones get the
   worst test score (inf) and a reason;
6. assemble the results Dataset; optionally save every candidate (atomic writes).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Sequence

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from ..compile import bucket_size
from ._audit import audit_members
from ._batching import candidate_mesh, pad_members, stack_members, unstack_member
from ._config import FitConfig
from ._engine import REASONS, Rollout, SplitData, evaluate_members, train_members
from ._io import save_candidate
from ._progress import FitProgress
from ._results import CandidateRecord, FitResult, build_dataset, candidate_metadata


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
    closures add to the physics: ``rates(with closures) - rates(without)`` (additive
    closures: their output; gate closures: their departure from the catalog gate
    equation).
    """

    solver: str
    dt: float
    max_steps: int
    aphynity: bool

    def __call__(self, model, geometry, stimulus, ts):
        from ..simulate import simulate

        traj = simulate(model, geometry, stimulus, ts, solver=self.solver, dt=self.dt,
                        max_steps=self.max_steps, adjoint=diffrax.RecursiveCheckpointAdjoint())
        neural_sq = jnp.zeros((), traj.observed.dtype)
        if self.aphynity and getattr(model, "closures", ()):
            bound = model.bind(geometry)
            physics = eqx.tree_at(lambda b: b.closures, bound, ())
            states = jnp.where(jnp.isfinite(traj.state), traj.state, 0.0)
            diff = jax.vmap(lambda t, y: bound.rates(t, y) - physics.rates(t, y))(ts, states)
            neural_sq = jnp.mean(diff**2)
        return Rollout(traj.observed, traj.diverged, traj.reason, traj.t_diverged, neural_sq)


def _max_steps(ts, dt, config: FitConfig) -> int:
    if config.max_steps is not None:
        return int(config.max_steps)
    ts = np.asarray(ts, dtype=float)
    return int(math.ceil((ts[-1] - ts[0]) / dt)) + 2


# ---------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------
def _as_structures(candidates):
    from ..structure import Structure, validate

    if isinstance(candidates, (str, bytes)) or not isinstance(candidates, Sequence):
        if hasattr(candidates, "__iter__") and not isinstance(candidates, (str, bytes, dict)):
            candidates = list(candidates)
        else:
            candidates = [candidates]
    if len(candidates) == 0:
        raise ValueError("fit: the candidate list is empty; give at least one Structure")
    out = []
    for i, c in enumerate(candidates):
        if isinstance(c, (str, bytes, dict)):
            try:
                c = Structure.from_json(c)
            except ValueError as e:
                raise ValueError(f"fit: candidate {i}: {e}") from None
        if not isinstance(c, Structure):
            raise ValueError(
                f"fit: candidate {i} is a {type(c).__name__}, not a Structure (or its JSON)"
            )
        try:
            validate(c)
        except ValueError as e:
            raise ValueError(f"fit: candidate {i} is invalid: {e}") from None
        out.append(c)
    return out


def _as_dataset(dataset):
    from ..datasets import load_dataset, validate_dataset

    if isinstance(dataset, (str, os.PathLike)):
        return load_dataset(dataset)
    if not isinstance(dataset, xr.Dataset):
        raise ValueError(
            f"fit: dataset must be an xarray.Dataset or a path, got {type(dataset).__name__}"
        )
    return validate_dataset(dataset)


def _check_geometry(geometry, ds):
    from ..datasets import geometry_from_dataset

    stored = geometry_from_dataset(ds)
    if geometry is None:
        return stored
    if geometry.n_nodes != stored.n_nodes:
        raise ValueError(
            f"fit: geometry mismatch: the geometry has {geometry.n_nodes} nodes, the dataset "
            f"{stored.n_nodes}"
        )
    same = (
        np.allclose(np.asarray(geometry.vertices), np.asarray(stored.vertices), atol=1e-6)
        and np.asarray(geometry.edges).shape == np.asarray(stored.edges).shape
        and np.array_equal(np.asarray(geometry.edges), np.asarray(stored.edges))
        and np.allclose(np.asarray(geometry.edge_weights), np.asarray(stored.edge_weights),
                        rtol=1e-5)
    )
    if not same:
        raise ValueError(
            "fit: geometry mismatch: the given geometry's vertices/edges/weights differ from the "
            "dataset's (geom_* variables); fit on geometry_from_dataset(ds) or pass none"
        )
    return geometry


def _split_data(ds, split, horizon, geometry) -> SplitData | None:
    """One split as engine data (None when the dataset has no such samples)."""
    from ..datasets import split_dataset, stacked_stimuli

    if split != "all" and split not in set(np.asarray(ds["split"].values).tolist()):
        return None
    sub = split_dataset(ds, split, horizon=horizon)
    return SplitData(
        inputs=stacked_stimuli(sub, geometry),
        targets=jnp.asarray(sub["observed"].values, jnp.float32),
        ts=jnp.asarray(sub["time"].values, jnp.float32),
    )


# ---------------------------------------------------------------------------------------
# members
# ---------------------------------------------------------------------------------------
def _perturb(model, key, scale):
    """Restart noise on the free physical parameters (fixed ones never move) and, for
    generic models, on every trainable leaf."""
    from ..compile import HybridModel

    if scale == 0:
        return model
    if isinstance(model, HybridModel):
        b = model.params
        k1, k2, k3 = jax.random.split(key, 3)
        free = b.free
        new = (
            b.raw_global + scale * free * jax.random.normal(k1, b.raw_global.shape),
            b.raw_region + scale * free[:, None] * jax.random.normal(k2, b.raw_region.shape),
            b.raw_node + scale * free[:, None] * jax.random.normal(k3, b.raw_node.shape),
        )
        return eqx.tree_at(lambda m: (m.params.raw_global, m.params.raw_region,
                                      m.params.raw_node), model, new)
    params, rest = eqx.partition(model, eqx.is_inexact_array)
    leaves, tdef = jax.tree.flatten(params)
    keys = jax.random.split(key, max(1, len(leaves)))
    pairs = zip(leaves, keys[: len(leaves)], strict=True)
    leaves = [x + scale * jax.random.normal(k, x.shape, x.dtype) for x, k in pairs]
    return eqx.combine(jax.tree.unflatten(tdef, leaves), rest)


def _n_fitted(model, n_regions) -> int:
    """Number of fitted scalars: free physical parameters (1, n_regions or n_nodes each
    by mode) plus every trainable weight of the neural terms."""
    from ..compile import HybridModel

    if not isinstance(model, HybridModel):
        params, _ = eqx.partition(model, model.trainable_filter())
        return int(sum(x.size for x in jax.tree.leaves(params)))
    b = model.params
    free = np.asarray(b.free) > 0.5
    mode = np.argmax(np.asarray(b.mode), axis=1)
    per = np.array([1, n_regions, b.raw_node.shape[-1]])[mode]
    n = int(np.sum(per[free]))
    for part in (model.diffusion, *model.closures):
        p, _ = eqx.partition(part, part.trainable_filter())
        n += int(sum(x.size for x in jax.tree.leaves(p)))
    return n


def _fitted_values(model) -> dict[str, object]:
    """Free physical parameters of one fitted model: scalar, or per-node list."""
    from ..compile import HybridModel, physical_parameters

    if not isinstance(model, HybridModel):
        return {}
    vals = physical_parameters(model)
    free = np.asarray(model.params.free) > 0.5
    mode = np.argmax(np.asarray(model.params.mode), axis=1)
    out = {}
    for i, name in enumerate(model.params.names):
        if not free[i]:
            continue
        v = np.asarray(vals[name], dtype=float)
        out[name] = float(v.mean()) if mode[i] == 0 else [float(x) for x in v]
    return out


def _resolve_mesh(mesh):
    if isinstance(mesh, str):
        if mesh != "auto":
            raise ValueError(f"fit: mesh must be None, 'auto' or a jax.sharding.Mesh, got {mesh!r}")
        return candidate_mesh() if len(jax.devices()) > 1 else None
    return mesh


# ---------------------------------------------------------------------------------------
# fit
# ---------------------------------------------------------------------------------------
def fit(candidates, dataset, config: FitConfig | dict | None = None, *, key, geometry=None,
        mesh="auto", progress=True, save_dir=None) -> FitResult:
    """Fit the parameters of every candidate structure to a ground-truth dataset.

    **Arguments:**

    - `candidates`: a list of :class:`~leads_jax.structure.Structure` (or their JSON).
    - `dataset`: a ground-truth ``xarray.Dataset`` (:mod:`leads_jax.datasets` format)
      or the path of one.
    - `config`: a :class:`FitConfig` (or a dict of its fields); default ``FitConfig()``.
    - `key`: PRNG key (restarts, neural initialisation) — keyword-only.
    - `geometry`: optional; must match the dataset's geometry (default: the dataset's).
    - `mesh`: ``"auto"`` (shard the candidate axis over ``jax.devices()`` when there
      are several), ``None`` (one device) or a ``jax.sharding.Mesh`` with axis
      ``"cand"`` (see :func:`~leads_jax.fit.candidate_mesh`; multi-host: module
      docstring of ``leads_jax.fit._batching``).
    - `progress`: progress bar (candidates done, best validation error); quiet when
      stderr is not a terminal. ``"always"`` forces it.
    - `save_dir`: if given, every candidate is saved there as soon as its group is
      done (``candidate_<i>.eqx``, atomic), and ``results.nc`` at the end.

    **Returns:** a :class:`FitResult` (``.dataset``: xarray indexed by candidate;
    ``.models``: fitted models in candidate order).

    Invalid inputs (empty candidate list, invalid structures, NaN samples, a geometry
    that does not match, a bad configuration) raise ``ValueError`` before anything
    is compiled. Numerical failure never raises: it is reported per candidate.
    """
    from ..compile import compile_structure

    # -- 1. inputs, before any compilation --------------------------------------------
    if config is None:
        config = FitConfig()
    elif isinstance(config, dict):
        unknown = sorted(set(config) - {f.name for f in dataclasses.fields(FitConfig)})
        if unknown:
            raise ValueError(f"fit: unknown FitConfig field(s) {unknown}")
        config = FitConfig(**config)
    elif not isinstance(config, FitConfig):
        raise ValueError(f"fit: config must be a FitConfig or a dict, got {type(config).__name__}")
    structures = _as_structures(candidates)
    ds = _as_dataset(dataset)
    geo = _check_geometry(geometry, ds)
    mesh = _resolve_mesh(mesh)
    n_dev = 1 if mesh is None else int(np.prod(mesh.devices.shape))
    train = _split_data(ds, "train", "train", geo)
    if train is None:
        raise ValueError("fit: the dataset has no 'train' samples")
    val = _split_data(ds, "val", "train", geo)
    audit_splits = {}
    if config.audit:
        test = _split_data(ds, "test", "test", geo)
        if test is not None:
            audit_splits["test"] = test
        audit_splits["train sites, test horizon"] = _split_data(ds, "train", "test", geo)
    dt = float(config.dt if config.dt is not None else ds.attrs.get("dt", 0.0) or 0.0)
    if not dt > 0:
        dt = None  # the model's own default, resolved per group below

    # -- 2. groups ----------------------------------------------------------------------
    groups: dict[tuple, list[int]] = {}
    for i, s in enumerate(structures):
        groups.setdefault(s.topology_key(), []).append(i)

    records: list[CandidateRecord | None] = [None] * len(structures)
    models: list = [None] * len(structures)
    n_regions = int(getattr(geo, "n_regions", 1) or 1)
    bar = FitProgress(len(structures), progress)
    done_before = 0
    try:
        for topo, idx in groups.items():
            t0 = time.perf_counter()
            members, owner = [], []
            for c in idx:
                for r in range(config.restarts):
                    k = jax.random.fold_in(key, c * 1009 + r)
                    m = compile_structure(structures[c], geo, key=k)
                    if r > 0:
                        m = _perturb(m, jax.random.fold_in(k, 7), config.restart_noise)
                    members.append(m)
                    owner.append(c)
            n = len(members)
            size = bucket_size(n, multiple_of=n_dev, minimum=config.min_bucket)
            stacked = pad_members(stack_members(members), n, size)
            spec = members[0].trainable_filter()
            params, rest = eqx.partition(stacked, spec)
            group_dt = dt if dt is not None else members[0].default_dt

            def rollout_for(ts, group_dt=group_dt):
                return SimulateRollout(config.solver, group_dt, _max_steps(ts, group_dt, config),
                                       config.aphynity_weight > 0)

            # max_steps bounds the solve (and sizes the checkpointing of reverse mode);
            # the full training horizon bounds the curriculum's shorter stages too.
            rollout = rollout_for(train.ts)
            owner_arr = np.asarray(owner + [-1] * (size - n))

            def on_eval(status, idx=idx, owner_arr=owner_arr, n=n, done_before=done_before):
                finished = ~status["alive"] | status["stopped"]
                done = sum(bool(np.all(finished[:n][owner_arr[:n] == c])) for c in idx)
                best = np.min(np.where(status["alive"][:n], status["best_loss"][:n], np.inf))
                bar.update(done_before + done, math.sqrt(best) * config.loss_scale
                           if np.isfinite(best) else None)

            out = train_members(
                params, rest, rollout=rollout, context=geo,
                train=train, val=val, config=config, mesh=mesh, on_eval=on_eval,
            )
            evals = {"train": evaluate_members(out.params, rest, rollout=rollout, context=geo,
                                               data=train, config=config, mesh=mesh)}
            if val is not None:
                evals["val"] = evaluate_members(out.params, rest, rollout=rollout, context=geo,
                                                data=val, config=config, mesh=mesh)
            audit = None
            if audit_splits:
                audit = audit_members(
                    out.params, rest,
                    rollout=rollout_for(max((v.ts for v in audit_splits.values()),
                                            key=lambda t: float(t[-1] - t[0]))),
                    context=geo, splits=audit_splits, config=config, mesh=mesh,
                )
            seconds = time.perf_counter() - t0
            fitted = eqx.combine(out.params, rest)
            st = out.status
            for c in idx:
                mine = np.flatnonzero(owner_arr == c)
                score = np.where(np.isfinite(st["best_loss"][mine]), st["best_loss"][mine], np.inf)
                j = int(mine[int(np.argmin(score))])
                model = unstack_member(fitted, j)
                models[c] = model
                rmse = {k: float(np.sqrt(v["mse"][j]) * config.loss_scale) if not v["diverged"][j]
                        else math.inf for k, v in evals.items()}
                never_ok = not np.isfinite(st["best_loss"][j])
                if never_ok:
                    status_text = f"diverged: {REASONS.get(int(st['reason'][j]), '?')}"
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
                    reason = (f"{REASONS.get(int(st['reason'][j]), '?')} during training at "
                              f"t={float(st['t_diverged'][j]):.1f} ms")
                    test_rmse = math.inf
                fitted_vals = _fitted_values(model)
                records[c] = CandidateRecord(
                    structure_json=structures[c].to_json(),
                    formula=_formula(structures[c]),
                    topology=json.dumps(topo, default=str),
                    params={k: (v if isinstance(v, float) else float(np.mean(v)))
                            for k, v in fitted_vals.items()},
                    n_params=_n_fitted(model, n_regions),
                    train_rmse=rmse["train"],
                    val_rmse=rmse.get("val", math.nan),
                    test_rmse=test_rmse,
                    train_loss=float(evals["train"]["loss"][j]),
                    stable=stable,
                    stability_reason=reason,
                    fit_status=status_text,
                    diverged_reason="" if st["reason"][j] == 0
                    else REASONS.get(int(st["reason"][j]), "?"),
                    t_diverged=float(st["t_diverged"][j]),
                    best_restart=int(j - mine[0]),
                    best_step=int(st["best_step"][j]),
                    fit_seconds=seconds / len(idx),
                    train_curve=np.asarray(out.train_curve[j], dtype=float),
                    val_curve=np.asarray(out.val_curve[j], dtype=float),
                    val_steps=np.asarray(out.val_steps),
                )
            done_before += len(idx)
            bar.update(done_before)
            if save_dir is not None:
                partial = build_dataset([records[c] for c in idx], {})
                for pos, c in enumerate(idx):
                    save_candidate(os.path.join(save_dir, f"candidate_{c:04d}.eqx"), models[c],
                                   structures[c], metadata=candidate_metadata(partial, pos))
    finally:
        bar.close()

    attrs = {
        "config": config.to_dict(),
        "dataset": str(ds.attrs.get("description", "")),
        "true_structure": str(ds.attrs.get("structure", "")),
        "n_devices": n_dev,
        "n_groups": len(groups),
        "loss": "mean over train samples, times and nodes of ((V - V_obs) / loss_scale)^2 "
                "+ aphynity_weight * mean square of the closures' contribution",
    }
    result = FitResult(build_dataset(records, attrs), models, structures)
    if save_dir is not None:
        from ._results import save_dataset

        save_dataset(result.dataset, os.path.join(save_dir, "results.nc"))
    return result


def _formula(s) -> str:
    try:
        return s.formula()
    except Exception:  # rendering must never break a fit
        return ""


def stability_audit(models, dataset, config: FitConfig | None = None, *, geometry=None,
                    mesh="auto") -> xr.Dataset:
    """Audit fitted models (e.g. ``FitResult.models``) on a ground-truth dataset: roll
    each out over the test horizon (3x training) on the training sites and on the unseen
    (test) pacing sites. Unstable models (divergence: non-finite state, state out of
    bounds, max steps) get ``test_rmse = inf`` and a reason.

    Models are grouped by topology (one compiled program per group and bucket size).
    **Returns:** an ``xarray.Dataset`` over ``candidate`` with ``stable``,
    ``stability_reason`` and ``test_rmse`` (mV).
    """
    config = FitConfig() if config is None else config
    ds = _as_dataset(dataset)
    geo = _check_geometry(geometry, ds)
    mesh = _resolve_mesh(mesh)
    n_dev = 1 if mesh is None else int(np.prod(mesh.devices.shape))
    models = list(models)
    if not models:
        raise ValueError("stability_audit: no models given")
    splits = {}
    test = _split_data(ds, "test", "test", geo)
    if test is not None:
        splits["test"] = test
    splits["train sites, test horizon"] = _split_data(ds, "train", "test", geo)
    longest = max((v.ts for v in splits.values()), key=lambda t: float(t[-1] - t[0]))
    groups: dict = {}
    for i, m in enumerate(models):
        arrays, static = eqx.partition(m, eqx.is_array)
        key = (jax.tree.structure(arrays), tuple(x.shape for x in jax.tree.leaves(arrays)))
        groups.setdefault(key, []).append(i)
    stable = np.zeros(len(models), bool)
    reason = [""] * len(models)
    test_rmse = np.full(len(models), np.nan)
    for idx in groups.values():
        members = [models[i] for i in idx]
        size = bucket_size(len(members), multiple_of=n_dev, minimum=config.min_bucket)
        stacked = pad_members(stack_members(members), len(members), size)
        params, rest = eqx.partition(stacked, members[0].trainable_filter())
        dt = float(config.dt if config.dt is not None else ds.attrs.get("dt", 0.0) or 0.0)
        dt = dt if dt > 0 else members[0].default_dt
        rollout = SimulateRollout(config.solver, dt, _max_steps(longest, dt, config), False)
        out = audit_members(params, rest, rollout=rollout, context=geo, splits=splits,
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
