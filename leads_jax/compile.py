"""Compilation: a :class:`~leads_jax.structure.Structure` plus a geometry -> an Equinox model.

Only the *topology* of a structure is static (the reaction model, the diffusion kind and
network sizes, the closures' targets and sizes: :meth:`Structure.topology_key`). Which
parameters are free, fixed, per-region or per-node, and every value, are **data**:

* each physical parameter ``p`` is stored three times, unconstrained: one global value
  ``raw_global[p]``, one value per region ``raw_region[p, r]`` and one per node
  ``raw_node[p, i]``;
* a one-hot ``mode[p]`` (global / region / node) selects which one is used and a
  ``free[p]`` mask says whether it is trained (fixed values pass through
  ``stop_gradient``, so their gradient is exactly zero);
* the physical value is the selected raw value through the spec's bounded transform
  ``lower + (upper - lower) * sigmoid(raw)``.

So two structures with the same topology key compile to pytrees with identical tree
structures and leaf shapes: they stack with :func:`leads_jax.batching.stack_models` and
one jitted, vmapped program serves all of them. Candidate counts are padded to
:func:`leads_jax.batching.bucket_size` so a few bucket sizes cover every batch.

The contract: :class:`AbstractCompiledModel` (and the :class:`AbstractBoundModel` that
``bind`` returns) is everything simulation, fitting and the stability audit ask of a
model; they never look at its type. A generic path, :func:`compile_vector_field`, wraps
any JAX vector field (baselines that are not sentences of the grammar) into a
:class:`VectorFieldModel` that goes through the same path.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._custom_types import Array, Float, Int, PRNGKeyArray
from .batching import bucket_size, stack_models  # noqa: F401  (re-exported; owner: batching)
from .physics.closures import AbstractClosure, AdditiveClosure, GateClosure
from .physics.diffusion import (
    CONDUCTIVITY_SPEC,
    AbstractDiffusion,
    LaplacianDiffusion,
    NeuralGraphDiffusion,
    NoDiffusion,
    edge_divergence,
    edge_mean,
)
from .physics.reactions._base import ParamSpec
from .solvers import solver_spec
from .structure import Structure, validate
from .structure._validate import parameter_specs, reaction_class

MODES = ("global", "region", "node")
_MODE_OF = {"fixed": 0, "free": 0, "per-region": 1, "per-node": 2}


# ---------------------------------------------------------------------------------------
# parameters as data
# ---------------------------------------------------------------------------------------
def _logit_np(value, spec: ParamSpec):
    """numpy twin of :func:`~leads_jax.physics.reactions._base.to_unconstrained`."""
    p = (np.asarray(value, np.float64) - spec.lower) / (spec.upper - spec.lower)
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p) - np.log1p(-p)


class ParameterBlock(eqx.Module):
    """Physical parameters stored as unconstrained data with mode and free masks.

    **Fields:** ``raw_global [param]``, ``raw_region [param region]``,
    ``raw_node [param node]`` (trainable); ``mode [param 3]`` one-hot over
    (global, region, node); ``free [param]`` in {0, 1}; ``lower``, ``upper [param]``
    bounds; ``regions [node]`` region index of each node; ``names`` (static).
    """

    names: tuple[str, ...] = eqx.field(static=True)
    raw_global: Float[Array, " param"]
    raw_region: Float[Array, " param region"]
    raw_node: Float[Array, " param node"]
    mode: Float[Array, " param 3"]
    free: Float[Array, " param"]
    lower: Float[Array, " param"]
    upper: Float[Array, " param"]
    regions: Int[Array, " node"]

    @classmethod
    def build(
        cls,
        specs: Sequence[ParamSpec],
        modes: Sequence[str],
        values: Sequence[float],
        regions,
        n_regions: int,
    ) -> ParameterBlock:
        # Host-side numpy: building a candidate must not dispatch dozens of tiny XLA ops.
        lower = np.asarray([s.lower for s in specs], np.float32).reshape(len(specs))
        upper = np.asarray([s.upper for s in specs], np.float32).reshape(len(specs))
        raw = np.asarray(
            [_logit_np(v, s) for s, v in zip(specs, values, strict=True)], np.float32
        ).reshape(len(specs))
        regions = np.asarray(regions, np.int32)
        n_nodes = regions.shape[0]
        mode = np.zeros((len(specs), 3), np.float32)
        for i, m in enumerate(modes):
            mode[i, _MODE_OF[m]] = 1.0
        free = np.asarray([0.0 if m == "fixed" else 1.0 for m in modes], np.float32)
        return cls(
            names=tuple(s.name for s in specs),
            raw_global=jnp.asarray(raw),
            raw_region=jnp.asarray(np.repeat(raw[:, None], n_regions, axis=1)),
            raw_node=jnp.asarray(np.repeat(raw[:, None], n_nodes, axis=1)),
            mode=jnp.asarray(mode),
            free=jnp.asarray(free.reshape(len(specs))),
            lower=jnp.asarray(lower),
            upper=jnp.asarray(upper),
            regions=jnp.asarray(regions),
        )

    def raw(self) -> Float[Array, " param node"]:
        """The mode-selected unconstrained value of every parameter at every node."""
        m = self.mode
        raw = (
            m[:, 0:1] * self.raw_global[:, None]
            + m[:, 1:2] * self.raw_region[:, self.regions]
            + m[:, 2:3] * self.raw_node
        )
        f = self.free[:, None]
        # Fixed parameters: the value flows forward, the gradient is exactly zero.
        return f * raw + (1.0 - f) * jax.lax.stop_gradient(raw)

    def values(self) -> Float[Array, " param node"]:
        """Physical values ``lower + (upper - lower) * sigmoid(raw)``, shape (param, node)."""
        return self.lower[:, None] + (self.upper - self.lower)[:, None] * jax.nn.sigmoid(
            self.raw()
        )

    def index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise KeyError(f"no parameter {name!r}; parameters are {self.names}") from None

    def trainable_filter(self):
        f = jax.tree.map(lambda _: False, self)
        return eqx.tree_at(
            lambda b: (b.raw_global, b.raw_region, b.raw_node), f, (True, True, True)
        )


# ---------------------------------------------------------------------------------------
# the contract
# ---------------------------------------------------------------------------------------
class AbstractBoundModel(eqx.Module):
    """A compiled model with its parameters resolved on one geometry: what a solver
    steps (parameters are transformed once per solve, not once per step).

    Subclasses implement :meth:`rates`, :meth:`closure_rates`, :attr:`gate_names` and
    :meth:`gate_inf_tau`; :meth:`vector_field` is final.
    """

    @abc.abstractmethod
    def rates(self, t, y: Float[Array, "state node"]) -> Float[Array, "state node"]:
        """d(state)/dt (1/ms) without the stimulus: physics, closures and diffusion."""

    @abc.abstractmethod
    def closure_rates(self, t, y: Float[Array, "state node"]) -> Float[Array, "state node"] | None:
        """What the neural closures add to the physics' rates at ``(t, y)`` (the APHYNITY
        term); ``None`` when the model has no closures (decided statically)."""

    @property
    @abc.abstractmethod
    def gate_names(self) -> tuple[str, ...]:
        """States written as ``(g_inf - g) / tau`` (Rush-Larsen steps); may be empty."""

    @abc.abstractmethod
    def gate_inf_tau(self, y):
        """``(g_inf, tau)`` of the :attr:`gate_names` states, each ``(gate, node)``."""

    def vector_field(self, t, y, stimulus=None):
        """d(state)/dt in 1/ms; the stimulus adds to the first (voltage-like) equation."""
        dy = self.rates(t, y)
        if stimulus is not None:
            dy = dy.at[0].add(stimulus.current(t).astype(dy.dtype))
        return dy


class AbstractPlainBoundModel(AbstractBoundModel):
    """A bound model with no neural closures and no gated states (plain vector fields,
    free-form expressions, purely neural models): subclasses implement :meth:`rates`
    only; the closure and gate members here are final."""

    def closure_rates(self, t, y):
        return None

    @property
    def gate_names(self) -> tuple[str, ...]:
        return ()

    def gate_inf_tau(self, y):
        return None, None


class AbstractCompiledModel(eqx.Module):
    """Everything :func:`~leads_jax.simulate.simulate`, :func:`~leads_jax.fit.fit` and the
    stability audit need from a model, so that grammar structures
    (:class:`HybridModel`), plain vector fields (:class:`VectorFieldModel`) and any
    other model (e.g. the agent's expression models) go through the same path.

    Abstract-or-final (equinox's recommendation): every method here is abstract, and
    concrete subclasses are final (never subclassed again).

    - :meth:`bind` -> :class:`AbstractBoundModel` (rates, closures, gates);
    - :meth:`observe` (mV), :meth:`initial_state`, :attr:`state_names`,
      :attr:`state_bounds` (``(state, 2)``: leaving them is divergence),
      :attr:`default_dt` (ms, static), :attr:`n_nodes` (``None``: any node count);
    - training: :meth:`trainable_filter`, :meth:`perturb` (restart noise; traceable),
      :meth:`fitted_values`, :attr:`n_params` (host);
    - :meth:`stable_dt` (the largest step known stable, for warnings) and
      :meth:`formula` (readable text for results and reports).
    """

    @abc.abstractmethod
    def bind(self, geometry) -> AbstractBoundModel:
        """Parameters resolved on `geometry`."""

    @abc.abstractmethod
    def observe(self, state: Float[Array, " state *node"]) -> Float[Array, " *node"]:
        """Observed potential (mV) of a state ``(state, node)``."""

    @abc.abstractmethod
    def initial_state(self, n_nodes: int) -> Float[Array, " state node"]:
        """The resting state on `n_nodes` nodes."""

    @property
    @abc.abstractmethod
    def state_names(self) -> tuple[str, ...]: ...

    @property
    @abc.abstractmethod
    def state_bounds(self) -> Float[Array, " state 2"]: ...

    @property
    @abc.abstractmethod
    def default_dt(self) -> float: ...

    @property
    @abc.abstractmethod
    def n_nodes(self) -> int | None:
        """Node count the model was compiled for (``None``: node-agnostic)."""

    @abc.abstractmethod
    def trainable_filter(self):
        """Pytree of bools over the model: True for leaves an optimiser updates."""

    @abc.abstractmethod
    def perturb(self, key: PRNGKeyArray, scale) -> AbstractCompiledModel:
        """Restart noise of standard deviation `scale` on the fitted (free) values;
        traceable (`scale` may be a traced scalar; ``scale = 0`` returns equal values)."""

    @abc.abstractmethod
    def fitted_values(self) -> dict[str, float | list[float]]:
        """Fitted values by name, in physical units where there are any (host-side)."""

    @property
    @abc.abstractmethod
    def n_params(self) -> int:
        """Number of fitted scalars (host-side)."""

    @abc.abstractmethod
    def stable_dt(self, geometry, solver: str = "rk4") -> float:
        """Largest fixed step (ms) known to be stable with `solver` on `geometry`
        (``inf`` when unknown)."""

    @abc.abstractmethod
    def formula(self) -> str:
        """Readable description of the model's equations."""


def _neighbour_mean_diff(u, geometry):
    """Mean over graph neighbours of ``u_j - u_i`` (unit edge weights)."""
    e = geometry.edges
    ones = jnp.ones(e.shape[0], u.dtype)
    n = u.shape[0]
    degree = jax.ops.segment_sum(ones, e[:, 0], num_segments=n) + jax.ops.segment_sum(
        ones, e[:, 1], num_segments=n
    )
    return edge_divergence(u[e[:, 1]] - u[e[:, 0]], e, jnp.maximum(degree, 1.0))


class BoundHybridModel(AbstractBoundModel):
    """A :class:`HybridModel` with its parameters resolved on one geometry."""

    reaction: Any
    conductivity: Float[Array, " node"]
    diffusion: AbstractDiffusion
    closures: tuple[AbstractClosure, ...]
    geometry: Any

    def _rates(self, t, y, closures):
        dy = self.reaction.rates(t, y)
        nbr = None
        if any(getattr(c, "neighbours", False) for c in closures):
            nbr = _neighbour_mean_diff(y[0], self.geometry)
        for c in closures:
            if isinstance(c, GateClosure):
                dy = dy.at[c.target].set(c(y))
            else:
                dy = dy.at[c.target].add(c(y, nbr))
        if not isinstance(self.diffusion, NoDiffusion):
            dy = dy.at[0].add(self.diffusion(y[0], self.geometry, self.conductivity))
        return dy

    def rates(self, t, y):
        """Reaction + closures + diffusion (no stimulus), shape ``(state, node)``."""
        return self._rates(t, y, self.closures)

    def closure_rates(self, t, y):
        if not self.closures:
            return None
        return self._rates(t, y, self.closures) - self._rates(t, y, ())

    @property
    def gate_names(self) -> tuple[str, ...]:
        return tuple(self.reaction.gate_states)

    def gate_inf_tau(self, y):
        """``(g_inf, tau)`` of every gate state (catalog gates, with gate closures
        replacing theirs), for Rush-Larsen steps; each ``(gate, node)``."""
        names = self.gate_names
        if not names:
            return None, None
        g_inf, tau = self.reaction.gate_inf_tau(y)
        state_names = self.reaction.state_names
        for c in self.closures:
            if isinstance(c, GateClosure):
                k = names.index(state_names[c.target])
                gi, ti = c.inf_tau(y[0])
                g_inf, tau = g_inf.at[k].set(gi), tau.at[k].set(ti)
        return g_inf, tau


class HybridModel(AbstractCompiledModel):
    """A compiled sentence of the grammar: reaction + diffusion + closures, parameters
    as data (see the module docstring). Build it with :func:`compile_structure`."""

    reaction_cls: type = eqx.field(static=True)
    topology: tuple = eqx.field(static=True)
    params: ParameterBlock
    diffusion: AbstractDiffusion
    closures: tuple[AbstractClosure, ...]

    @property
    def state_names(self) -> tuple[str, ...]:
        return tuple(self.reaction_cls.state_names)

    @property
    def state_bounds(self):
        return jnp.asarray(self.reaction_cls.state_bounds, float)

    @property
    def default_dt(self) -> float:
        dt = float(self.reaction_cls.stable_dt)
        if not dt > 0:
            raise ValueError(
                f"{self.reaction_cls.name} has no measured stable_dt; pass dt= explicitly"
            )
        return dt

    @property
    def n_nodes(self) -> int:
        return self.params.raw_node.shape[-1]

    def reaction(self):
        """The reaction model with per-node physical parameters ``(node,)``."""
        v = self.params.values()
        names = self.reaction_cls.param_names()
        return self.reaction_cls(**{n: v[self.params.index(n)] for n in names})

    def conductivity(self) -> Float[Array, " node"]:
        """Per-node conductivity ``D`` (cm^2/ms); zeros when the model has no diffusion."""
        if "D" in self.params.names:
            return self.params.values()[self.params.index("D")]
        return jnp.zeros(self.n_nodes)

    def bind(self, geometry) -> BoundHybridModel:
        if geometry is not None and geometry.n_nodes != self.n_nodes:
            raise ValueError(
                f"the model was compiled for {self.n_nodes} nodes, the geometry has "
                f"{geometry.n_nodes}"
            )
        v = self.params.values()
        names = self.reaction_cls.param_names()
        reaction = self.reaction_cls(**{n: v[self.params.index(n)] for n in names})
        cond = v[self.params.index("D")] if "D" in self.params.names else jnp.zeros(v.shape[1])
        return BoundHybridModel(reaction, cond, self.diffusion, self.closures, geometry)

    def observe(self, state):
        # The map to mV is class-level metadata; the default instance carries it.
        return self.reaction_cls.default().observe(state)

    def initial_state(self, n_nodes: int | None = None):
        """The reaction's resting state at this model's parameters, ``(state, node)``."""
        n = self.n_nodes if n_nodes is None else n_nodes
        rest = self.reaction().rest_state(self.n_nodes)
        if n != self.n_nodes:
            rest = jnp.broadcast_to(rest[:, :1], (rest.shape[0], n))
        return jnp.asarray(rest, float)

    def trainable_filter(self):
        """The unconstrained parameter values (fixed ones get zero gradient through
        their mask) and the weights and scales of neural terms; masks, bounds,
        normalisations and caps are data, not trained."""
        f = jax.tree.map(lambda _: False, self)
        f = eqx.tree_at(lambda m: m.params, f, self.params.trainable_filter())
        f = eqx.tree_at(lambda m: m.diffusion, f, self.diffusion.trainable_filter())
        return eqx.tree_at(
            lambda m: m.closures, f, tuple(c.trainable_filter() for c in self.closures)
        )

    def perturb(self, key, scale) -> HybridModel:
        """Gaussian noise of std `scale` on the free unconstrained parameter values
        (fixed ones never move); neural weights keep their (per-restart) initialisation."""
        b = self.params
        k1, k2, k3 = jax.random.split(key, 3)
        free = b.free
        new = (
            b.raw_global + scale * free * jax.random.normal(k1, b.raw_global.shape),
            b.raw_region + scale * free[:, None] * jax.random.normal(k2, b.raw_region.shape),
            b.raw_node + scale * free[:, None] * jax.random.normal(k3, b.raw_node.shape),
        )
        return eqx.tree_at(lambda m: (m.params.raw_global, m.params.raw_region,
                                      m.params.raw_node), self, new)

    def fitted_values(self) -> dict[str, float | list[float]]:
        """Free physical parameters: a scalar (global mode) or a per-node list."""
        vals = physical_parameters(self)
        free = np.asarray(self.params.free) > 0.5
        mode = np.argmax(np.asarray(self.params.mode), axis=1)
        out = {}
        for i, name in enumerate(self.params.names):
            if not free[i]:
                continue
            v = np.asarray(vals[name], dtype=float)
            out[name] = float(v.mean()) if mode[i] == 0 else [float(x) for x in v]
        return out

    @property
    def n_params(self) -> int:
        """Free physical parameters (1, n_regions or n_nodes each by mode) plus every
        trainable weight of the neural terms."""
        b = self.params
        free = np.asarray(b.free) > 0.5
        mode = np.argmax(np.asarray(b.mode), axis=1)
        per = np.array([1, b.raw_region.shape[-1], b.raw_node.shape[-1]])[mode]
        n = int(np.sum(per[free]))
        for part in (self.diffusion, *self.closures):
            p, _ = eqx.partition(part, part.trainable_filter())
            n += int(sum(x.size for x in jax.tree.leaves(p)))
        return n

    def stable_dt(self, geometry, solver: str = "rk4") -> float:
        """The smaller of the reaction's measured single-cell limit for `solver`
        (``stable_dt_limits``; the recommended ``stable_dt`` for schemes not measured)
        and the explicit diffusion limit ``extent / rate`` at the current
        conductivities (Gershgorin bound of :func:`diffusion_rate`; `extent` from the
        solver table)."""
        spec = solver_spec(solver)
        cls = self.reaction_cls
        reaction = float(cls.stable_dt_limits.get(solver, cls.stable_dt) or math.inf)
        rate = diffusion_rate(self, geometry)
        return min(reaction, math.inf if rate == 0 else spec.stability_extent / rate)

    def formula(self) -> str:
        reaction, (dkind, dhidden), closures = self.topology
        text = f"{reaction}, {dkind} diffusion"
        if dhidden:
            text += f" (hidden {tuple(dhidden)})"
        for target, kind, hidden, neighbours in closures:
            text += f" + {kind} closure on {target} (hidden {tuple(hidden)}"
            text += ", neighbours)" if neighbours else ")"
        return text


def diffusion_rate(model: HybridModel, geometry) -> float:
    """Largest eigenvalue bound (1/ms) of a hybrid model's diffusion at its current
    conductivities (Gershgorin; neural gains at their maximum): an explicit solver with
    real-axis stability extent ``s`` is stable for ``dt <= s / rate`` (forward Euler:
    s = 2). Host-side; 0 without diffusion."""
    if isinstance(model.diffusion, NoDiffusion) or geometry is None:
        return 0.0
    cond = np.asarray(model.conductivity())
    c = np.asarray(geometry.edge_weights) * np.asarray(
        edge_mean(jnp.asarray(cond), geometry.edges))
    if isinstance(model.diffusion, NeuralGraphDiffusion):
        c = c * float(jax.nn.softplus(2 * model.diffusion.max_gain) / math.log(2.0))
    e = np.asarray(geometry.edges)
    deg = np.zeros(geometry.n_nodes)
    np.add.at(deg, e[:, 0], c)
    np.add.at(deg, e[:, 1], c)
    return float(np.max(2.0 * deg / np.asarray(geometry.mass)))


def compile_structure(structure: Structure, geometry, *, key: PRNGKeyArray) -> HybridModel:
    """Compile `structure` on `geometry` into a :class:`HybridModel`.

    **Arguments:**

    - `structure`: a valid :class:`~leads_jax.structure.Structure` (validated here;
      a broken rule raises ``StructureError``, a ``ValueError``).
    - `geometry`: a :class:`~leads_jax.geometry.Geometry` (its node count, regions and,
      for normalisation, nothing else; the graph itself is read at simulation time).
    - `key`: PRNG key for the neural terms (keyword-only).

    **Returns:** a :class:`HybridModel` whose tree structure depends only on
    ``structure.topology_key()`` and the geometry's node/region counts.
    """
    validate(structure)
    s = structure.canonical()
    cls = reaction_class(s.reaction)
    specs = parameter_specs(s)
    choices = {p.name: p for p in s.parameters}
    names = list(specs)
    n_nodes = int(geometry.n_nodes)
    n_regions = int(getattr(geometry, "n_regions", 1) or 1)
    regions = getattr(geometry, "regions", None)
    if regions is None:
        regions = np.zeros(n_nodes, np.int32)
    params = ParameterBlock.build(
        [specs[n] for n in names],
        [choices[n].mode for n in names],
        [choices[n].value for n in names],
        regions,
        n_regions,
    )
    bounds = np.asarray(cls.state_bounds, float)
    center = 0.5 * (bounds[:, 0] + bounds[:, 1])
    scale = 0.5 * (bounds[:, 1] - bounds[:, 0])
    k_diff, *k_clos = jax.random.split(key, 1 + max(1, len(s.closures)))
    d = s.diffusion
    if d.kind == "none":
        diffusion = NoDiffusion()
    elif d.kind == "laplacian":
        diffusion = LaplacianDiffusion()
    else:
        diffusion = NeuralGraphDiffusion(
            d.hidden, d.max_gain, float(center[0]), float(scale[0]), key=k_diff
        )
    closures = []
    for c, k in zip(s.closures, k_clos, strict=False):  # k_clos has >= 1 key
        target = cls.state_names.index(c.target)
        if c.kind == "additive":
            closures.append(
                AdditiveClosure(
                    len(cls.state_names), target, c.hidden, c.max_rate, center, scale,
                    neighbours=c.neighbours, key=k,
                )
            )
        else:
            closures.append(
                GateClosure(
                    target, c.hidden, c.tau_min, c.tau_max, float(center[0]), float(scale[0]),
                    key=k,
                )
            )
    return HybridModel(
        reaction_cls=cls,
        topology=s.topology_key(),
        params=params,
        diffusion=diffusion,
        closures=tuple(closures),
    )


# ---------------------------------------------------------------------------------------
# the generic path (baselines that are not sentences of the grammar)
# ---------------------------------------------------------------------------------------
class BoundVectorField(AbstractPlainBoundModel):
    """A :class:`VectorFieldModel` on one geometry (no closures, no gates)."""

    fn: Callable = eqx.field(static=True)
    params: Any
    geometry: Any

    def rates(self, t, y):
        return self.fn(t, y, self.params, self.geometry)


class VectorFieldModel(AbstractCompiledModel):
    """A model from a plain JAX vector field (see :func:`compile_vector_field`)."""

    fn: Callable = eqx.field(static=True)
    params: Any
    names: tuple[str, ...] = eqx.field(static=True)
    observe_fn: Callable = eqx.field(static=True)
    bounds: tuple = eqx.field(static=True)
    rest: Float[Array, " state"]
    dt: float = eqx.field(static=True)
    max_dt: float = eqx.field(static=True)
    name: str = eqx.field(static=True)

    @property
    def state_names(self):
        return self.names

    @property
    def state_bounds(self):
        return jnp.asarray(self.bounds, float)

    @property
    def default_dt(self):
        return self.dt

    @property
    def n_nodes(self) -> None:
        return None

    def bind(self, geometry) -> BoundVectorField:
        return BoundVectorField(self.fn, self.params, geometry)

    def observe(self, state):
        return self.observe_fn(state)

    def initial_state(self, n_nodes: int):
        return jnp.broadcast_to(self.rest[:, None], (self.rest.shape[0], n_nodes))

    def trainable_filter(self):
        """Every floating leaf of `params`."""
        f = jax.tree.map(lambda _: False, self)
        return eqx.tree_at(
            lambda m: m.params, f, jax.tree.map(eqx.is_inexact_array, self.params)
        )

    def perturb(self, key, scale) -> VectorFieldModel:
        """Gaussian noise of std `scale` on every trainable leaf of `params`."""
        params, rest = eqx.partition(self.params, eqx.is_inexact_array)
        leaves, tdef = jax.tree.flatten(params)
        keys = jax.random.split(key, max(1, len(leaves)))
        pairs = zip(leaves, keys[: len(leaves)], strict=True)
        leaves = [x + scale * jax.random.normal(k, x.shape, x.dtype) for x, k in pairs]
        return eqx.tree_at(lambda m: m.params, self,
                           eqx.combine(jax.tree.unflatten(tdef, leaves), rest))

    def fitted_values(self) -> dict[str, float | list[float]]:
        """Every trainable leaf by its pytree path (``"a"``, ``"w[0]"``...): scalars as
        floats, arrays as flat lists."""
        params, _ = eqx.partition(self.params, eqx.is_inexact_array)
        out = {}
        for path, x in jax.tree_util.tree_leaves_with_path(params):
            name = jax.tree_util.keystr(path).strip(".").strip("'[]\"") or "params"
            v = np.asarray(x, dtype=float)
            out[name] = float(v) if v.ndim == 0 else [float(a) for a in v.ravel()]
        return out

    @property
    def n_params(self) -> int:
        params, _ = eqx.partition(self.params, eqx.is_inexact_array)
        return int(sum(np.size(x) for x in jax.tree.leaves(params)))

    def stable_dt(self, geometry, solver: str = "rk4") -> float:
        """The `stable_dt` given to :func:`compile_vector_field` (``inf``: unknown)."""
        solver_spec(solver)
        return self.max_dt

    def formula(self) -> str:
        return f"{self.name}: d({', '.join(self.names)})/dt = {self.name}(t, state, params)"


def compile_vector_field(
    fn: Callable,
    params: Any,
    *,
    state_names: Sequence[str],
    observe: Callable | None = None,
    state_bounds: Sequence[tuple[float, float]],
    rest_state: Sequence[float] | None = None,
    dt: float = 0.05,
    stable_dt: float | None = None,
    name: str | None = None,
) -> VectorFieldModel:
    """Wrap a JAX vector field into a model that simulate, fit and the audit accept.

    **Arguments:**

    - `fn`: ``fn(t, state, params, geometry) -> d state / dt`` with ``state`` of shape
      ``(state, node)`` in 1/ms, *without* the stimulus (simulate adds it to the first,
      voltage-like, state). Use ``geometry.laplacian(u)`` for diffusion.
    - `params`: a pytree of arrays; every floating leaf is trainable.
    - `state_names`: names of the states (the first is voltage-like).
    - `observe`: ``state (state, node) -> mV``; default: ``100 * u - 80``.
    - `state_bounds`: admissible range of each state (divergence when left).
    - `rest_state`: resting value of each state (default zeros).
    - `dt`: default step (ms).
    - `stable_dt`: the largest step (ms) known stable, if any (``fit`` warns above it);
      default unknown.
    - `name`: a label for results (default ``fn.__name__``).
    """
    names = tuple(state_names)
    bounds = tuple((float(lo), float(hi)) for lo, hi in state_bounds)
    if len(bounds) != len(names):
        raise ValueError(
            f"state_bounds has {len(bounds)} entries for {len(names)} states {names}"
        )
    if not callable(fn):
        raise TypeError("fn must be callable: fn(t, state, params, geometry)")
    rest = jnp.zeros(len(names)) if rest_state is None else jnp.asarray(rest_state, float)
    if rest.shape != (len(names),):
        raise ValueError(f"rest_state must have one value per state {names}, got {rest.shape}")
    obs = observe if observe is not None else _default_observe
    dt = _positive("dt", dt)
    max_dt = math.inf if stable_dt is None else _positive("stable_dt", stable_dt)
    label = str(name) if name is not None else getattr(fn, "__name__", "vector field")
    return VectorFieldModel(fn, params, names, obs, bounds, rest, dt, max_dt, label)


def _default_observe(y):
    return -80.0 + 100.0 * y[0]


def _positive(what, x) -> float:
    try:
        v = float(np.asarray(x, dtype=np.float64))
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a positive number of ms; got {x!r}") from None
    if not (v > 0 and math.isfinite(v)):
        raise ValueError(f"{what} must be a positive number of ms; got {x!r}")
    return v


# ---------------------------------------------------------------------------------------
# training helpers
# ---------------------------------------------------------------------------------------
def trainable_filter(model: AbstractCompiledModel):
    """Pytree of bools over `model`: True for the leaves an optimiser updates
    (:meth:`AbstractCompiledModel.trainable_filter`)."""
    return model.trainable_filter()


def partition(model: AbstractCompiledModel):
    """``(params, static)`` with ``eqx.combine(params, static) == model``."""
    return eqx.partition(model, trainable_filter(model))


combine = eqx.combine


def physical_parameters(model: HybridModel) -> dict[str, Float[Array, " node"]]:
    """Physical value of every parameter of a :class:`HybridModel` at every node,
    ``{name: (node,)}`` (units of the parameter's spec). Works on stacked models too
    (leading candidate axis)."""
    v = _values_any(model.params)
    return {n: v[..., i, :] for i, n in enumerate(model.params.names)}


@eqx.filter_jit
def _values_any(block: ParameterBlock):
    if block.raw_global.ndim == 1:
        return block.values()
    return jax.vmap(_values_any)(block)


def parameter_specs_of(model: HybridModel) -> dict[str, ParamSpec]:
    """The spec of every parameter of a compiled model, by name."""
    specs = {s.name: s for s in model.reaction_cls.param_specs}
    specs["D"] = CONDUCTIVITY_SPEC
    return {n: specs[n] for n in model.params.names}


def diffusion_stable_dt(model: HybridModel, geometry) -> float:
    """Forward-Euler stability bound (ms) of a hybrid model's diffusion at its current
    conductivities, ``2 / diffusion_rate`` (inf without diffusion). Host-side, for
    choosing ``dt``; RK4 tolerates about 1.39x this."""
    rate = diffusion_rate(model, geometry)
    return math.inf if rate == 0 else 2.0 / rate


def replace_parameters(model: HybridModel, **values) -> HybridModel:
    """Set physical parameter values (e.g. initial guesses, ground truth); host-side
    (concrete values), works on single and stacked models.

    A scalar sets the global, every region and every node value (mode unchanged); an
    array of shape ``(n_regions,)`` sets the region values and switches the parameter
    to per-region mode; shape ``(n_nodes,)`` sets node values and switches to per-node
    mode. Free/fixed masks are unchanged. Values must lie inside the spec's bounds.
    """
    specs = parameter_specs_of(model)
    b = model.params
    # Host-side (numpy) edit of the data; returns a new model.
    rg, rr, rn, mode = (np.array(x) for x in (b.raw_global, b.raw_region, b.raw_node, b.mode))
    n_regions, n_nodes = rr.shape[-1], rn.shape[-1]
    for name, value in values.items():
        i = b.index(name)
        spec = specs[name]
        v = np.asarray(value, np.float64)
        if not np.all((v > spec.lower) & (v < spec.upper)):
            raise ValueError(
                f"{name} = {value} must lie strictly inside ({spec.lower}, {spec.upper}) "
                f"{spec.units}"
            )
        raw = _logit_np(v, spec)
        if v.ndim == 0:
            rg[..., i] = raw
            rr[..., i, :] = raw
            rn[..., i, :] = raw
        elif v.shape == (n_nodes,):
            rn[..., i, :] = raw
            mode[..., i, :] = (0.0, 0.0, 1.0)
        elif v.shape == (n_regions,):
            rr[..., i, :] = raw
            mode[..., i, :] = (0.0, 1.0, 0.0)
        else:
            raise ValueError(
                f"{name}: value of shape {v.shape} must be a scalar, ({n_regions},) per "
                f"region or ({n_nodes},) per node"
            )
    new = eqx.tree_at(
        lambda p: (p.raw_global, p.raw_region, p.raw_node, p.mode),
        b,
        tuple(jnp.asarray(x) for x in (rg, rr, rn, mode)),
    )
    return eqx.tree_at(lambda m: m.params, model, new)




__all__ = [
    "AbstractBoundModel",
    "AbstractCompiledModel",
    "AbstractPlainBoundModel",
    "BoundHybridModel",
    "BoundVectorField",
    "HybridModel",
    "ParameterBlock",
    "VectorFieldModel",
    "combine",
    "compile_structure",
    "compile_vector_field",
    "diffusion_rate",
    "diffusion_stable_dt",
    "parameter_specs_of",
    "partition",
    "physical_parameters",
    "replace_parameters",
    "trainable_filter",
]
