"""The discovery loop: propose -> fit (in parallel) -> observe -> reflect -> propose.

:func:`discover` runs rounds until a stop rule fires:

1. **propose**: the policy reads an :class:`~leads_jax.agent.AgentContext` and returns
   up to ``K`` proposals; each is applied by the grammar (a rejection is logged with its
   rule and field, never executed) and looked up in the **memory**, keyed by the
   candidate's canonical form, so nothing is fitted twice;
2. **fit**: all new candidates of the round in ONE :func:`leads_jax.fit.fit` call
   (grouped by topology, vmapped, compiled once per topology and process);
3. **observe**: every fitted candidate is rolled out on the validation sites over the
   whole record and summarised (:mod:`leads_jax.agent._observe`);
4. **reflect**: the policy states what to change and why (saved in the transcript);
5. the round is written atomically under ``out/`` (:mod:`leads_jax.agent._io`).

Stop rules (:class:`Budget`): rounds, candidates, wall time, `patience` rounds without
an improvement of the best validation error by more than the selection margin, a
``stop`` action, or a round with nothing new to fit.

**Selection** (:func:`select`): among stable candidates, the best validation RMSE
``best`` sets a margin ``max(rel_tol * best, noise_tol * sigma)`` (``sigma``: the
data's noise level); every candidate within ``best + margin`` is *within noise* of the
best, and the simplest of those (fewest fitted scalars; then lower validation error)
wins. Defaults ``rel_tol = 0.05``, ``noise_tol = 0.25``. The winner is then scored
**once** on the test pacing sites over the whole record (``test_rmse``), data that
neither the fits, the observations nor the selection used.

**Compilation** is measured from JAX's own compile events: each round reports the
number of backend compilations, those of the training program (one per new topology
group), and their seconds apart from training. A round that brings no new topology
compiles no training program. Off the critical path: a round's topology groups are
fitted in a thread pool (:func:`fit_round`), so their compilations run concurrently
(XLA compiles without the GIL); every group is padded to the round size so later rounds
reuse the programs; and the CLI turns on JAX's persistent compilation cache when the
package offers it, so a resumed or repeated run does not recompile.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import json
import math
import os
import pathlib
import re
import time
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from ..compile import bucket_size, compile_structure
from ..fit import (
    FitConfig,
    FitResult,
    build_dataset,
    fit_group,
    load_candidate,
    prepare,
    result_attrs,
    save_candidate,
    save_dataset,
)
from ..recording import with_observation_gain
from ..structure import Catalog, Structure
from . import _io
from ._actions import ActionRejected, Proposal, apply_proposal, describe_action
from ._catalog_doc import render_catalog_doc
from ._data import DiscoveryData, discovery_data, fit_dt
from ._methods import resolve_method
from ._observe import Observation, observe, predict, render_observations
from ._policy import AgentContext, ModelProposal, Policy, candidate_key
from ._report import write_final
from ._report import write_report as _write_report
from ._select import Selection, select

__all__ = ["Budget", "CompileLog", "DiscoveryResult", "discover", "fit_round"]

TRAIN_PROGRAMS = ("jit(train_chunk)",)
"""Names (JAX ``fun_name``) of the fitting engine's training program: ``eval_every``
optimisation steps of every member (``leads_jax.fit._engine._chunk_fn``)."""
ENGINE_PROGRAMS = TRAIN_PROGRAMS + (
    "jit(evaluate)",  # the loss of every member on one split (fit._engine._eval_fn)
    "jit(init_optimizer)",  # optimizer states of every member (fit._engine._init_fn)
    "jit(_track_best)",  # early-stopping bookkeeping (fit._engine)
    "jit(_perturb_members)",  # restart noise (fit._fit)
    "jit(_values_any)",  # fitted values of a parameter block (compile)
    "jit(_rollout)",  # the observation's rollouts on validation and test (agent._observe)
)
"""The programs of a round that depend on the candidates' topologies, by name. Counting
them by name, not by compile time, tells them from the small eager operations of array
bookkeeping (``jit(add)``, ``jit(broadcast_in_dim)``, ...) on a machine of any speed and
load; ``tests/test_agent_discover.py`` checks that a first round compiles each of them."""


# ---------------------------------------------------------------------------------------
# budgets and selection
# ---------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Budget:
    """Stop rules of a run.

    - `rounds`: at most this many rounds.
    - `candidates`: at most this many fitted candidates in all.
    - `seconds`: wall-time budget (checked before each round); ``None``: none.
    - `patience`: stop after this many rounds without improvement (``None``: never).
    - `k`: candidates proposed per round.
    - `max_cost` (USD), `max_tokens`: the LLM budget (LLM policy only).
    """

    rounds: int = 4
    candidates: int = 16
    seconds: float | None = None
    patience: int | None = 2
    k: int = 5
    max_cost: float | None = None
    max_tokens: int | None = None

    def __post_init__(self):
        def whole(name, v, minimum=1):
            if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < minimum:
                raise ValueError(f"Budget.{name} must be an integer >= {minimum}; got {v!r}")
            object.__setattr__(self, name, int(v))

        whole("rounds", self.rounds)
        whole("candidates", self.candidates)
        whole("k", self.k)
        if self.patience is not None:
            whole("patience", self.patience)
        for name in ("seconds", "max_cost"):
            v = getattr(self, name)
            if v is not None:
                if isinstance(v, bool) or not (float(v) > 0 and math.isfinite(float(v))):
                    raise ValueError(f"Budget.{name} must be a positive number or None; "
                                     f"got {v!r}")
                object.__setattr__(self, name, float(v))
        if self.max_tokens is not None:
            whole("max_tokens", self.max_tokens)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------
# compile accounting
# ---------------------------------------------------------------------------------------
class CompileLog:
    """Records JAX backend compilations while active (``with CompileLog() as log``).

    :attr:`seconds` sums their durations, over every thread that compiled (with
    concurrent compilation it can exceed the wall time); :attr:`wall_seconds` is the
    wall time during which at least one compilation was running (the union of their
    intervals), the part of a fit's wall time that compilation accounts for."""

    EVENT = "/jax/core/compile/backend_compile_duration"

    def __init__(self):
        self.events: list[tuple[str, float]] = []
        self.intervals: list[tuple[float, float]] = []  # (start, end), perf_counter s

    def _cb(self, event, duration, **kw):
        if event == self.EVENT:  # reported as the compilation ends
            end = time.perf_counter()
            self.events.append((str(kw.get("fun_name", "")), float(duration)))
            self.intervals.append((end - float(duration), end))

    def __enter__(self):
        from jax._src import monitoring

        monitoring.register_event_duration_secs_listener(self._cb)
        return self

    def __exit__(self, *exc):
        from jax._src import monitoring

        with contextlib.suppress(Exception):
            monitoring.unregister_event_duration_listener(self._cb)

    @property
    def seconds(self) -> float:
        return float(sum(d for _, d in self.events))

    @property
    def wall_seconds(self) -> float:
        total, end = 0.0, -math.inf
        for a, b in sorted(self.intervals):
            if b > end:
                total += b - max(a, end)
                end = b
        return float(total)

    @property
    def programs(self) -> list[str]:
        """The engine programs compiled (:data:`ENGINE_PROGRAMS`), in order."""
        return [n for n, _ in self.events if n in ENGINE_PROGRAMS]

    @property
    def n_programs(self) -> int:
        return len(self.programs)

    @property
    def n_train_programs(self) -> int:
        return sum(1 for n, _ in self.events if n in TRAIN_PROGRAMS)

    def summary(self) -> dict:
        return {"n_compilations": len(self.events), "n_programs": self.n_programs,
                "n_train_programs": self.n_train_programs, "programs": self.programs,
                "compile_seconds": self.seconds, "compile_wall_seconds": self.wall_seconds}


# ---------------------------------------------------------------------------------------
# candidates
# ---------------------------------------------------------------------------------------
@dataclasses.dataclass
class Candidate:
    id: int
    round: int
    parent: int | None
    origin: str
    key: str
    structure: Structure | None = None
    model_spec: dict | None = None  # non-grammar baselines: {"kind": ..., ...}
    warm: int | None = None  # the candidate a ``refine`` action warm starts from

    def spec_json(self) -> str:
        if self.structure is not None:
            return self.structure.to_json()
        return json.dumps(self.model_spec, sort_keys=True)

    def to_dict(self) -> dict:
        return {"id": self.id, "round": self.round, "parent": self.parent,
                "origin": self.origin, "key": self.key,
                "structure": None if self.structure is None else self.structure.to_dict(),
                "model_spec": self.model_spec, "warm": self.warm}

    @classmethod
    def from_dict(cls, d: Mapping) -> Candidate:
        s = d.get("structure")
        return cls(int(d["id"]), int(d["round"]), d.get("parent"), str(d.get("origin", "")),
                   str(d["key"]), None if s is None else Structure.from_dict(s),
                   d.get("model_spec"), d.get("warm"))

    @property
    def reaction(self) -> str | None:
        return None if self.structure is None else self.structure.canonical().reaction

    def formula(self) -> str:
        if self.structure is not None:
            return self.structure.formula()
        return json.dumps(self.model_spec, sort_keys=True)


@dataclasses.dataclass
class DiscoveryResult:
    """What :func:`discover` returns.

    - `best`: the selected structure (``Structure``), or the spec of a non-grammar
      winner (dict); ``None`` when nothing was stable.
    - `best_id`, `observation`: its id and observation; `model`: its fitted model.
    - `test_rmse`: its RMSE (mV) on the test pacing sites over the whole record
      (``nan`` when the data have no test split; ``inf`` when it diverges there).
    - `history`: every observation, in id order; `selection`: the selection table.
    - `rounds`, `stop_reason`, `timings` (compile vs train seconds, compilations per
      round), `report` (paths of report.md, results.nc, figures), `out`, `transcript`.
    - `resumed_rounds`: finished rounds read back from `out` (``resume=True``);
      `fitted_ids`: the candidates this call fitted itself.
    """

    best: Any
    best_id: int | None
    model: Any
    observation: Observation | None
    test_rmse: float
    history: list[Observation]
    selection: list[dict]
    rounds: int
    stop_reason: str
    timings: list[dict]
    report: dict
    out: pathlib.Path | None
    transcript: list[dict]
    method: str = "leads"
    policy: str = "offline"
    notes: list[str] = dataclasses.field(default_factory=list)
    resumed_rounds: int = 0
    fitted_ids: list[int] = dataclasses.field(default_factory=list)


# ---------------------------------------------------------------------------------------
# the loop
# ---------------------------------------------------------------------------------------
def _check_key(key):
    if isinstance(key, int | np.integer) or key is None:
        raise ValueError(
            f"discover: key must be a JAX PRNG key such as jax.random.key(0); got {key!r}")
    try:
        jax.random.fold_in(key, 0)
    except Exception:
        raise ValueError(f"discover: key must be a JAX PRNG key such as jax.random.key(0); "
                         f"got {type(key).__name__}") from None
    return key


def _default_config(data: DiscoveryData):
    return FitConfig(steps=150, learning_rate=2e-2, eval_every=10, patience=5)


def _resolve_catalog(catalog, data: DiscoveryData) -> Catalog:
    cat = Catalog.default() if catalog is None else catalog
    if not isinstance(cat, Catalog):
        raise ValueError(f"discover: catalog must be a leads_jax.structure.Catalog; got "
                         f"{type(cat).__name__}")
    if data.geometry.n_edges == 0 and "none" in cat.diffusions:
        cat = dataclasses.replace(cat, diffusions=("none",))
    return cat


def heldout_prediction(model, data: DiscoveryData, config) -> np.ndarray | None:
    """`model`'s rollout on the held-out test sites, ``(n_samples, n_times)`` in mV
    (at :func:`fit_dt`, with the fit's solver), or ``None`` when there is no test split
    or no model, or the rollout diverges or is not finite."""
    if data.test is None or model is None:
        return None
    dt = fit_dt(config, data, model)
    pred, _, div, _ = predict([model], data.geometry, data.test.stimuli, data.test.ts,
                              solver=config.solver, dt=dt, min_bucket=config.min_bucket)
    if bool(np.any(div[0])) or not np.all(np.isfinite(pred[0])):
        return None
    return np.asarray(pred[0])


def _score_test(model, data: DiscoveryData, config) -> float:
    """The held-out test RMSE (mV) on the scored window: NaN without a test split or a
    model, inf for a rollout that diverges."""
    if data.test is None or model is None:
        return math.nan
    pred = heldout_prediction(model, data, config)
    if pred is None:
        return math.inf
    err = (pred - data.test.observed)[:, data.test.scored]
    return float(np.sqrt(np.mean(err**2)))


def _settings(method, policy_name, budget, config, selection, catalog, data, seed_text, k):
    return {"method": method, "policy": policy_name, "budget": budget.to_dict(),
            "fit_config": config.to_dict(), "selection": dataclasses.asdict(selection),
            "catalog": dataclasses.asdict(catalog), "data": data.source,
            "data_summary": data.summary(), "key": seed_text, "k": k,
            # only when on: run folders of simulated data read as before, and a resume
            # that would mix wrapped and unwrapped candidates is refused
            **({"observation_gain": True} if data.observation_gain else {})}


def discover(data, *, policy: str | Policy = "offline", method: str = "leads",
             budget: Budget | None = None, key, out=None, resume: bool = False,
             catalog: Catalog | None = None, config=None, selection: Selection | None = None,
             llm: Mapping | None = None, progress: bool = True,
             write_report: bool = True, pad_groups: bool = True,
             compile_workers: int = 2,
             observation_gain: bool | None = None) -> DiscoveryResult:
    """Discover a model structure for `data` (module docstring).

    **Arguments:**

    - `data`: a dataset (``xarray.Dataset`` in the :mod:`leads_jax.datasets` format, e.g.
      from ``make_dataset`` or ``from_recording``) or its path. It needs train and val
      splits; test samples, if any, are kept apart for the final score.
    - `policy`: ``"offline"`` (default), ``"llm"`` (with `llm`: keyword arguments of
      :class:`~leads_jax.agent._llm.LLMClient`, e.g. ``{"model": "openai/gpt-4o-mini"}``),
      or a :class:`~leads_jax.agent.Policy`.
    - `method`: ``"leads"`` or a baseline / ablation (:data:`~leads_jax.agent.METHODS`).
    - `budget`: a :class:`Budget`; `selection`: a :class:`Selection`.
    - `key`: a JAX PRNG key (keyword-only); every random choice derives from it.
    - `out`: folder for the run (rounds, transcript, report); ``None``: nothing written.
    - `resume`: continue the run in `out` from its last finished round.
    - `catalog`: the terms the search may use (default: the full catalog).
    - `config`: a :class:`~leads_jax.fit.FitConfig` for every fit.
    - `progress`: a progress bar (round, candidates, best score).
    - `pad_groups`: pad every topology group to the round size ``K`` (``min_bucket``),
      so no round recompiles a topology because it brings more of its candidates.
    - `compile_workers`: topology groups of a round fitted (hence compiled) concurrently
      in this many threads (:func:`fit_round`); 1: one after another.
    - `observation_gain`: fit every candidate through a bounded, fitted gain and offset
      to mV (:func:`leads_jax.recording.with_observation_gain`; a ``refine`` also warm
      starts them). ``None`` (default): on for a user's recording (``from_recording``,
      ``leads import``), which has no fixed map to mV; off for data simulated by this
      package, whose candidates keep their models' own maps.

    Bad inputs (missing variables, no validation split, a zero budget, an unknown
    policy, method or provider, a missing API key) raise ``ValueError`` before any
    compilation.
    """
    key = _check_key(key)
    budget = Budget() if budget is None else budget
    if not isinstance(budget, Budget):
        raise ValueError(f"discover: budget must be a Budget; got {type(budget).__name__}")
    selection = Selection() if selection is None else selection
    spec = resolve_method(method)
    d = discovery_data(data, observation_gain=observation_gain)
    cat = _resolve_catalog(catalog, d)
    if config is None:
        config = _default_config(d)
    elif isinstance(config, Mapping):
        config = FitConfig(**config)
    if not isinstance(config, FitConfig):
        raise ValueError(f"discover: config must be a FitConfig; got {type(config).__name__}")
    config = spec.adjust_config(config, budget)
    pol = spec.make_policy(policy, budget=budget, llm=llm, catalog=cat, data=d)
    k = spec.per_round(budget)
    if pad_groups and config.min_bucket < bucket_size(k):
        # Every topology group is padded to the round size, so a topology compiles once
        # per run whatever number of its candidates a round brings.
        config = dataclasses.replace(config, min_bucket=bucket_size(k))
    rounds_max = spec.rounds(budget)
    seed_text = str(np.asarray(jax.random.key_data(key)).ravel().tolist())
    settings = _settings(spec.name, pol.name, budget, config, selection, cat, d, seed_text, k)

    outp = None if out is None else pathlib.Path(out)
    done: list[int] = []
    if outp is not None:
        run_json = outp / "run.json"
        if resume and run_json.exists():
            old = _io.read_json(run_json)
            diff = sorted(kk for kk in settings if old.get(kk) != _io._unclean(
                json.loads(_io.dumps(settings[kk]))))
            if diff:
                raise ValueError(f"discover: resume=True but {sorted(diff)} differ from the "
                                 f"run in {outp} (run.json); resume with the same settings")
            done = _io.finished_rounds(outp)
        elif run_json.exists() and not resume:
            raise ValueError(f"discover: {outp} already holds a run; pass resume=True to "
                             "continue it or choose a new --out folder")
        else:
            _io.write_json(run_json, settings)

    # -- state ------------------------------------------------------------------------
    cands: list[Candidate] = []
    obs: dict[int, Observation] = {}
    memory: dict[str, int] = {}
    reflections: list[str] = []
    transcript: list[dict] = []
    timings: list[dict] = []
    models: dict[int, Any] = {}
    stop_reason = ""
    last_rejections: list[dict] = []
    for r in done:
        rd = _io.round_dir(outp, r)
        rc = [Candidate.from_dict(x) for x in _io.read_json(rd / "structures.json")]
        cands += rc
        for x in _io.read_json(rd / "metrics.json"):
            o = Observation.model_validate(x)
            obs[o.id] = o
        for c in rc:
            memory.setdefault(c.key, c.id)
        tr = _io.read_jsonl(rd / "transcript.jsonl")
        transcript += tr
        reflections += [t["text"] for t in tr if t.get("event") == "reflect"]
        last_rejections = [t for t in tr if t.get("event") == "rejected"]
        stops = [t for t in tr if t.get("event") == "stop"]
        timings.append(_io.read_json(rd / "timings.json"))
        pol.restore(_io.read_json(rd / "policy.json"))
        if stops:
            stop_reason = stops[-1]["reason"]

    t_start = time.perf_counter() - sum(t.get("round_seconds", 0.0) for t in timings)
    bar = _Progress(rounds_max, progress)
    bar.update(len(done), len(cands), _best_val(obs.values()), None)
    best_before = _best_val(obs.values())
    no_improve = 0
    for t in timings:
        no_improve = t.get("no_improve", 0)
    r = len(done)
    fitted_here: list[int] = []
    try:
        while not stop_reason:
            if r >= rounds_max:
                stop_reason = f"round budget reached ({rounds_max})"
                break
            left = budget.candidates - len(cands)
            if left <= 0:
                stop_reason = f"candidate budget reached ({budget.candidates})"
                break
            if budget.seconds is not None and time.perf_counter() - t_start > budget.seconds:
                stop_reason = f"wall-time budget reached ({budget.seconds:g} s)"
                break
            t_round = time.perf_counter()
            rkey = jax.random.fold_in(key, r)
            if outp is not None:
                _io.write_json(outp / "progress.json", {"round": r, "phase": "propose"})
            visible = list(obs.values()) if spec.memory else [
                obs[c.id] for c in cands if c.round == r - 1 and c.id in obs]
            ctx = _context(r, min(k, left), cat, d, visible, obs, cands, reflections,
                           last_rejections, memory if spec.memory else {}, rounds_max - r,
                           left, selection, spec.memory)
            items = pol.propose(ctx, min(k, left), key=jax.random.fold_in(rkey, 1))
            events = [{"event": "propose", "round": r, "policy": pol.name,
                       "proposals": _dump(items)}]
            events += _policy_events(pol, r)
            new: list[Candidate] = []
            rejections = []
            stop_now = ""
            taken = set()
            for item in items:
                if isinstance(item, Proposal) and any(a.kind == "stop" for a in item.actions):
                    stop_now = next(a.reason for a in item.actions if a.kind == "stop") or \
                        "the policy asked to stop"
                    if all(a.kind == "stop" for a in item.actions):
                        continue
                try:
                    c = _make_candidate(item, len(cands) + len(new), r, cands, obs, cat,
                                        spec.memory)
                except ActionRejected as e:
                    rejections.append({"event": "rejected", "round": r, **e.to_dict(),
                                       "proposal": _dump([item])[0]})
                    continue
                if (spec.memory and c.key in memory) or c.key in taken:
                    rejections.append({"event": "rejected", "round": r, "rule": "in-memory",
                                       "field": "", "action": "", "message":
                                       f"already fitted as #{memory.get(c.key, '?')}; not "
                                       "refitted", "proposal": _dump([item])[0]})
                    continue
                taken.add(c.key)
                new.append(c)
                if len(new) >= left:
                    break
            events += rejections
            last_rejections = rejections
            if not new:
                stop_reason = stop_now or "the policy proposed nothing new"
                events.append({"event": "stop", "round": r, "reason": stop_reason})
                transcript += events
                break
            # -- fit ------------------------------------------------------------------
            if outp is not None:
                _io.write_json(outp / "progress.json", {"round": r, "phase": "fit",
                                                        "candidates": [c.id for c in new]})
            t_fit = time.perf_counter()
            with CompileLog() as clog:
                result = fit_round(_fit_inputs(new, spec, d, jax.random.fold_in(rkey, 3),
                                               obs),
                                   d.search, config, key=jax.random.fold_in(rkey, 2),
                                   workers=compile_workers)
            fit_s = time.perf_counter() - t_fit
            fitted_models = list(result.models)
            fit_event = {"event": "fit", "round": r, "candidates": [c.id for c in new],
                         "topologies": len({str(x) for x in
                                            result.dataset["topology"].values})}
            data_notes = set(d.fit_data.warnings)
            fit_notes = [w for w in json.loads(result.dataset.attrs.get("warnings", "[]"))
                         if w not in data_notes]
            if fit_notes:  # e.g. a dt above a candidate's stable step (checked by fit)
                fit_event["warnings"] = [_renumber(w, new) for w in fit_notes]
            events.append(fit_event)
            # -- observe --------------------------------------------------------------
            t_obs = time.perf_counter()
            with CompileLog() as olog:
                dt = fit_dt(config, d, fitted_models[0])
                round_obs = observe(
                    ids=[c.id for c in new], rounds=[r] * len(new),
                    parents=[c.parent for c in new], origins=[c.origin for c in new],
                    specs=[c.spec_json() for c in new], formulas=[_formula(c, d) for c in new],
                    reactions=[c.reaction for c in new], records=result.dataset,
                    models=fitted_models, data=d, solver=config.solver, dt=dt,
                    min_bucket=config.min_bucket)
            obs_s = time.perf_counter() - t_obs
            fitted_here += [c.id for c in new]
            for c, o, m in zip(new, round_obs, fitted_models, strict=True):
                obs[c.id] = o
                models[c.id] = m
                memory.setdefault(c.key, c.id)
            cands += new
            events.append({"event": "observe", "round": r,
                           "text": render_observations(round_obs)})
            # -- reflect --------------------------------------------------------------
            best_now = _best_val(obs.values())
            visible = list(obs.values()) if spec.memory else round_obs
            ctx = _context(r, k, cat, d, visible, obs, cands, reflections, rejections,
                           memory if spec.memory else {}, rounds_max - r - 1,
                           budget.candidates - len(cands), selection, spec.memory)
            if spec.reflect:
                text = pol.reflect(ctx)
                reflections.append(text)
                events.append({"event": "reflect", "round": r, "text": text})
            events += _policy_events(pol, r)
            winner, _ = select(obs.values(), d.noise_std, selection)
            events.append({"event": "best", "round": r, "selected": winner,
                           "best_val_rmse": best_now,
                           "top": [o.id for o in ctx.top]})
            margin = selection.margin(best_before, d.noise_std) if math.isfinite(
                best_before) else 0.0
            if math.isfinite(best_now) and (not math.isfinite(best_before)
                                            or best_now < best_before - margin):
                no_improve = 0
            else:
                no_improve += 1
            best_before = min(best_before, best_now)
            if stop_now:
                stop_reason = stop_now
            elif budget.patience is not None and no_improve >= budget.patience:
                stop_reason = f"no improvement for {no_improve} round(s)"
            if stop_reason:
                events.append({"event": "stop", "round": r, "reason": stop_reason})
            timing = {"round": r, "n_candidates": len(new), "fit_seconds": fit_s,
                      "observe_seconds": obs_s, **{f"fit_{a}": b for a, b in
                                                   clog.summary().items()},
                      **{f"observe_{a}": b for a, b in olog.summary().items()},
                      "train_seconds": max(fit_s - clog.wall_seconds, 0.0),
                      "round_seconds": time.perf_counter() - t_round,
                      "no_improve": no_improve}
            timings.append(timing)
            transcript += events
            if outp is not None:
                _write_round(outp, r, new, round_obs, result, fitted_models, events, timing,
                             pol.state(), pol)
                _io.atomic_write_text(outp / "transcript.jsonl", _io.jsonl(transcript))
            r += 1
            bar.update(r, len(cands), best_now, winner)
    finally:
        bar.close()

    # -- selection and the held-out score ----------------------------------------------
    history = [obs[i] for i in sorted(obs)]
    winner, table = select(history, d.noise_std, selection)
    best = model = observation = None
    test_rmse = math.nan
    if winner is not None:
        c = cands[winner]
        best = c.structure if c.structure is not None else c.model_spec
        observation = obs[winner]
        model = models.get(winner)
        if model is None and outp is not None:
            model = _load_model(outp, c, d, spec)
        test_rmse = _score_test(model, d, config)
    notes = list(d.warnings) + _fit_warnings(transcript) + spec.notes(pol)
    res = DiscoveryResult(best, winner, model, observation, test_rmse, history, table, r,
                          stop_reason, timings, {}, outp, transcript, spec.name, pol.name,
                          notes, len(done), fitted_here)
    if outp is not None:
        _io.write_json(outp / "progress.json", {"round": r, "phase": "done"})
    if outp is not None:
        write_final(outp, res, d, config, selection)
        if write_report:
            res.report = _write_report(outp)
    return res


def fit_round(candidates, data, config, *, key, workers: int = 2):
    """``leads_jax.fit.fit`` with the topology groups fitted in `workers` threads.

    Built from the engine's parts (:func:`~leads_jax.fit.prepare`,
    :func:`~leads_jax.fit.fit_group`): every group is traced, compiled and trained in its
    own thread, so XLA compiles a round's new topologies concurrently (compilation
    releases the GIL) instead of one after another. Each group gets the same key and
    the same programs as in ``fit``, so the results are the same.
    """
    plan = prepare(candidates, data, config)
    groups = list(plan.groups)
    if workers > 1 and len(groups) > 1:
        with concurrent.futures.ThreadPoolExecutor(min(workers, len(groups))) as pool:
            outs = list(pool.map(lambda g: fit_group(plan, g, key=key), groups))
    else:
        outs = [fit_group(plan, g, key=key) for g in groups]
    n = len(plan.candidates)
    records, models = [None] * n, [None] * n
    notes = list(plan.warnings)
    for out in outs:
        for c, rec, model in zip(out.candidates, out.records, out.models, strict=True):
            records[c], models[c] = rec, model
        notes.extend(out.warnings)
    return FitResult(build_dataset(records, result_attrs(plan, notes)), models,
                     [c.structure for c in plan.candidates])


def _renumber(text: str, new: list[Candidate]) -> str:
    """A fit warning names the candidate by its index in the round's fit; the run names
    it by its id."""
    m = re.match(r"candidate (\d+): ", text)
    if m and int(m.group(1)) < len(new):
        return f"candidate #{new[int(m.group(1))].id}: " + text[m.end():]
    return text


def _fit_warnings(transcript) -> list[str]:
    out = [f"fit, round {t['round']}: {w}" for t in transcript
           if t.get("event") == "fit" for w in t.get("warnings", [])]
    return list(dict.fromkeys(out))


def _best_val(observations) -> float:
    vals = [o.val_rmse for o in observations if o.stable and math.isfinite(o.val_rmse)]
    return min(vals) if vals else math.inf


def _context(r, k, cat, d, visible, obs, cands, reflections, rejections, memory, rounds_left,
             left, selection, with_memory) -> AgentContext:
    winner, table = select(visible, d.noise_std, selection)
    top_ids = [row["id"] for row in table[:3]]
    by_id = {o.id: o for o in visible}
    vis_ids = set(by_id)
    structures = {c.id: c.structure for c in cands if c.structure is not None
                  and c.id in vis_ids}
    fitted = {i: (structures[i], dict(by_id[i].params)) for i in structures}
    return AgentContext(
        round=r, k=k, catalog=cat, catalog_doc=render_catalog_doc(cat),
        data_summary=d.summary(), noise_std=d.noise_std, n_regions=d.geometry.n_regions,
        state_names=d.state_names, observations=list(visible),
        last_round=[o for o in visible if o.round == r - 1] if with_memory else list(visible),
        top=[by_id[i] for i in top_ids], structures=structures, fitted=fitted,
        tried=set(memory), reflections=list(reflections) if with_memory else
        list(reflections[-1:]), rejections=list(rejections), rounds_left=rounds_left,
        candidates_left=left)


def _make_candidate(item, cid, r, cands, obs, cat, with_memory) -> Candidate:
    if isinstance(item, ModelProposal):
        return Candidate(cid, r, None, item.rationale, candidate_key(item), None,
                         {"kind": item.kind, **item.spec})
    if not isinstance(item, Proposal):
        raise ActionRejected("schema", "proposal", f"not a proposal: {item!r}")
    structures = {c.id: c.structure for c in cands if c.structure is not None}
    fitted = {c.id: (c.structure, dict(obs[c.id].params)) for c in cands
              if c.structure is not None and c.id in obs}
    s = apply_proposal(item, structures, catalog=cat, fitted=fitted).canonical()
    origin = "; ".join(describe_action(a) for a in item.actions)
    if item.rationale:
        origin += f" -- {item.rationale}"
    warm = [a.candidate for a in item.actions if a.kind == "refine"]
    return Candidate(cid, r, item.parent, origin, candidate_key(s), s, None,
                     warm[-1] if warm else None)


GAIN_BOUNDS = (0.5, 2.0)
"""Bounds of the fitted observation gain of a recording's candidates (dimensionless)."""
OFFSET_BOUNDS = (-40.0, 40.0)
"""Bounds of the fitted observation offset of a recording's candidates (mV)."""


def _observed(model, warm_params: Mapping | None = None):
    """`model` observed through the fitted, bounded gain and offset; a warm start takes
    the parent's fitted gain and offset when they lie strictly inside the bounds."""
    gain, offset = 1.0, 0.0
    if warm_params:
        g, o = warm_params.get("obs_gain"), warm_params.get("obs_offset_mV")
        if g is not None and GAIN_BOUNDS[0] < float(g) < GAIN_BOUNDS[1]:
            gain = float(g)
        if o is not None and OFFSET_BOUNDS[0] < float(o) < OFFSET_BOUNDS[1]:
            offset = float(o)
    return with_observation_gain(model, gain=GAIN_BOUNDS, offset=OFFSET_BOUNDS,
                                 init_gain=gain, init_offset=offset)


def _build(c: Candidate, spec, d: DiscoveryData, key, warm_params=None):
    """The compiled model of candidate `c` (the observation map of a recording around
    it)."""
    if c.structure is not None:
        model = compile_structure(c.structure, d.geometry, key=key)
    else:
        model = spec.build_model(c.model_spec, d, key)
    return _observed(model, warm_params) if d.observation_gain else model


def _fit_inputs(new: list[Candidate], spec, d: DiscoveryData, key, obs=None) -> list:
    """What ``fit`` gets: grammar structures as they are (``fit`` compiles them), other
    models built here; with an observation map (a recording) every candidate is built
    and wrapped here."""
    out = []
    for c in new:
        if c.structure is not None and not d.observation_gain:
            out.append(c.structure)
            continue
        warm = None
        if c.warm is not None and obs is not None and c.warm in obs:
            warm = obs[c.warm].params
        out.append(_build(c, spec, d, jax.random.fold_in(key, c.id), warm))
    return out


def _formula(c: Candidate, d: DiscoveryData) -> str:
    text = c.formula()
    return text + "; observed V = offset + gain * V_model" if d.observation_gain else text


def _dump(items) -> list:
    out = []
    for p in items:
        if hasattr(p, "model_dump"):
            out.append(p.model_dump(mode="json"))
        else:
            out.append(repr(p))
    return out


def _policy_events(pol, r) -> list[dict]:
    ev = list(getattr(pol, "events", []))
    if hasattr(pol, "events"):
        pol.events.clear()
    return ev


def _write_round(outp, r, new, round_obs, result, fitted_models, events, timing, pstate,
                 pol=None):
    part = _io.round_dir(outp, r, partial=True)
    if part.exists():
        import shutil

        shutil.rmtree(part)
    (part / "candidates").mkdir(parents=True)
    _io.write_json(part / "structures.json", [c.to_dict() for c in new])
    _io.write_json(part / "metrics.json", [o.model_dump(mode="json") for o in round_obs])
    save_dataset(result.dataset, part / "metrics.nc")
    for c, m in zip(new, fitted_models, strict=True):
        save_candidate(part / "candidates" / f"candidate_{c.id:04d}.eqx", m,
                       c.structure if c.structure is not None else c.model_spec,
                       metadata={"id": c.id, "round": r})
    _io.atomic_write_text(part / "transcript.jsonl", _io.jsonl(events))
    _io.write_json(part / "timings.json", timing)
    _io.write_json(part / "policy.json", pstate)
    client = getattr(pol, "client", None) or getattr(getattr(pol, "llm", None), "client", None)
    if client is not None:  # the LLM's full transcript, secrets redacted by the client
        client.write_transcript(part / "llm_transcript.json")
    _io.commit_round(part, _io.round_dir(outp, r))


def _load_model(outp, c: Candidate, d: DiscoveryData, spec):
    path = _io.round_dir(outp, c.round) / "candidates" / f"candidate_{c.id:04d}.eqx"
    _, model, _ = load_candidate(path, like=_build(c, spec, d, jax.random.key(0)))
    return model


class _Progress:
    """tqdm bar over rounds: candidates fitted and the best validation RMSE."""

    def __init__(self, total, enabled):
        self.bar = None
        if enabled and (enabled == "always" or os.isatty(2)):
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc="discover", unit="round")

    def update(self, r, n, best, winner):
        if self.bar is None:
            return
        self.bar.n = r
        self.bar.set_postfix(candidates=n, best_val=f"{best:.3g} mV" if math.isfinite(best)
                             else "n/a", selected=winner)
        self.bar.refresh()

    def close(self):
        if self.bar is not None:
            self.bar.close()
