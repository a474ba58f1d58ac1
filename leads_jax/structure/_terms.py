"""The terms of a structure sentence: parameter choices, the diffusion term, closures,
their defaults and the grammar's error type (shared by the structure, its rules and
its rendering, so none of them imports another in a circle)."""

from __future__ import annotations

import dataclasses
from typing import SupportsFloat

PARAMETER_MODES = ("fixed", "free", "per-region", "per-node")
"""How a physical parameter is treated: fixed at its value, one trainable value, one
trainable value per mesh region, one trainable value per node."""

DIFFUSION_DEFAULT_HIDDEN = (16,)
DIFFUSION_DEFAULT_MAX_GAIN = 2.0
CLOSURE_DEFAULT_HIDDEN = (16, 16)
CLOSURE_DEFAULT_MAX_RATE = 0.1
GATE_DEFAULT_TAU_MIN = 1.0
GATE_DEFAULT_TAU_MAX = 1000.0


class StructureError(ValueError):
    """A structure breaks a rule of the grammar; ``rule`` names the rule."""

    def __init__(self, rule: str, detail: str):
        self.rule = rule
        self.detail = detail
        super().__init__(f"structure rule {rule!r} broken: {detail}")


def _py_scalar(x):
    """A NumPy or JAX real scalar (0-d, not bool) as a Python float (int for integer
    dtypes); anything else unchanged, so the grammar rules judge it. Values from LLM
    replies and array code arrive as such scalars."""
    if x is None or isinstance(x, bool | int | float | str):
        return x
    dtype = getattr(x, "dtype", None)
    if dtype is None or getattr(x, "shape", None) != () or dtype.kind not in "iuf":
        return x
    try:
        v = x.item()
    except Exception:  # a traced value: leave it to the rules (which reject it)
        return x
    return int(v) if dtype.kind in "iu" else float(v)


def _coerce_fields(obj, names):
    for n in names:
        object.__setattr__(obj, n, _py_scalar(getattr(obj, n)))


def _coerce_hidden(obj):
    h = obj.hidden
    if isinstance(h, list | tuple):
        object.__setattr__(obj, "hidden", tuple(_py_scalar(x) for x in h))


@dataclasses.dataclass(frozen=True)
class ParameterChoice:
    """How one physical parameter is treated.

    **Arguments:**

    - `name`: a parameter of the reaction model, or ``"D"`` (the conductivity of the
      diffusion term).
    - `mode`: one of :data:`PARAMETER_MODES`.
    - `value`: the fixed value (mode ``"fixed"``) or initial value (other modes), in
      physical units; ``None`` means the catalog default.
    """

    name: str
    mode: str = "free"
    value: SupportsFloat | None = None

    def __post_init__(self):
        _coerce_fields(self, ("value",))


@dataclasses.dataclass(frozen=True)
class DiffusionTerm:
    """The diffusion operator: ``kind`` in ``"none"``, ``"laplacian"``, ``"neural-graph"``.

    ``hidden`` and ``max_gain`` apply to ``"neural-graph"`` only (``None``: defaults
    ``(16,)`` and ``2.0``).
    """

    kind: str = "laplacian"
    hidden: tuple[int, ...] | None = None
    max_gain: SupportsFloat | None = None

    def __post_init__(self):
        _coerce_fields(self, ("max_gain",))
        _coerce_hidden(self)


@dataclasses.dataclass(frozen=True)
class ClosureTerm:
    """A bounded neural closure on the equation of state ``target``.

    **Arguments:**

    - `target`: name of a state of the reaction model.
    - `kind`: ``"additive"`` (adds ``s * tanh(MLP)``, ``s <= max_rate``) or ``"gate"``
      (replaces a gate equation by ``(g_inf(u) - g) / tau(u)``).
    - `hidden`: hidden widths of the MLP (``None``: ``(16, 16)``).
    - `neighbours`: additive only; also read the mean difference to graph neighbours.
    - `max_rate`: additive only, the cap ``s_max`` in state units per ms (``None``: 0.1).
    - `tau_min`, `tau_max`: gate only, bounds of the learnt time constant in ms
      (``None``: 1 and 1000).
    """

    target: str
    kind: str = "additive"
    hidden: tuple[int, ...] | None = None
    neighbours: bool = False
    max_rate: SupportsFloat | None = None
    tau_min: SupportsFloat | None = None
    tau_max: SupportsFloat | None = None

    def __post_init__(self):
        _coerce_fields(self, ("max_rate", "tau_min", "tau_max"))
        _coerce_hidden(self)
