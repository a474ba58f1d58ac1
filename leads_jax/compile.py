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
structures and leaf shapes: they stack with :func:`stack_models` and one jitted, vmapped
program serves all of them. Candidate counts are padded to :func:`bucket_size` so a few
bucket sizes cover every batch.

A generic path, :func:`compile_vector_field`, wraps any JAX vector field (for baselines
that are not sentences of the grammar) into a model :func:`~leads_jax.simulate.simulate`
accepts.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._custom_types import Array, Float, Int, PRNGKeyArray
from .physics.closures import AbstractClosure, AdditiveClosure, GateClosure
from .physics.diffusion import (
    AbstractDiffusion,
    LaplacianDiffusion,
    NeuralGraphDiffusion,
    NoDiffusion,
    edge_divergence,
)
from .physics.reactions._base import ParamSpec
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
# compiled models
# ---------------------------------------------------------------------------------------
class AbstractCompiledModel(eqx.Module):
    """What :func:`~leads_jax.simulate.simulate` needs from a model.

    - :meth:`bind` -> an object with ``vector_field(t, y, stimulus)`` (parameters
      transformed once per solve, not once per step);
    - :meth:`observe` (mV), :meth:`initial_state`, ``state_names``, ``state_bounds``
      (``(state, 2)`` array of admissible ranges: leaving them is divergence) and
      ``default_dt`` (ms, static).
    """

    @abc.abstractmethod
    def bind(self, geometry) -> Any:
        """Parameters resolved on `geometry`; has ``vector_field(t, y, stimulus)``."""

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

    def trainable_filter(self):
        """Pytree of bools over the model: True for leaves an optimiser updates."""
        return jax.tree.map(eqx.is_inexact_array, self)


def _neighbour_mean_diff(u, geometry):
    """Mean over graph neighbours of ``u_j - u_i`` (unit edge weights)."""
    e = geometry.edges
    ones = jnp.ones(e.shape[0], u.dtype)
    n = u.shape[0]
    degree = jax.ops.segment_sum(ones, e[:, 0], num_segments=n) + jax.ops.segment_sum(
        ones, e[:, 1], num_segments=n
    )
    return edge_divergence(u[e[:, 1]] - u[e[:, 0]], e, jnp.maximum(degree, 1.0))


class BoundHybridModel(eqx.Module):
    """A :class:`HybridModel` with its parameters resolved on one geometry."""

    reaction: Any
    conductivity: Float[Array, " node"]
    diffusion: AbstractDiffusion
    closures: tuple[AbstractClosure, ...]
    geometry: Any

    def rates(self, t, y):
        """Reaction + closures + diffusion (no stimulus), shape ``(state, node)``."""
        dy = self.reaction.rates(t, y)
        nbr = None
        if any(getattr(c, "neighbours", False) for c in self.closures):
            nbr = _neighbour_mean_diff(y[0], self.geometry)
        for c in self.closures:
            if isinstance(c, GateClosure):
                dy = dy.at[c.target].set(c(y))
            else:
                dy = dy.at[c.target].add(c(y, nbr))
        if not isinstance(self.diffusion, NoDiffusion):
            dy = dy.at[0].add(self.diffusion(y[0], self.geometry, self.conductivity))
        return dy

    def vector_field(self, t, y, stimulus=None):
        """d(state)/dt in 1/ms; the stimulus adds to the voltage-like equation."""
        dy = self.rates(t, y)
        if stimulus is not None:
            dy = dy.at[0].add(stimulus.current(t).astype(dy.dtype))
        return dy

    def gate_inf_tau(self, y):
        """``(names, g_inf, tau)`` of every gate state (catalog gates, with gate closures
        replacing theirs), for Rush-Larsen steps; ``g_inf``/``tau`` are ``(gate, node)``."""
        names = tuple(self.reaction.gate_states)
        if not names:
            return names, None, None
        g_inf, tau = self.reaction.gate_inf_tau(y)
        state_names = self.reaction.state_names
        for c in self.closures:
            if isinstance(c, GateClosure):
                k = names.index(state_names[c.target])
                gi, ti = c.inf_tau(y[0])
                g_inf, tau = g_inf.at[k].set(gi), tau.at[k].set(ti)
        return names, g_inf, tau


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
        dt = float(getattr(self.reaction_cls, "stable_dt", 0.0) or 0.0)
        if dt <= 0:
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
        f = jax.tree.map(lambda _: False, self)
        f = eqx.tree_at(lambda m: m.params, f, self.params.trainable_filter())
        f = eqx.tree_at(lambda m: m.diffusion, f, self.diffusion.trainable_filter())
        return eqx.tree_at(
            lambda m: m.closures, f, tuple(c.trainable_filter() for c in self.closures)
        )


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
class BoundVectorField(eqx.Module):
    fn: Callable = eqx.field(static=True)
    params: Any
    geometry: Any

    def rates(self, t, y):
        return self.fn(t, y, self.params, self.geometry)

    def vector_field(self, t, y, stimulus=None):
        dy = self.rates(t, y)
        if stimulus is not None:
            dy = dy.at[0].add(stimulus.current(t).astype(dy.dtype))
        return dy


class VectorFieldModel(AbstractCompiledModel):
    """A model from a plain JAX vector field (see :func:`compile_vector_field`)."""

    fn: Callable = eqx.field(static=True)
    params: Any
    names: tuple[str, ...] = eqx.field(static=True)
    observe_fn: Callable = eqx.field(static=True)
    bounds: tuple = eqx.field(static=True)
    rest: Float[Array, " state"]
    dt: float = eqx.field(static=True)

    @property
    def state_names(self):
        return self.names

    @property
    def state_bounds(self):
        return jnp.asarray(self.bounds, float)

    @property
    def default_dt(self):
        return self.dt

    def bind(self, geometry):
        return BoundVectorField(self.fn, self.params, geometry)

    def observe(self, state):
        return self.observe_fn(state)

    def initial_state(self, n_nodes: int):
        return jnp.broadcast_to(self.rest[:, None], (self.rest.shape[0], n_nodes))

    def trainable_filter(self):
        f = jax.tree.map(lambda _: False, self)
        return eqx.tree_at(
            lambda m: m.params, f, jax.tree.map(eqx.is_inexact_array, self.params)
        )


def compile_vector_field(
    fn: Callable,
    params: Any,
    *,
    state_names: Sequence[str],
    observe: Callable | None = None,
    state_bounds: Sequence[tuple[float, float]],
    rest_state: Sequence[float] | None = None,
    dt: float = 0.05,
) -> VectorFieldModel:
    """Wrap a JAX vector field into a model :func:`~leads_jax.simulate.simulate` accepts.

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
    obs = observe if observe is not None else (lambda y: -80.0 + 100.0 * y[0])
    return VectorFieldModel(fn, params, names, obs, bounds, rest, float(dt))


# ---------------------------------------------------------------------------------------
# training helpers
# ---------------------------------------------------------------------------------------
def trainable_filter(model: AbstractCompiledModel):
    """Pytree of bools over `model`: True for the leaves an optimiser updates.

    For a :class:`HybridModel`: the unconstrained parameter values (fixed ones get zero
    gradient through their mask) and the weights and scales of neural terms; masks,
    bounds, normalisations and caps are data, not trained."""
    return model.trainable_filter()


def partition(model: AbstractCompiledModel):
    """``(params, static)`` with ``eqx.combine(params, static) == model``."""
    return eqx.partition(model, trainable_filter(model))


combine = eqx.combine


def physical_parameters(model: HybridModel) -> dict[str, Float[Array, " node"]]:
    """Physical value of every parameter at every node, ``{name: (node,)}`` (units of
    the parameter's spec). Works on stacked models too (leading candidate axis)."""
    if isinstance(model, VectorFieldModel):
        return {"params": model.params}
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
    from .physics.diffusion import CONDUCTIVITY_SPEC

    specs["D"] = CONDUCTIVITY_SPEC
    return {n: specs[n] for n in model.params.names}


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




# ---------------------------------------------------------------------------------------
# batching: bucket sizes, padding, stacking
# ---------------------------------------------------------------------------------------
def bucket_size(n: int, *, minimum: int = 1, multiple_of: int = 1) -> int:
    """The padded batch size for `n` candidates: the next power of two (>= `minimum`),
    so batches of 5..8 share one compilation, 9..16 another, and so on; rounded up to a
    multiple of `multiple_of` (the device count, when the batch is sharded)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if multiple_of < 1:
        raise ValueError(f"multiple_of must be >= 1, got {multiple_of}")
    size = max(int(minimum), 1)
    while size < n:
        size *= 2
    return -(-size // multiple_of) * multiple_of


def stack_models(models: Sequence[Any], size: int | None = None):
    """Stack models of one topology into a batch, padded to `size` (default:
    ``bucket_size(len(models))``) by repeating the last model.

    **Returns:** ``(stacked, mask)`` where every array leaf of ``stacked`` has a leading
    axis of length `size` and ``mask`` (bool, ``(size,)``) is True for real members.
    Models whose tree structures differ (different topologies) raise ``ValueError``.
    """
    models = list(models)
    if not models:
        raise ValueError("stack_models needs at least one model")
    size = bucket_size(len(models)) if size is None else int(size)
    if size < len(models):
        raise ValueError(f"size {size} is smaller than the number of models {len(models)}")
    arrays0, static0 = eqx.partition(models[0], eqx.is_array)
    treedef = jax.tree.structure(arrays0)
    shapes = [x.shape for x in jax.tree.leaves(arrays0)]
    for i, m in enumerate(models[1:], 1):
        arrays, static = eqx.partition(m, eqx.is_array)
        if (
            jax.tree.structure(arrays) != treedef
            or jax.tree.structure(static) != jax.tree.structure(static0)
            or [x.shape for x in jax.tree.leaves(arrays)] != shapes
        ):
            raise ValueError(
                f"model {i} has a different topology (tree structure or leaf shapes) from "
                "model 0; group candidates by Structure.topology_key() before stacking"
            )
    padded = models + [models[-1]] * (size - len(models))
    parts = [eqx.partition(m, eqx.is_array)[0] for m in padded]
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *parts)
    mask = jnp.arange(size) < len(models)
    return eqx.combine(stacked, static0), mask


def unstack_model(stacked: Any, i: int):
    """Member `i` of a stacked batch of models."""
    arrays, static = eqx.partition(stacked, eqx.is_array)
    return eqx.combine(jax.tree.map(lambda x: x[i], arrays), static)


__all__ = [
    "AbstractCompiledModel",
    "BoundHybridModel",
    "HybridModel",
    "ParameterBlock",
    "VectorFieldModel",
    "bucket_size",
    "combine",
    "compile_structure",
    "compile_vector_field",
    "parameter_specs_of",
    "partition",
    "physical_parameters",
    "replace_parameters",
    "stack_models",
    "trainable_filter",
    "unstack_model",
]
