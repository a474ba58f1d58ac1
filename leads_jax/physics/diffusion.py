r"""The diffusion catalog: how the voltage-like state spreads over a geometry.

All operators are written as fluxes along the edges of the geometry's graph,

$$\frac{du_i}{dt} = \frac{1}{m_i} \sum_{j \sim i} c_{ij}(u)\,(u_j - u_i),
\qquad c_{ij} = c_{ji} \ge 0,$$

with ``m_i`` the lumped mass (control volume) of node ``i`` and ``w_ij`` the geometry's
edge weights (cotangent weights on meshes). Because the flux on edge ``ij`` is
antisymmetric, charge ``sum_i m_i u_i`` is conserved exactly and, because
``c_ij >= 0``, every operator is dissipative:
``d/dt (1/2) sum_i m_i u_i^2 = -(1/2) sum_{ij} c_ij (u_i - u_j)^2 <= 0`` (the Dirichlet
form of the conductances). For a state-independent ``c`` the operator is the
``M``-gradient flow of the Dirichlet energy ``E_c(u) = (1/2) sum_edges c_ij (u_i - u_j)^2``,
which therefore never increases.

Catalog (``kind``):

* ``"none"`` -- single cells / uncoupled nodes (:class:`NoDiffusion`).
* ``"laplacian"`` -- fixed Laplacian with a learnable positive conductivity ``D``
  (cm^2/ms): ``c_ij = w_ij (D_i + D_j) / 2``. With one global ``D`` this is exactly
  ``D * geometry.laplacian(u)``; per-node or per-region ``D`` (chosen in the structure,
  as data) gives the arithmetic mean on each edge (:class:`LaplacianDiffusion`).
* ``"neural-graph"`` -- a neural conductance that depends on the potentials at both ends,
  ``c_ij = w_ij (D_i + D_j)/2 * softplus(g(u_i, u_j) + g(u_j, u_i)) / ln 2`` with
  ``g = g_max * tanh(MLP)``: symmetric and positive by construction, so it conserves
  charge and cannot anti-diffuse; bounded between ``softplus(-2 g_max)/ln 2`` and
  ``softplus(2 g_max)/ln 2`` times the Laplacian conductance, and equal to it at
  initialisation (:class:`NeuralGraphDiffusion`).
"""

from __future__ import annotations

import abc
import math
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp

from .._custom_types import Array, Float, PRNGKeyArray
from .closures import MLP
from .reactions._base import ParamSpec

#: The conductivity parameter shared by the ``laplacian`` and ``neural-graph`` kinds.
CONDUCTIVITY_SPEC = ParamSpec(
    name="D",
    default=1e-3,
    lower=1e-6,
    upper=1.0,
    units="cm^2/ms",
    role="tissue conductivity (diffusion coefficient of the transmembrane potential)",
    source="typical monodomain values: physiological 0.001-0.0015 cm^2/ms; "
    "dimensionless studies use 0.05-1",
)

#: Largest admissible bound ``g_max`` of the neural conductance's log-gain.
MAX_NEURAL_GAIN = 5.0


def edge_divergence(
    flux: Float[Array, " edge"], edges, mass: Float[Array, " node"]
) -> Float[Array, " node"]:
    """``(1/m_i) * sum_j flux_ij``: flux on edge ``(i, j)`` flows from ``j`` into ``i``."""
    n = mass.shape[0]
    inflow = jax.ops.segment_sum(flux, edges[:, 0], num_segments=n)
    outflow = jax.ops.segment_sum(flux, edges[:, 1], num_segments=n)
    return (inflow - outflow) / mass


def edge_mean(values: Float[Array, " node"], edges) -> Float[Array, " edge"]:
    """Arithmetic mean of a node field over the two ends of each edge."""
    return 0.5 * (values[edges[:, 0]] + values[edges[:, 1]])


def dirichlet_energy(u: Float[Array, " node"], edges, conductance: Float[Array, " edge"]):
    """``E_c(u) = (1/2) * sum_edges c_ij (u_i - u_j)^2`` (each undirected edge once)."""
    du = u[edges[:, 1]] - u[edges[:, 0]]
    return 0.5 * jnp.sum(conductance * du**2)


class AbstractDiffusion(eqx.Module):
    """A diffusion operator of the catalog; acts on the voltage-like state only.

    Subclasses implement :meth:`edge_conductance` (``c_ij >= 0``, symmetric); the rate is
    then the edge divergence of ``c_ij (u_j - u_i)``.
    """

    kind: ClassVar[str]
    uses_conductivity: ClassVar[bool] = True

    @abc.abstractmethod
    def edge_conductance(self, u, geometry, conductivity) -> Float[Array, " edge"]:
        """``c_ij`` on each edge of ``geometry`` (cm^2/ms times the edge weight)."""

    def __call__(
        self, u: Float[Array, " node"], geometry, conductivity: Float[Array, " node"]
    ) -> Float[Array, " node"]:
        """d u / dt from diffusion (u per ms)."""
        c = self.edge_conductance(u, geometry, conductivity)
        e = geometry.edges
        return edge_divergence(c * (u[e[:, 1]] - u[e[:, 0]]), e, geometry.mass)

    def trainable_filter(self):
        return jax.tree.map(lambda _: False, self)


class NoDiffusion(AbstractDiffusion):
    """No coupling between nodes (single cell, or a set of independent cells)."""

    kind: ClassVar[str] = "none"
    uses_conductivity: ClassVar[bool] = False

    def edge_conductance(self, u, geometry, conductivity):
        return jnp.zeros(geometry.edges.shape[0], u.dtype)

    def __call__(self, u, geometry, conductivity):
        return jnp.zeros_like(u)


class LaplacianDiffusion(AbstractDiffusion):
    """The geometry's fixed Laplacian scaled by a positive conductivity ``D``.

    ``D`` comes from the structure's parameters (global, per-region or per-node, as data)
    and is passed in per node; an edge uses the arithmetic mean of its two ends.
    """

    kind: ClassVar[str] = "laplacian"

    def edge_conductance(self, u, geometry, conductivity):
        return geometry.edge_weights * edge_mean(conductivity, geometry.edges)


class NeuralGraphDiffusion(AbstractDiffusion):
    """Dissipative neural graph diffusion (see the module docstring for the form).

    **Arguments:**

    - `hidden`: hidden widths of ``g``'s MLP (input: the two normalised potentials).
    - `max_gain`: ``g_max``, the bound on ``|g|`` (data, not trained).
    - `u_center`, `u_scale`: normalisation of the voltage-like state (its bounds).
    - `key`: PRNG key (keyword-only).
    """

    kind: ClassVar[str] = "neural-graph"
    mlp: MLP
    max_gain: Float[Array, ""]
    u_center: Float[Array, ""]
    u_scale: Float[Array, ""]

    def __init__(
        self,
        hidden: tuple[int, ...],
        max_gain: float,
        u_center: float,
        u_scale: float,
        *,
        key: PRNGKeyArray,
    ):
        self.mlp = MLP((2,) + tuple(hidden) + (1,), key=key)
        self.max_gain = jnp.asarray(max_gain, float)
        self.u_center = jnp.asarray(u_center, float)
        self.u_scale = jnp.asarray(u_scale, float)

    def gain(self, u, edges) -> Float[Array, " edge"]:
        """``softplus(g(u_i, u_j) + g(u_j, u_i)) / ln 2``: symmetric, positive, bounded."""
        x = (u - self.u_center) / self.u_scale
        xi, xj = x[edges[:, 0]], x[edges[:, 1]]
        g = lambda a, b: self.max_gain * jnp.tanh(self.mlp(jnp.stack([a, b]))[0])
        return jax.nn.softplus(g(xi, xj) + g(xj, xi)) / math.log(2.0)

    def edge_conductance(self, u, geometry, conductivity):
        base = geometry.edge_weights * edge_mean(conductivity, geometry.edges)
        return base * self.gain(u, geometry.edges)

    def trainable_filter(self):
        f = jax.tree.map(lambda _: False, self)
        return eqx.tree_at(lambda d: d.mlp, f, jax.tree.map(lambda _: True, self.mlp))


DIFFUSION_KINDS: dict[str, type[AbstractDiffusion]] = {
    "none": NoDiffusion,
    "laplacian": LaplacianDiffusion,
    "neural-graph": NeuralGraphDiffusion,
}


def diffusion_metadata() -> dict:
    """JSON-able description of the diffusion catalog (rendered into the agent's prompt)."""
    spec = CONDUCTIVITY_SPEC
    d = {
        "name": spec.name,
        "default": spec.default,
        "lower": spec.lower,
        "upper": spec.upper,
        "units": spec.units,
        "role": spec.role,
        "source": spec.source,
    }
    return {
        "none": {"form": "no coupling (single cell)", "parameters": []},
        "laplacian": {
            "form": "du_i/dt += (1/m_i) sum_j w_ij (D_i + D_j)/2 (u_j - u_i)",
            "role": "passive electrotonic coupling with a learnable positive conductivity; "
            "D may be global, per-region or per-node",
            "parameters": [d],
        },
        "neural-graph": {
            "form": "du_i/dt += (1/m_i) sum_j w_ij (D_i + D_j)/2 "
            "softplus(g(u_i,u_j) + g(u_j,u_i))/ln2 (u_j - u_i), |g| <= g_max",
            "role": "potential-dependent (nonlinear) conduction; symmetric positive "
            "conductance, so charge-conserving and dissipative by construction",
            "parameters": [d],
            "bounds": {"max_gain": [0.0, MAX_NEURAL_GAIN]},
        },
    }


__all__ = [
    "AbstractDiffusion",
    "CONDUCTIVITY_SPEC",
    "DIFFUSION_KINDS",
    "LaplacianDiffusion",
    "MAX_NEURAL_GAIN",
    "NeuralGraphDiffusion",
    "NoDiffusion",
    "diffusion_metadata",
    "dirichlet_energy",
    "edge_divergence",
    "edge_mean",
]
