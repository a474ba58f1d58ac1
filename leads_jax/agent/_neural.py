r"""The purely neural baseline: a neural ODE per node, coupled by neural graph diffusion.

No reaction model, no named currents: every node's state ``x`` (``n_states``
dimensionless variables, the first voltage-like) evolves as

$$\frac{dx_i}{dt} = r\,\mathrm{MLP}\big((x_i - c)/s\big)
  + e_0\,\frac{1}{m_i}\sum_{j\sim i} w_{ij}\, D\, \gamma(x_{0i}, x_{0j})\,(x_{0j} - x_{0i}),$$

an MLP "reaction" shared by all nodes (Chen et al., "Neural ordinary differential
equations", NeurIPS 2018) plus, on geometries with edges, the dissipative neural graph
diffusion of :class:`~leads_jax.physics.diffusion.NeuralGraphDiffusion` with a learned
positive conductivity ``D`` (the graph comes from the geometry, the conduction law is
learnt: a neural graph ODE in the sense of Poli et al., "Graph neural ordinary
differential equations", 2019). ``r`` (1/ms) is a fixed rate scale; the MLP's last
layer starts at zero, so a fresh model is at rest and gradients flow to every layer.
The map to mV is ``offset + gain * x_0`` (fixed data; wrap with
:func:`leads_jax.recording.with_observation_gain` to fit it).

There is no stability guarantee: the MLP is unbounded, and leaving the state bounds is
divergence, recorded by the solver.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import SupportsFloat, SupportsIndex

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._custom_types import Array, Float, PRNGKeyArray
from ..compile import AbstractCompiledModel, AbstractPlainBoundModel
from ..physics.closures import MLP
from ..physics.diffusion import AbstractDiffusion, NeuralGraphDiffusion, NoDiffusion
from ..solvers import solver_spec

__all__ = ["BoundNeuralODE", "NeuralODEModel", "neural_ode_model"]


class BoundNeuralODE(AbstractPlainBoundModel):
    """A :class:`NeuralODEModel` on one geometry (no closures: there is no physics for a
    closure to correct)."""

    mlp: MLP
    rate_scale: Float[Array, ""]
    center: Float[Array, " state"]
    scale: Float[Array, " state"]
    diffusion: AbstractDiffusion
    conductivity: Float[Array, " node"]
    geometry: object

    def rates(self, t, y):
        x = (y - self.center[:, None]) / self.scale[:, None]
        dy = self.rate_scale * self.mlp(x)
        if not isinstance(self.diffusion, NoDiffusion):
            dy = dy.at[0].add(self.diffusion(y[0], self.geometry, self.conductivity))
        return dy.astype(y.dtype)


class NeuralODEModel(AbstractCompiledModel):
    """A purely neural compiled model (module docstring); build it with
    :func:`neural_ode_model`. Fitted: the MLP and the log-conductivity."""

    mlp: MLP
    diffusion: AbstractDiffusion
    log_conductivity: Float[Array, ""]
    rate_scale: Float[Array, ""]
    center: Float[Array, " state"]
    scale: Float[Array, " state"]
    bounds: Float[Array, "state 2"]
    obs_offset: Float[Array, ""]
    obs_gain: Float[Array, ""]
    names: tuple[str, ...] = eqx.field(static=True)
    dt: float = eqx.field(static=True)

    @property
    def state_names(self) -> tuple[str, ...]:
        return self.names

    @property
    def state_bounds(self):
        return self.bounds

    @property
    def default_dt(self) -> float:
        return self.dt

    @property
    def n_nodes(self) -> None:
        return None

    def conductivity(self, n_nodes: int = 1) -> Float[Array, " node"]:
        """The learned conductivity ``D`` (cm^2/ms) at every node."""
        return jnp.broadcast_to(jnp.exp(self.log_conductivity), (n_nodes,))

    def bind(self, geometry) -> BoundNeuralODE:
        n = 1 if geometry is None else geometry.n_nodes
        return BoundNeuralODE(self.mlp, self.rate_scale, self.center, self.scale,
                              self.diffusion, self.conductivity(n), geometry)

    def observe(self, state):
        return self.obs_offset + self.obs_gain * state[0]

    def initial_state(self, n_nodes: int):
        rest = self.center * 0.0
        return jnp.broadcast_to(rest[:, None], (rest.shape[0], n_nodes))

    def trainable_filter(self):
        f = jax.tree.map(lambda _: False, self)
        f = eqx.tree_at(lambda m: m.mlp, f, jax.tree.map(lambda _: True, self.mlp))
        f = eqx.tree_at(lambda m: m.diffusion, f, self.diffusion.trainable_filter())
        return eqx.tree_at(lambda m: m.log_conductivity, f, True)

    def perturb(self, key: PRNGKeyArray, scale) -> NeuralODEModel:
        """Gaussian noise of std ``scale * 0.1`` on the MLP weights (so restarts start
        from different small rates) and of std `scale` on the log-conductivity."""
        leaves, tdef = jax.tree.flatten(self.mlp)
        keys = jax.random.split(key, len(leaves) + 1)
        leaves = [x + 0.1 * scale * jax.random.normal(k, x.shape, x.dtype)
                  for x, k in zip(leaves, keys[1:], strict=True)]
        log_d = self.log_conductivity + scale * jax.random.normal(keys[0], ())
        return eqx.tree_at(lambda m: (m.mlp, m.log_conductivity), self,
                           (jax.tree.unflatten(tdef, leaves), log_d))

    def fitted_values(self) -> dict[str, float]:
        """The learned conductivity ``D`` (cm^2/ms) and the MLP weights' RMS."""
        w = np.concatenate([np.asarray(x).ravel() for x in jax.tree.leaves(self.mlp)])
        return {"D": float(np.exp(np.asarray(self.log_conductivity))),
                "mlp_weight_rms": float(np.sqrt(np.mean(w**2)))}

    @property
    def n_params(self) -> int:
        p, _ = eqx.partition(self, self.trainable_filter())
        return int(sum(np.size(x) for x in jax.tree.leaves(p)))

    def stable_dt(self, geometry, solver: str = "rk4") -> float:
        """The explicit diffusion limit at the current conductivity (neural gain at its
        maximum); the MLP reaction has no known limit (``inf`` without diffusion)."""
        spec = solver_spec(solver)
        if geometry is None or isinstance(self.diffusion, NoDiffusion):
            return math.inf
        # Gershgorin bound of the neural graph diffusion at its largest gain (as
        # leads_jax.compile.diffusion_rate does for grammar structures)
        d = float(np.exp(np.asarray(self.log_conductivity)))
        gain = float(jax.nn.softplus(2 * self.diffusion.max_gain) / math.log(2.0))
        e = np.asarray(geometry.edges)
        c = np.asarray(geometry.edge_weights) * d * gain
        deg = np.zeros(geometry.n_nodes)
        np.add.at(deg, e[:, 0], c)
        np.add.at(deg, e[:, 1], c)
        rate = float(np.max(2.0 * deg / np.asarray(geometry.mass)))
        return math.inf if rate == 0 else spec.stability_extent / rate

    def formula(self) -> str:
        sizes = "x".join(str(s) for s in self.mlp.sizes)
        diff = ("" if isinstance(self.diffusion, NoDiffusion)
                else " + neural graph diffusion of " + self.names[0])
        return f"neural ODE: d({', '.join(self.names)})/dt = MLP[{sizes}](state){diff}"


def neural_ode_model(
    geometry,
    n_states: SupportsIndex = 2,
    width: SupportsIndex = 16,
    *,
    key: PRNGKeyArray,
    depth: SupportsIndex = 2,
    conductivity: SupportsFloat | None = None,
    rate_scale: SupportsFloat = 0.1,
    state_bounds: Sequence[SupportsFloat] = (-3.0, 3.0),
    observe: Sequence[SupportsFloat] = (-80.0, 100.0),
    dt: SupportsFloat = 0.05,
) -> NeuralODEModel:
    """A purely neural model on `geometry` (module docstring).

    **Arguments:**

    - `geometry`: the :class:`~leads_jax.geometry.Geometry` (diffusion only when it has
      edges; a single cell gets none).
    - `n_states`: state variables per node (the first is observed).
    - `width`, `depth`: hidden width and number of hidden layers of the MLP.
    - `key`: PRNG key (keyword-only).
    - `conductivity`: initial ``D`` (cm^2/ms; default
      :func:`~leads_jax.datasets.default_conductivity` of the geometry).
    - `rate_scale`: ``r`` (1/ms), the scale of the MLP's rates.
    - `state_bounds`: admissible range of every state (divergence outside).
    - `observe`: ``(offset, gain)`` of the observed mV.
    - `dt`: default step (ms).
    """
    from ..datasets import default_conductivity

    n_states, width, depth = int(n_states), int(width), int(depth)
    if n_states < 1 or width < 1 or depth < 1:
        raise ValueError(f"n_states, width and depth must be >= 1; got {n_states}, {width}, "
                         f"{depth}")
    lo, hi = (float(x) for x in state_bounds)
    if not lo < hi:
        raise ValueError(f"state_bounds must be (low, high) with low < high; got {state_bounds}")
    if not (float(dt) > 0 and math.isfinite(float(dt))):
        raise ValueError(f"dt must be a positive number of ms; got {dt}")
    k_mlp, k_diff = jax.random.split(key)
    mlp = MLP((n_states,) + (width,) * depth + (n_states,), key=k_mlp, zero_last=True)
    center, scale = 0.5 * (lo + hi), 0.5 * (hi - lo)
    has_edges = geometry is not None and geometry.n_edges > 0
    if has_edges:
        diffusion = NeuralGraphDiffusion((width,), 0.5, center, scale, key=k_diff)
        d0 = default_conductivity(geometry) if conductivity is None else float(conductivity)
    else:
        diffusion = NoDiffusion()
        d0 = 1e-3 if conductivity is None else float(conductivity)
    if not d0 > 0:
        raise ValueError(f"conductivity must be > 0 cm^2/ms; got {d0}")
    off, gain = (float(x) for x in observe)
    return NeuralODEModel(
        mlp=mlp,
        diffusion=diffusion,
        log_conductivity=jnp.asarray(math.log(d0), jnp.float32),
        rate_scale=jnp.asarray(rate_scale, jnp.float32),
        center=jnp.full((n_states,), center, jnp.float32),
        scale=jnp.full((n_states,), scale, jnp.float32),
        bounds=jnp.asarray([[lo, hi]] * n_states, jnp.float32),
        obs_offset=jnp.asarray(off, jnp.float32),
        obs_gain=jnp.asarray(gain, jnp.float32),
        names=("u",) + tuple(f"x{k}" for k in range(1, n_states)),
        dt=float(dt),
    )
