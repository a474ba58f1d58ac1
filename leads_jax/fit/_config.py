"""The fitting configuration: a validated, frozen dataclass of plain Python values."""

from __future__ import annotations

import dataclasses
import math
import typing

import numpy as np

from ..solvers import SOLVERS

_OPTIMIZERS = ("adam", "adabelief", "sgd")
_SOLVERS = tuple(SOLVERS)


def _plain(value):
    """A NumPy/JAX real scalar (0-d, not bool) as a Python int or float; else unchanged."""
    if isinstance(value, bool | int | float) or value is None:
        return value
    dtype = getattr(value, "dtype", None)
    if dtype is None or getattr(value, "shape", None) != () or dtype.kind not in "iuf":
        return value
    try:
        v = np.asarray(value).item()
    except Exception:  # traced: leave it to the checks below (which reject it)
        return value
    return int(v) if dtype.kind in "iu" else float(v)


# Validation is done by hand (with messages naming the field), so runtime type checkers
# are told to keep out: they would reject e.g. a list `curriculum` before it is normalised.
@typing.no_type_check
@dataclasses.dataclass(frozen=True)
class FitConfig:
    """How candidates are fitted. Every field is checked on construction.

    **Arguments:**

    - `learning_rate`: step size of the optimizer (> 0).
    - `steps`: maximum number of optimisation steps on the full training horizon.
    - `optimizer`: ``"adam"`` (default), ``"adabelief"`` or ``"sgd"`` (optax).
    - `clip_norm`: gradient clipping by global norm, applied to **each candidate
      separately** (never across candidates); ``None`` switches clipping off.
    - `restarts`: random restarts per candidate; the restart with the best
      validation error is kept. Restart 0 starts from the candidate's own initial
      values; the others are perturbed by the model's own
      :meth:`~leads_jax.compile.AbstractCompiledModel.perturb` with standard deviation
      `restart_noise` (grammar structures: the free unconstrained parameter values)
      and, for structures, use a different key for neural initialisation. Restarts
      are members of the batch like candidates: changing them recompiles nothing
      while candidates x restarts stays within the bucket.
    - `eval_every`: steps between validation evaluations (early-stopping checks);
      also the length of the compiled training chunk (fixed per run: changing it
      compiles a new chunk; `steps` and the curriculum are data).
    - `patience`: evaluations without improvement of the validation loss before a
      member stops (early stopping). ``None`` never stops early.
    - `min_delta`: relative improvement that counts as one.
    - `curriculum`: warm-up stages before the full horizon, as
      ``((horizon_fraction, steps), ...)`` with increasing fractions in (0, 1).
      Each stage fits the first `horizon_fraction` of the training recording only
      (time weights of the loss, so no extra compilation), which keeps the
      gradients of long recordings tame.
    - `aphynity_weight`: weight of the APHYNITY penalty, the mean square of the
      neural terms along the simulated trajectory (Yin et al., ICLR 2021), so
      that physics explains what it can. 0 switches it off.
    - `loss_scale`: mV; the trajectory MSE is computed on ``V / loss_scale``.
    - `solver`, `dt`, `max_steps`: passed to :func:`leads_jax.simulate.simulate`
      (`solver`: any name of :data:`leads_jax.solvers.SOLVERS`, fixed steps);
      ``dt=None`` uses the data's step, else the model's default;
      ``max_steps=None`` derives it from the horizon and the step.
    - `min_bucket`: smallest padded member count (candidates x restarts are padded
      to the next bucket size to avoid recompilation).
    - `audit`: run the stability audit (3x horizon, unseen pacing sites) after fitting.
    """

    learning_rate: float = 1e-2
    steps: int = 300
    optimizer: str = "adam"
    clip_norm: float | None = 1.0
    restarts: int = 1
    restart_noise: float = 0.1
    eval_every: int = 10
    patience: int | None = 10
    min_delta: float = 1e-4
    curriculum: tuple[tuple[float, int], ...] = ()
    aphynity_weight: float = 1e-3
    loss_scale: float = 100.0
    solver: str = "rk4"
    dt: float | None = None
    max_steps: int | None = None
    min_bucket: int = 1
    audit: bool = True

    def __post_init__(self):
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, _plain(getattr(self, f.name)))

        def bad(field, value, rule):
            raise ValueError(f"FitConfig.{field}={value!r} is invalid: {rule}.")

        def number(field, value, *, integer=False):
            ok = isinstance(value, int) if integer else isinstance(value, (int, float))
            if isinstance(value, bool) or not ok:
                bad(field, value, "must be an integer" if integer else "must be a real number")
            if not math.isfinite(value):
                bad(field, value, "must be finite")

        number("learning_rate", self.learning_rate)
        if self.learning_rate <= 0:
            bad("learning_rate", self.learning_rate, "must be > 0")
        number("steps", self.steps, integer=True)
        if self.steps < 1:
            bad("steps", self.steps, "must be >= 1")
        if self.optimizer not in _OPTIMIZERS:
            bad("optimizer", self.optimizer, f"must be one of {_OPTIMIZERS}")
        if self.clip_norm is not None:
            number("clip_norm", self.clip_norm)
            if self.clip_norm <= 0:
                bad("clip_norm", self.clip_norm, "must be > 0 or None")
        number("restarts", self.restarts, integer=True)
        if self.restarts < 1:
            bad("restarts", self.restarts, "must be >= 1")
        number("restart_noise", self.restart_noise)
        if self.restart_noise < 0:
            bad("restart_noise", self.restart_noise, "must be >= 0")
        number("eval_every", self.eval_every, integer=True)
        if self.eval_every < 1:
            bad("eval_every", self.eval_every, "must be >= 1")
        if self.patience is not None:
            number("patience", self.patience, integer=True)
            if self.patience < 1:
                bad("patience", self.patience, "must be >= 1 or None")
        number("min_delta", self.min_delta)
        if self.min_delta < 0:
            bad("min_delta", self.min_delta, "must be >= 0")
        stages = tuple(tuple(_plain(x) for x in s) for s in self.curriculum)
        last = 0.0
        for stage in stages:
            if len(stage) != 2:
                bad("curriculum", self.curriculum, "stages are (horizon_fraction, steps) pairs")
            frac, n = stage
            number("curriculum", frac)
            number("curriculum", n, integer=True)
            if not (last < frac < 1.0):
                bad("curriculum", self.curriculum,
                    "horizon fractions must increase strictly and lie in (0, 1)")
            if n < 1:
                bad("curriculum", self.curriculum, "each stage needs >= 1 step")
            last = frac
        object.__setattr__(self, "curriculum", stages)
        number("aphynity_weight", self.aphynity_weight)
        if self.aphynity_weight < 0:
            bad("aphynity_weight", self.aphynity_weight, "must be >= 0")
        number("loss_scale", self.loss_scale)
        if self.loss_scale <= 0:
            bad("loss_scale", self.loss_scale, "must be > 0")
        if self.solver not in _SOLVERS:
            bad("solver", self.solver, f"must be one of {_SOLVERS}")
        if self.dt is not None:
            number("dt", self.dt)
            if self.dt <= 0:
                bad("dt", self.dt, "must be > 0 or None")
        if self.max_steps is not None:
            number("max_steps", self.max_steps, integer=True)
            if self.max_steps < 1:
                bad("max_steps", self.max_steps, "must be >= 1 or None")
        number("min_bucket", self.min_bucket, integer=True)
        if self.min_bucket < 1:
            bad("min_bucket", self.min_bucket, "must be >= 1")
        if not isinstance(self.audit, bool):
            bad("audit", self.audit, "must be a bool")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
