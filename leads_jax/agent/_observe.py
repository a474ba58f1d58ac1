"""What the agent sees after a round: a compact, quantitative summary per candidate.

For every fitted candidate the loop rolls the fitted model out on the **validation**
pacing sites over the whole record (the training horizon and the 3x extrapolation
beyond it) and compares with the data (:mod:`leads_jax.measure`):

- errors: ``train_rmse`` (training sites, training horizon, from the fit),
  ``val_rmse`` (validation sites, training horizon; what selection uses) and
  ``heldout_rmse`` (validation sites, beyond the training horizon: data no gradient
  saw, in time). The **test** pacing sites are never rolled out during the search:
  they score the winner once, at the end.
- a generalisation verdict from ``ratio = heldout_rmse / train_rmse``:
  ``generalises`` (ratio <= 1.5), ``degrades`` (<= 3), ``fails-to-extrapolate`` (> 3),
  ``unstable`` (the stability audit failed or the rollout diverged). "Did not blow up"
  is not enough to generalise. Data whose validation window is the record's end (a
  recording split by time) use that window as the held-out one.
- the parameter count and the closure norm (root mean square of what the closures add
  to the physics' rates along the rollout, state units per ms; 0 without closures);
- where the error lives: RMSE by state variable (only when the data carry the true
  states and the candidate's states are the same), by phase of the data's action
  potential (upstroke / plateau / repolarisation / rest), early (inside the training
  horizon) vs late (beyond), and by mesh region;
- conduction velocity (median, cm/ms) and APD90 (median, ms) of model vs data.

:class:`Observation` is the typed form (pydantic, JSON round trip);
:func:`render_observations` the compact text an LLM reads.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from pydantic import BaseModel, ConfigDict

from ..compile import bucket_size, stack_models
from ..measure import PHASES, activation_times, apd90, conduction_velocity, error_breakdown
from ..simulate import simulate

__all__ = [
    "GENERALISATION_THRESHOLDS",
    "Observation",
    "predict",
    "render_observations",
    "verdict",
]

GENERALISATION_THRESHOLDS = (1.5, 3.0)
"""``heldout/train`` ratio bounds of the verdicts ``generalises`` and ``degrades``."""


class Observation(BaseModel):
    """Everything the agent is told about one fitted candidate."""

    model_config = ConfigDict(extra="forbid")
    id: int
    round: int
    parent: int | None = None
    origin: str = ""
    spec: str
    formula: str
    reaction: str | None = None
    topology: str = ""
    n_params: int
    closure_rms: float = 0.0
    stable: bool
    fit_status: str = ""
    stability_reason: str = ""
    train_rmse: float
    val_rmse: float
    heldout_rmse: float
    ratio: float
    verdict: str
    rmse_by_state: dict[str, float] | None = None
    rmse_by_phase: dict[str, float] = {}
    early_rmse: float = math.nan
    late_rmse: float = math.nan
    rmse_by_region: dict[str, float] | None = None
    cv_model: float = math.nan
    cv_data: float = math.nan
    apd_model: float = math.nan
    apd_data: float = math.nan
    params: dict[str, float] = {}
    fit_seconds: float = 0.0

    def where(self) -> str:
        """The dominant error source, in words."""
        parts = []
        if self.rmse_by_phase:
            ph = max(self.rmse_by_phase, key=lambda k: _nan0(self.rmse_by_phase[k]))
            parts.append(f"phase {ph}")
        if math.isfinite(self.early_rmse) and math.isfinite(self.late_rmse):
            parts.append("late (extrapolation)" if self.late_rmse > 1.25 * self.early_rmse
                         else "early" if self.early_rmse > 1.25 * self.late_rmse
                         else "early and late alike")
        if self.rmse_by_region and len(self.rmse_by_region) > 1:
            r = max(self.rmse_by_region, key=lambda k: _nan0(self.rmse_by_region[k]))
            vals = [v for v in self.rmse_by_region.values() if math.isfinite(v)]
            if vals and _nan0(self.rmse_by_region[r]) > 1.5 * float(np.median(vals)):
                parts.append(f"region {r}")
        if self.rmse_by_state:
            s = max(self.rmse_by_state, key=lambda k: _nan0(self.rmse_by_state[k]))
            parts.append(f"state {s}")
        return ", ".join(parts)


def _nan0(x: float) -> float:
    return x if math.isfinite(x) else -1.0


def verdict(train_rmse: float, heldout_rmse: float, stable: bool) -> tuple[float, str]:
    """``(ratio, verdict)``; see the module docstring for the thresholds."""
    if stable and math.isnan(heldout_rmse):
        return math.nan, "n/a (no held-out window)"
    if not stable or not math.isfinite(heldout_rmse) or not math.isfinite(train_rmse):
        return math.inf, "unstable"
    ratio = heldout_rmse / max(train_rmse, 1e-9)
    lo, hi = GENERALISATION_THRESHOLDS
    if ratio <= lo:
        return ratio, "generalises"
    if ratio <= hi:
        return ratio, "degrades"
    return ratio, "fails-to-extrapolate"


# ---------------------------------------------------------------------------------------
# rollouts of fitted models (forward only; one compiled program per topology and size)
# ---------------------------------------------------------------------------------------
def _closure_rms(model, geometry, ts, states):
    """RMS along the rollout of what the closures add to the physics' rates
    (:meth:`~leads_jax.compile.AbstractBoundModel.closure_rates`; 0 without closures)."""
    bound = model.bind(geometry)
    safe = jnp.where(jnp.isfinite(states), states, 0.0)
    diff = jax.vmap(bound.closure_rates)(ts, safe)
    if diff is None:
        return jnp.zeros((), states.dtype)
    return jnp.sqrt(jnp.mean(diff**2))


@eqx.filter_jit
def _rollout(stacked, geometry, stimuli, ts, solver, dt, max_steps):
    def member(m):
        def sample(st):
            tr = simulate(m, geometry, st, ts, solver=solver, dt=dt, max_steps=max_steps)
            return tr.observed, tr.state, tr.diverged, _closure_rms(m, geometry, ts, tr.state)

        return eqx.filter_vmap(sample)(stimuli)

    return eqx.filter_vmap(member)(stacked)


def _group_key(model):
    arrays, static = eqx.partition(model, eqx.is_array)
    leaves = jax.tree.leaves(arrays)
    return (jax.tree.structure(arrays), tuple((x.shape, str(x.dtype)) for x in leaves),
            jax.tree.structure(static), str(jax.tree.leaves(static)))


def predict(models: Sequence, geometry, stimuli, ts, *, solver: str, dt: float,
            min_bucket: int = 1):
    """Roll fitted models out under stacked `stimuli` (one per sample) at times `ts`.

    Models are grouped by topology and padded to :func:`~leads_jax.compile.bucket_size`,
    so a later round with the same topologies reuses the compiled programs.

    **Returns:** ``(observed [model sample time node] mV, state [model sample time state
    node] or a list when state counts differ, diverged [model sample], closure_rms
    [model])`` as numpy arrays (state: list of per-model arrays).
    """
    ts = jnp.asarray(ts, jnp.float32)
    max_steps = int(math.ceil(float(ts[-1] - ts[0]) / dt)) + 2
    groups: dict = {}
    for i, m in enumerate(models):
        groups.setdefault(_group_key(m), []).append(i)
    n = len(models)
    obs = [None] * n
    states = [None] * n
    div = [None] * n
    crms = np.zeros(n)
    for idx in groups.values():
        members = [models[i] for i in idx]
        size = bucket_size(len(members), minimum=min_bucket)
        stacked, _ = stack_models(members, size)
        o, s, d, c = _rollout(stacked, geometry, stimuli, ts, solver, float(dt), max_steps)
        o, s, d, c = (np.asarray(x) for x in (o, s, d, c))
        for pos, i in enumerate(idx):
            obs[i], states[i], div[i] = o[pos], s[pos], d[pos]
            crms[i] = float(np.nanmean(c[pos])) if np.isfinite(c[pos]).any() else math.inf
    return np.stack(obs), states, np.stack(div), crms


# ---------------------------------------------------------------------------------------
# observations
# ---------------------------------------------------------------------------------------
def _rmse(a, b, mask=None):
    err = (np.asarray(a, float) - np.asarray(b, float)) ** 2
    if mask is not None:
        err = err[..., mask, :]
    if not np.all(np.isfinite(err)):
        return math.inf
    return float(np.sqrt(err.mean())) if err.size else math.nan


def _median(x) -> float:
    x = np.asarray(x, float)
    x = x[np.isfinite(x)]
    return float(np.median(x)) if x.size else math.nan


def measure_traces(v, ts, geometry, stim_nodes) -> tuple[float, float]:
    """``(median conduction velocity cm/ms, median APD90 ms)`` of traces ``(time, node)``;
    NaN where undefined (single cell: no velocity; no beat: no APD)."""
    v = np.asarray(v, float)
    if not np.all(np.isfinite(v)):
        return math.nan, math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        act = activation_times(v, ts)
        cv = math.nan
        if geometry.n_nodes > 1 and np.asarray(geometry.edges).size:
            cv = float(conduction_velocity(act, geometry, exclude_nodes=stim_nodes)["cv_median"])
        apd = _median(apd90(v, ts).values)
    return cv, apd


def observe(*, ids, rounds, parents, origins, specs, formulas, reactions, records, models,
            data, solver: str, dt: float, min_bucket: int = 1) -> list[Observation]:
    """One :class:`Observation` per fitted candidate.

    `records` is the fit's results Dataset (rows in candidate order); `data` a
    :class:`~leads_jax.agent._data.DiscoveryData` (validation rollout inputs)."""
    val = data.val
    pred, states, diverged, crms = predict(models, data.geometry, val.stimuli, val.ts,
                                           solver=solver, dt=dt, min_bucket=min_bucket)
    out = []
    late = val.ts > val.t_split + 1e-9
    for j in range(len(models)):
        row = records.isel(candidate=j)
        stable = bool(row["stable"].item()) and not bool(np.any(diverged[j]))
        train = float(row["train_rmse"].item())
        vrmse = float(row["val_rmse"].item())
        if late.any():
            held = _rmse(pred[j], val.observed, late)
        elif val.held_out_window:  # a validation window after the training horizon
            held = _rmse(pred[j], val.observed, val.scored)
        else:
            held = math.nan
        ratio, verd = verdict(train, held, stable)
        by_phase, early, late_r, by_region, by_state = {}, math.nan, math.nan, None, None
        cv_m = apd_m = math.nan
        if np.all(np.isfinite(pred[j])):
            split = val.t_split if val.t_split < float(val.ts[-1]) else data.t_train
            eb = error_breakdown(pred[j], val.observed, val.ts, data.geometry,
                                 window_edges=[float(val.ts[0]), split, float(val.ts[-1])])
            by_phase = {p: float(v) for p, v in zip(PHASES, eb["rmse_by_phase"].values,
                                                     strict=True)}
            early, late_r = (float(x) for x in eb["rmse_by_window"].values)
            if data.geometry.n_regions > 1:
                by_region = {str(r): float(v) for r, v in
                             zip(eb["region"].values, eb["rmse_by_region"].values, strict=True)}
            if (val.true_state is not None and reactions[j] is not None
                    and tuple(data.state_names) == tuple(_state_names(models[j]))):
                st = np.asarray(states[j], float)
                by_state = {n: _rmse(st[..., k, :], val.true_state[..., k, :])
                            for k, n in enumerate(data.state_names)}
            cv_m, apd_m = measure_traces(pred[j][0], val.ts, data.geometry, val.stim_nodes[0])
        params = {str(p): float(v) for p, v in zip(records["param"].values,
                                                   row["params"].values, strict=True)
                  if np.isfinite(v)}
        out.append(Observation(
            id=ids[j], round=rounds[j], parent=parents[j], origin=origins[j], spec=specs[j],
            formula=formulas[j], reaction=reactions[j], topology=str(row["topology"].item()),
            n_params=int(row["n_params"].item()), closure_rms=float(crms[j]), stable=stable,
            fit_status=str(row["fit_status"].item()),
            stability_reason=str(row["stability_reason"].item()),
            train_rmse=train, val_rmse=vrmse, heldout_rmse=held, ratio=ratio, verdict=verd,
            rmse_by_state=by_state, rmse_by_phase=by_phase, early_rmse=early,
            late_rmse=late_r, rmse_by_region=by_region, cv_model=cv_m, cv_data=data.cv_data,
            apd_model=apd_m, apd_data=data.apd_data, params=params,
            fit_seconds=float(row["fit_seconds"].item()),
        ))
    return out


def _state_names(model) -> tuple[str, ...]:
    try:
        return tuple(model.state_names)
    except Exception:  # pragma: no cover - any model without names
        return ()


def _f(x: float, nd: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if isinstance(x, float) and math.isinf(x):
        return "inf"
    return f"{x:.{nd}g}"


def render_observations(obs: Sequence[Observation], *, header: str = "") -> str:
    """Compact text, one block of three lines per candidate (for the LLM and the log)."""
    lines = [header] if header else []
    for o in obs:
        first = o.formula.splitlines()
        trainable = next((x for x in first if x.startswith("trainable:")), "")
        lines.append(
            f"#{o.id} (round {o.round}, parent {o.parent if o.parent is not None else '-'}) "
            f"{o.reaction or o.spec[:80]} | {trainable} | params {o.n_params} | "
            f"closure rms {_f(o.closure_rms)}"
        )
        lines.append(
            f"   rmse mV: train {_f(o.train_rmse)}, val {_f(o.val_rmse)}, held-out "
            f"{_f(o.heldout_rmse)} (ratio {_f(o.ratio)}: {o.verdict})"
            + (f"; {o.stability_reason}" if o.stability_reason else "")
        )
        phase = ", ".join(f"{k} {_f(v)}" for k, v in o.rmse_by_phase.items())
        extra = ""
        if o.rmse_by_region:
            extra += "; by region " + ", ".join(f"{k} {_f(v)}" for k, v in
                                                o.rmse_by_region.items())
        if o.rmse_by_state:
            extra += "; by state " + ", ".join(f"{k} {_f(v)}" for k, v in
                                               o.rmse_by_state.items())
        lines.append(
            f"   error by phase: {phase or 'n/a'}; early {_f(o.early_rmse)}, late "
            f"{_f(o.late_rmse)}{extra}; CV cm/ms model {_f(o.cv_model)} vs data "
            f"{_f(o.cv_data)}; APD90 ms model {_f(o.apd_model)} vs data {_f(o.apd_data)}"
            + (f"; worst: {o.where()}" if o.where() else "")
        )
    return "\n".join(lines)
