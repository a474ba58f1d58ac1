"""The contract every cardiac reaction (cell) model follows.

A reaction model is an Equinox module whose fields are its named *physical*
parameters (arrays: shape ``()`` for one value, ``(node,)`` for per-node values).
Everything else about the model is class-level metadata (``ClassVar``): the state
names, one :class:`ParamSpec` per parameter (default, bounds, units, role, source),
the citation, the bounds of each state (used to detect divergence), the stable
explicit step, and the map from the voltage-like state to the common observed
transmembrane potential in mV.

Units: time is in **ms** everywhere. Dimensionless models (Aliev-Panfilov) carry
their time scale (ms per model time unit) as a parameter, so ``rates`` always
returns d(state)/d(t_ms).

Constrained parameterisation: every parameter lies in an open interval
``(lower, upper)`` given by its spec (``lower >= 0`` for rates and time
constants). Optimisers work on the unconstrained value
``raw = logit((value - lower) / (upper - lower))``; see :func:`to_unconstrained`
and :func:`from_unconstrained`.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp

from ..._custom_types import Array, Float


@dataclasses.dataclass(frozen=True)
class ParamSpec:
    """Metadata of one physical parameter of a catalog model.

    **Arguments:**

    - `name`: the field name on the model (e.g. ``"a"``).
    - `default`: the standard value, from `source`.
    - `lower`, `upper`: open bounds of the constrained parameterisation.
    - `units`: physical units (``"1"`` for dimensionless, ``"ms"``, ``"1/ms"``).
    - `role`: what the parameter does, in the field's words (rendered into the
      agent's prompt).
    - `source`: where the default comes from.
    """

    name: str
    default: float
    lower: float
    upper: float
    units: str
    role: str
    source: str = ""

    def __post_init__(self):
        if not (self.lower < self.default < self.upper):
            raise ValueError(
                f"ParamSpec {self.name!r}: default {self.default} must lie strictly inside "
                f"the bounds ({self.lower}, {self.upper})."
            )


def to_unconstrained(value, spec: ParamSpec):
    """Physical value in ``(lower, upper)`` -> unconstrained real (a scaled logit)."""
    p = (jnp.asarray(value) - spec.lower) / (spec.upper - spec.lower)
    p = jnp.clip(p, 1e-6, 1 - 1e-6)
    return jnp.log(p) - jnp.log1p(-p)


def from_unconstrained(raw, spec: ParamSpec):
    """Unconstrained real -> physical value in ``(lower, upper)``."""
    return spec.lower + (spec.upper - spec.lower) * jax.nn.sigmoid(raw)


def smooth_heaviside(x, steepness):
    """Differentiable surrogate ``sigmoid(steepness * x)`` of the Heaviside step H(x).

    With `steepness` k the transition from 1% to 99% spans ``9.2 / k`` in `x`;
    catalog models document the k they use next to each switch.
    """
    return jax.nn.sigmoid(steepness * x)


class AbstractReactionModel(eqx.Module):
    """Base class of the reaction catalog.

    Subclasses declare one field per entry of ``param_specs`` (same names, same
    order) and implement :meth:`rates`. Gate states written as
    ``(g_inf(u) - g) / tau(u)`` are listed in ``gate_states`` and exposed through
    :meth:`gate_inf_tau`, which is what Rush-Larsen steps and gate closures use.
    """

    name: ClassVar[str]
    state_names: ClassVar[tuple[str, ...]]
    """Names of the state variables; the first is the voltage-like one."""
    param_specs: ClassVar[tuple[ParamSpec, ...]]
    citation: ClassVar[str]
    state_bounds: ClassVar[tuple[tuple[float, float], ...]]
    """Physically admissible range of each state; leaving it means divergence."""
    stable_dt: ClassVar[float]
    """Largest explicit (forward Euler / RK4) step in ms that is stable for the
    single cell at the default parameters, measured (see the model's docstring)."""
    v_rest: ClassVar[float]
    """Observed potential (mV) when the voltage-like state is 0."""
    v_scale: ClassVar[float]
    """mV per unit of the voltage-like state: V_m = v_rest + v_scale * u."""
    gate_states: ClassVar[tuple[str, ...]] = ()
    """States written as ``(g_inf - g) / tau`` (integrated exactly by Rush-Larsen)."""

    # -- metadata added by the catalog (compatible extension of the contract) -------
    stable_dt_scheme: ClassVar[str] = "rk4"
    """The explicit scheme `stable_dt` refers to."""
    stable_dt_limits: ClassVar[dict[str, float]] = {}
    """Measured single-cell stability limits (ms) per scheme ("euler", "rk4",
    "rush-larsen"): the largest step of a bisection at which a paced beat stays
    bounded; `stable_dt` is a safety fraction of the RK4 limit that is also
    converged (see ``leads_jax.physics.reactions._stability``)."""
    switch_steepness: ClassVar[float | None] = None
    """Steepness k of :func:`smooth_heaviside` for the model's Heaviside switches
    (``None``: the model has none)."""
    observed_range: ClassVar[tuple[float, float]] = (-90.0, 60.0)
    """Physiological range of the observed potential (mV): rest to peak of a paced
    beat at default parameters, rounded outwards."""
    default_stimulus: ClassVar[tuple[float, float]] = (0.5, 2.0)
    """A supra-threshold stimulus from rest: (amplitude in u/ms, duration in ms)."""
    equations: ClassVar[str] = ""
    """The model's equations in plain text (rendered into prompts)."""

    # -- the physics -------------------------------------------------------------
    @abc.abstractmethod
    def rates(self, t, state: Float[Array, " state *node"]) -> Float[Array, " state *node"]:
        """d(state)/dt in 1/ms at time `t` (ms), without diffusion or stimulus."""

    def gate_inf_tau(self, state: Float[Array, " state *node"]):
        """``(g_inf, tau)`` of each gate state, each of shape ``(len(gate_states), *node)``."""
        raise NotImplementedError(f"{self.name} has no gate states")

    def observe(self, state: Float[Array, " state *node"]) -> Float[Array, "*node"]:
        """Observed transmembrane potential in mV."""
        return self.v_rest + self.v_scale * state[0]

    def rest_state(self, n_nodes: int | None = None) -> Float[Array, " state *node"]:
        """The resting state (all zeros unless a subclass says otherwise)."""
        shape = (len(self.state_names),) + (() if n_nodes is None else (n_nodes,))
        return jnp.zeros(shape)

    @classmethod
    def gate_indices(cls) -> tuple[int, ...]:
        """Row of each gate state in the state array (``gate_states`` order)."""
        return tuple(cls.state_names.index(g) for g in cls.gate_states)

    # -- parameters as data --------------------------------------------------------
    @classmethod
    def param_names(cls) -> tuple[str, ...]:
        return tuple(s.name for s in cls.param_specs)

    @classmethod
    def spec(cls, name: str) -> ParamSpec:
        for s in cls.param_specs:
            if s.name == name:
                return s
        raise KeyError(
            f"{cls.name} has no parameter {name!r}; its parameters are {cls.param_names()}"
        )

    @classmethod
    def default(cls, **overrides) -> "AbstractReactionModel":
        """The model at its standard parameters, with optional overrides by name."""
        unknown = set(overrides) - set(cls.param_names())
        if unknown:
            raise ValueError(
                f"{cls.name}: unknown parameter(s) {sorted(unknown)}; "
                f"valid names are {cls.param_names()}"
            )
        values = {
            s.name: jnp.asarray(overrides.get(s.name, s.default), float) for s in cls.param_specs
        }
        return cls(**values)

    @classmethod
    def from_vector(cls, values: Float[Array, " param *node"]) -> "AbstractReactionModel":
        """Build the model from stacked physical values, in ``param_specs`` order."""
        return cls(**{s.name: values[i] for i, s in enumerate(cls.param_specs)})

    def to_vector(self) -> Float[Array, " param *node"]:
        return jnp.stack([jnp.asarray(getattr(self, n)) for n in self.param_names()])

    @classmethod
    def from_raw(cls, raw: Float[Array, " param *node"]) -> "AbstractReactionModel":
        """Build the model from unconstrained values (``param_specs`` order)."""
        return cls(
            **{s.name: from_unconstrained(raw[i], s) for i, s in enumerate(cls.param_specs)}
        )

    def to_raw(self) -> Float[Array, " param *node"]:
        """Unconstrained values of the parameters (inverse of :meth:`from_raw`)."""
        return jnp.stack(
            [to_unconstrained(getattr(self, s.name), s) for s in self.param_specs]
        )

    # -- metadata ------------------------------------------------------------------
    @classmethod
    def metadata(cls) -> dict:
        """JSON-able description of the model (states, parameters, numerics, citation)."""
        return {
            "name": cls.name,
            "class": cls.__name__,
            "summary": (cls.__doc__ or "").strip().splitlines()[0],
            "equations": cls.equations,
            "states": list(cls.state_names),
            "voltage_state": cls.state_names[0],
            "gate_states": list(cls.gate_states),
            "state_bounds": {
                n: list(b) for n, b in zip(cls.state_names, cls.state_bounds, strict=True)
            },
            "parameters": [
                {
                    "name": s.name,
                    "default": s.default,
                    "lower": s.lower,
                    "upper": s.upper,
                    "units": s.units,
                    "role": s.role,
                    "source": s.source,
                }
                for s in cls.param_specs
            ],
            "citation": cls.citation,
            "time_units": "ms",
            "stable_dt_ms": cls.stable_dt,
            "stable_dt_scheme": cls.stable_dt_scheme,
            "stable_dt_limits_ms": dict(cls.stable_dt_limits),
            "switch_steepness": cls.switch_steepness,
            "observed": {
                "units": "mV",
                "map": f"V_m = {cls.v_rest:g} + {cls.v_scale:g} * {cls.state_names[0]}",
                "v_rest": cls.v_rest,
                "v_scale": cls.v_scale,
                "range": list(cls.observed_range),
            },
            "default_stimulus": {
                "amplitude_per_ms": cls.default_stimulus[0],
                "duration_ms": cls.default_stimulus[1],
            },
        }
