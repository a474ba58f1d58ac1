r"""Tissue geometries and their diffusion operator (graph / cotangent Laplacian).

A :class:`Geometry` is a set of nodes (coordinates in **cm**) joined by weighted
edges, with a lumped mass (control volume) per node. The diffusion term of every
tissue model is

$$\frac{\partial u}{\partial t} = D\,(L u), \qquad
  (L u)_i = \frac{1}{m_i} \sum_{j \sim i} w_{ij}\,(u_j - u_i),$$

so $L = M^{-1} C$ with the lumped mass matrix $M = \mathrm{diag}(m)$ and the
weighted graph Laplacian $C$ (stiffness). With $w_{ij} \ge 0$, $L$ is negative
semidefinite (it is similar to $M^{-1/2} C M^{-1/2}$), the Dirichlet energy
$E(u) = \tfrac12 \sum_{ij} w_{ij} (u_j - u_i)^2$ never increases under pure
diffusion ($\dot E = -\sum_i m_i (L u)_i^2$), charge $\sum_i m_i u_i$ is conserved,
and every boundary is **no-flux** (nothing leaves through the boundary because
no edge leads out). $D$ is in cm^2/ms, so $L$ is in 1/cm^2.

Constructors (all return a :class:`Geometry`):

- :meth:`Geometry.single_cell` -- one isolated cell (1 node, no edges, no diffusion).
- :meth:`Geometry.cable` -- 1-D cable, ``n_nodes`` nodes spaced ``dx`` cm.
  ``w = 1/dx``, ``m = dx`` inside and ``dx/2`` at both ends (linear finite
  elements with a lumped mass, i.e. the second-order mirror-node Neumann stencil).
- :meth:`Geometry.sheet` -- 2-D sheet of ``nx * ny`` nodes, the vertex-centred
  finite-volume 5-point stencil: ``w = 1`` across interior cell faces, ``1/2``
  along the boundary, ``m = dx^2`` inside, ``dx^2/2`` on edges, ``dx^2/4`` at
  corners. (This equals the cotangent Laplacian of the right-triangulated grid;
  the triangles are stored in ``faces`` for plotting.)
- :meth:`Geometry.ventricle` -- a heart-like surface: a prolate-ellipsoidal
  left-ventricle shell truncated at the base (open rim, no-flux), triangulated
  in code with **no obtuse triangles** (so all cotangent weights are >= 0),
  about 1,000-2,000 nodes (published hybrid-EP work used 1,862).
- :meth:`Geometry.from_mesh` -- a user's triangle mesh (vertices + faces):
  cotangent stiffness $w_{ij} = \tfrac12(\cot\alpha_{ij} + \cot\beta_{ij})$ and
  lumped (barycentric) mass $m_i = \tfrac13 \sum_{t \ni i} |t|$.
- :meth:`Geometry.from_edges` -- a user's graph: ``w = 1/length^2`` and ``m = 1``
  unless given (exact on regular grids of any dimension).

Every geometry carries integer ``regions`` (names in ``region_names``) and named
``pacing_sites`` (tuples of node indices); :meth:`Geometry.pacing_site` resolves
a name or node index and raises a ``ValueError`` listing the valid names.

Malformed input (NaN coordinates, out-of-range or repeated indices, degenerate
faces, isolated nodes, negative weights) raises ``ValueError`` naming the problem.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._custom_types import Array, Float, Int

__all__ = [
    "Geometry",
    "cable",
    "sheet",
    "ventricle",
    "from_mesh",
    "from_edges",
    "cotangent_weights",
    "lumped_mass",
    "triangle_angles",
]

_KINDS = ("cable", "sheet", "mesh", "graph", "single-cell")


# ----------------------------------------------------------------------------------
# numpy helpers (construction time only)
# ----------------------------------------------------------------------------------
def triangle_angles(vertices, faces) -> np.ndarray:
    """Interior angles (degrees) of each triangle, shape ``(face, 3)``; column k is
    the angle at ``faces[:, k]``."""
    p = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(faces)
    out = np.empty(f.shape, dtype=np.float64)
    for k in range(3):
        o, a, b = p[f[:, k]], p[f[:, (k + 1) % 3]], p[f[:, (k + 2) % 3]]
        u, v = a - o, b - o
        cos = np.einsum("ij,ij->i", u, v) / (
            np.linalg.norm(u, axis=1) * np.linalg.norm(v, axis=1) + 1e-300
        )
        out[:, k] = np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))
    return out


def _triangle_areas(p: np.ndarray, f: np.ndarray) -> np.ndarray:
    return 0.5 * np.linalg.norm(np.cross(p[f[:, 1]] - p[f[:, 0]], p[f[:, 2]] - p[f[:, 0]]), axis=1)


def _unique_edges_of_faces(f: np.ndarray) -> np.ndarray:
    e = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    return np.unique(np.sort(e, axis=1), axis=0)


def cotangent_weights(vertices, faces) -> tuple[np.ndarray, np.ndarray]:
    r"""Cotangent stiffness of a triangle mesh.

    Returns ``(edges, weights)`` with ``edges`` ``(edge, 2)`` (i < j, unique, sorted)
    and $w_{ij} = \tfrac12 \sum_{t \ni ij} \cot\theta_t$, the angle of triangle t
    opposite the edge (one term on boundary edges). Non-negative exactly when no
    two angles opposite an edge sum to more than 180 degrees (e.g. no obtuse triangles).
    """
    p = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(faces, dtype=np.int64)
    ii, jj, ww = [], [], []
    for k in range(3):
        o, a, b = f[:, k], f[:, (k + 1) % 3], f[:, (k + 2) % 3]
        u, v = p[a] - p[o], p[b] - p[o]
        cot = np.einsum("ij,ij->i", u, v) / np.linalg.norm(np.cross(u, v), axis=1)
        ii.append(np.minimum(a, b))
        jj.append(np.maximum(a, b))
        ww.append(0.5 * cot)
    ii, jj, ww = np.concatenate(ii), np.concatenate(jj), np.concatenate(ww)
    n = p.shape[0]
    key = ii * n + jj
    uniq, inv = np.unique(key, return_inverse=True)
    w = np.zeros(uniq.shape[0])
    np.add.at(w, inv, ww)
    edges = np.stack([uniq // n, uniq % n], axis=1)
    return edges, w


def lumped_mass(vertices, faces) -> np.ndarray:
    """Barycentric lumped mass: a third of the area of each adjacent triangle (cm^2)."""
    p = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(faces, dtype=np.int64)
    area = _triangle_areas(p, f)
    m = np.zeros(p.shape[0])
    for k in range(3):
        np.add.at(m, f[:, k], area / 3.0)
    return m


def _check_vertices(vertices, what="vertices") -> np.ndarray:
    try:
        v = np.asarray(vertices, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{what} must be a numeric array of shape (node, 2 or 3): {err}") from None
    if v.ndim != 2 or v.shape[1] not in (1, 2, 3):
        raise ValueError(f"{what} must have shape (node, 3) (or (node, 1|2)); got {v.shape}")
    if v.shape[0] < 2:
        raise ValueError(f"{what}: a geometry needs at least 2 nodes; got {v.shape[0]}")
    bad = np.where(~np.all(np.isfinite(v), axis=1))[0]
    if bad.size:
        raise ValueError(
            f"{what}: non-finite (NaN/inf) coordinates at {bad.size} node(s), "
            f"first indices {bad[:10].tolist()}"
        )
    if v.shape[1] < 3:
        v = np.concatenate([v, np.zeros((v.shape[0], 3 - v.shape[1]))], axis=1)
    return v


def _check_index_array(idx, n_nodes: int, width: int, what: str) -> np.ndarray:
    a = np.asarray(idx)
    if a.ndim != 2 or a.shape[1] != width or a.shape[0] == 0:
        raise ValueError(
            f"{what} must have shape ({what[:-1]}, {width}) and be non-empty; got {a.shape}"
        )
    if not np.issubdtype(a.dtype, np.integer):
        if not np.all(np.isfinite(a)) or not np.all(a == np.round(a)):
            raise ValueError(f"{what} must hold integer node indices")
        a = a.astype(np.int64)
    a = a.astype(np.int64)
    out = np.where((a < 0) | (a >= n_nodes))
    if out[0].size:
        r = out[0][0]
        raise ValueError(
            f"{what}: node index {int(a[out][0])} (row {int(r)}) is out of range for "
            f"{n_nodes} vertices (valid 0..{n_nodes - 1})"
        )
    return a


def _check_isolated(n_nodes: int, used: np.ndarray, what: str):
    isolated = np.setdiff1d(np.arange(n_nodes), np.unique(used))
    if isolated.size:
        raise ValueError(
            f"{what}: {isolated.size} isolated node(s) belong to no {what[:-1]}"
            f" (first indices {isolated[:10].tolist()}); remove them or connect them"
        )


def disconnected_message(k: int) -> str:
    """The one wording of a disconnected geometry (warnings, errors, run notes)."""
    return (f"the geometry is disconnected: {k} separate components (a wave cannot cross "
            "between them)")


def _warn_if_disconnected(geo: Geometry) -> Geometry:
    k = geo.n_components
    if k > 1:
        warnings.warn(f"mesh {geo.name!r}: " + disconnected_message(k), stacklevel=3)
    return geo


def _normalise_regions(regions, region_names, n_nodes) -> tuple[np.ndarray, tuple[str, ...]]:
    if regions is None:
        r = np.zeros(n_nodes, dtype=np.int32)
        names = tuple(region_names) if region_names is not None else ("all",)
        if len(names) != 1:
            raise ValueError("region_names given without regions; pass the per-node labels too")
        return r, names
    r = np.asarray(regions)
    if r.shape != (n_nodes,):
        raise ValueError(
            f"regions must have shape ({n_nodes},) (one label per node); got {r.shape}"
        )
    if not np.issubdtype(r.dtype, np.integer):
        raise ValueError(f"regions must be integer labels 0..n_regions-1; got dtype {r.dtype}")
    if r.min() < 0:
        raise ValueError(f"regions: labels must be >= 0; found {int(r.min())}")
    n_regions = int(r.max()) + 1
    if region_names is None:
        names = tuple(f"region_{k}" for k in range(n_regions))
    else:
        names = tuple(str(s) for s in region_names)
        if len(names) < n_regions:
            raise ValueError(
                f"regions: labels go up to {n_regions - 1} but only {len(names)} "
                "region_names were given"
            )
        if len(set(names)) != len(names):
            raise ValueError(f"region_names must be unique; got {names}")
    return r.astype(np.int32), names


def _normalise_sites(pacing_sites, n_nodes) -> tuple[tuple[str, tuple[int, ...]], ...]:
    if pacing_sites is None:
        return ()
    items = pacing_sites.items() if isinstance(pacing_sites, Mapping) else pacing_sites
    out = []
    for name, nodes in items:
        nodes = np.atleast_1d(np.asarray(nodes))
        if nodes.size == 0:
            raise ValueError(f"pacing site {name!r} has no nodes")
        if not np.issubdtype(nodes.dtype, np.integer):
            raise ValueError(f"pacing site {name!r}: node indices must be integers")
        bad = nodes[(nodes < 0) | (nodes >= n_nodes)]
        if bad.size:
            raise ValueError(
                f"pacing site {name!r}: node index {int(bad[0])} is off the mesh "
                f"(valid 0..{n_nodes - 1})"
            )
        out.append((str(name), tuple(int(i) for i in np.unique(nodes))))
    names = [n for n, _ in out]
    if len(set(names)) != len(names):
        raise ValueError(f"pacing site names must be unique; got {names}")
    return tuple(out)


# ----------------------------------------------------------------------------------
# the module
# ----------------------------------------------------------------------------------
class Geometry(eqx.Module):
    """Nodes, weighted edges and lumped masses of a tissue; see the module docstring.

    Arrays are pytree leaves (so a geometry can be passed through ``jit``); the
    kind, region names, pacing sites and name are static metadata.
    """

    vertices: Float[Array, "node 3"]
    edges: Int[Array, "edge 2"]
    edge_weights: Float[Array, " edge"]
    mass: Float[Array, " node"]
    regions: Int[Array, " node"]
    faces: Int[Array, "face 3"] | None = None
    kind: str = eqx.field(static=True, default="graph")
    n_regions: int = eqx.field(static=True, default=1)
    region_names: tuple[str, ...] = eqx.field(static=True, default=("all",))
    pacing_sites: tuple[tuple[str, tuple[int, ...]], ...] = eqx.field(static=True, default=())
    name: str = eqx.field(static=True, default="geometry")

    def __check_init__(self):
        if self.kind not in _KINDS:
            raise ValueError(f"Geometry.kind must be one of {_KINDS}; got {self.kind!r}")
        if len(self.region_names) != self.n_regions:
            raise ValueError(
                f"Geometry: n_regions={self.n_regions} but {len(self.region_names)} region_names"
            )

    # -- basic properties -------------------------------------------------------
    @property
    def n_nodes(self) -> int:
        return int(self.vertices.shape[0])

    @property
    def n_edges(self) -> int:
        return int(self.edges.shape[0])

    @property
    def pacing_site_names(self) -> tuple[str, ...]:
        return tuple(n for n, _ in self.pacing_sites)

    @property
    def n_components(self) -> int:
        """Connected components of the edge graph (1 for a single cell): a wave paced in
        one component never reaches another."""
        n = self.n_nodes
        if n == 1 or self.n_edges == 0:
            return n
        import scipy.sparse
        import scipy.sparse.csgraph

        e = np.asarray(self.edges)
        a = scipy.sparse.coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(n, n))
        return int(scipy.sparse.csgraph.connected_components(a, directed=False)[0])

    # -- the operator --------------------------------------------------------------
    def laplacian(self, u: Float[Array, "*batch node"]) -> Float[Array, "*batch node"]:
        """``(L u)_i = (1/m_i) sum_j w_ij (u_j - u_i)`` along the last axis (1/cm^2 * u).

        A segment sum over the edge list (no dense matrix); leading axes are batch.
        """
        i, j = self.edges[:, 0], self.edges[:, 1]
        flux = (u[..., j] - u[..., i]) * self.edge_weights  # (*batch, edge)
        flux = jnp.moveaxis(flux, -1, 0)  # (edge, *batch)
        acc = jax.ops.segment_sum(
            jnp.concatenate([flux, -flux], axis=0),
            jnp.concatenate([i, j]),
            num_segments=self.n_nodes,
        )
        return jnp.moveaxis(acc, 0, -1) / self.mass

    def stiffness_action(self, u: Float[Array, "*batch node"]) -> Float[Array, "*batch node"]:
        """``C u`` without the mass: ``sum_j w_ij (u_j - u_i)`` (conserves the plain sum)."""
        return self.laplacian(u) * self.mass

    def dense_laplacian(self) -> Float[Array, "node node"]:
        """The dense ``(node, node)`` matrix ``L = M^{-1} C`` (for tests and small problems)."""
        n = self.n_nodes
        i, j, w = self.edges[:, 0], self.edges[:, 1], self.edge_weights
        c = jnp.zeros((n, n), dtype=w.dtype).at[i, j].add(w).at[j, i].add(w)
        c = c - jnp.diag(c.sum(axis=1))
        return c / self.mass[:, None]

    def dirichlet_energy(self, u: Float[Array, "*batch node"]) -> Float[Array, "*batch"]:
        """``E(u) = 1/2 sum_edges w_ij (u_j - u_i)^2``; non-increasing under ``du/dt = L u``."""
        d = u[..., self.edges[:, 1]] - u[..., self.edges[:, 0]]
        return 0.5 * jnp.sum(self.edge_weights * d * d, axis=-1)

    def total_charge(self, u: Float[Array, "*batch node"]) -> Float[Array, "*batch"]:
        """``sum_i m_i u_i``, conserved by pure diffusion."""
        return jnp.sum(self.mass * u, axis=-1)

    def max_stable_dt(self, conductivity: float = 1.0) -> float:
        """Largest forward-Euler step for ``du/dt = D L u`` (Gershgorin bound, ms)."""
        deg = np.zeros(self.n_nodes)
        e = np.asarray(self.edges)
        w = np.asarray(self.edge_weights)
        np.add.at(deg, e[:, 0], w)
        np.add.at(deg, e[:, 1], w)
        rate = float(np.max(2.0 * deg / np.asarray(self.mass)))
        return float("inf") if rate == 0 else 2.0 / (conductivity * rate)

    # -- metadata -----------------------------------------------------------------
    def edge_lengths(self) -> Float[Array, " edge"]:
        d = self.vertices[self.edges[:, 1]] - self.vertices[self.edges[:, 0]]
        return jnp.linalg.norm(d, axis=-1)

    def total_mass(self) -> float:
        """Sum of the lumped masses (cable length, sheet / surface area)."""
        return float(jnp.sum(self.mass))

    def triangle_angles(self) -> np.ndarray:
        """Interior angles (degrees) of each face, ``(face, 3)``; raises if there are no faces."""
        if self.faces is None:
            raise ValueError(f"geometry {self.name!r} ({self.kind}) has no faces")
        return triangle_angles(np.asarray(self.vertices), np.asarray(self.faces))

    def pacing_site(self, site: str | int | Sequence[int]) -> tuple[int, ...]:
        """Node indices of a pacing site: a name from ``pacing_sites``, one node index,
        or a sequence of node indices. Unknown names / off-mesh indices raise ValueError."""
        n = self.n_nodes
        if isinstance(site, str):
            for name, nodes in self.pacing_sites:
                if name == site:
                    return nodes
            raise ValueError(
                f"unknown pacing site {site!r} on geometry {self.name!r}; "
                f"valid names are {list(self.pacing_site_names)} (or node indices 0..{n - 1})"
            )
        arr = np.atleast_1d(np.asarray(site))
        if arr.size == 0 or not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(
                f"pacing site must be a name {list(self.pacing_site_names)} or integer node "
                f"index/indices; got {site!r}"
            )
        bad = arr[(arr < 0) | (arr >= n)]
        if bad.size:
            raise ValueError(
                f"pacing site node index {int(bad[0])} is off the mesh {self.name!r} "
                f"(valid 0..{n - 1})"
            )
        return tuple(int(i) for i in np.unique(arr))

    def region_index(self, name: str) -> int:
        try:
            return self.region_names.index(name)
        except ValueError:
            raise ValueError(
                f"unknown region {name!r} on geometry {self.name!r}; "
                f"valid: {list(self.region_names)}"
            ) from None

    def nearest_node(self, point) -> int:
        p = np.asarray(point, dtype=np.float64).reshape(-1)
        p = np.concatenate([p, np.zeros(3 - p.size)]) if p.size < 3 else p
        return int(np.argmin(np.linalg.norm(np.asarray(self.vertices) - p, axis=1)))

    def nodes_within(self, center_node: int, radius: float) -> tuple[int, ...]:
        v = np.asarray(self.vertices)
        d = np.linalg.norm(v - v[center_node], axis=1)
        return tuple(int(i) for i in np.where(d <= radius)[0])

    def with_regions(self, regions, region_names=None) -> "Geometry":
        r, names = _normalise_regions(regions, region_names, self.n_nodes)
        return Geometry(
            self.vertices,
            self.edges,
            self.edge_weights,
            self.mass,
            jnp.asarray(r),
            self.faces,
            kind=self.kind,
            n_regions=len(names),
            region_names=names,
            pacing_sites=self.pacing_sites,
            name=self.name,
        )

    def with_pacing_sites(self, sites, *, replace: bool = False) -> "Geometry":
        """Add (or with ``replace=True`` replace) named pacing sites ``{name: nodes}``."""
        new = _normalise_sites(sites, self.n_nodes)
        keep = (
            ()
            if replace
            else tuple(s for s in self.pacing_sites if s[0] not in {n for n, _ in new})
        )
        return Geometry(
            self.vertices,
            self.edges,
            self.edge_weights,
            self.mass,
            self.regions,
            self.faces,
            kind=self.kind,
            n_regions=self.n_regions,
            region_names=self.region_names,
            pacing_sites=keep + new,
            name=self.name,
        )

    # -- serialisation (numpy) ------------------------------------------------------
    def to_arrays(self) -> dict[str, Any]:
        """Plain numpy arrays + JSON-able metadata; inverse of :meth:`from_arrays`."""
        out = {
            "vertices": np.asarray(self.vertices, dtype=np.float64),
            "edges": np.asarray(self.edges, dtype=np.int64),
            "edge_weights": np.asarray(self.edge_weights, dtype=np.float64),
            "mass": np.asarray(self.mass, dtype=np.float64),
            "regions": np.asarray(self.regions, dtype=np.int64),
            "faces": None if self.faces is None else np.asarray(self.faces, dtype=np.int64),
            "kind": self.kind,
            "region_names": list(self.region_names),
            "pacing_sites": {n: list(nodes) for n, nodes in self.pacing_sites},
            "name": self.name,
        }
        return out

    @classmethod
    def from_arrays(
        cls,
        vertices,
        edges,
        edge_weights,
        mass,
        regions,
        faces=None,
        *,
        kind="graph",
        region_names=None,
        pacing_sites=None,
        name="geometry",
    ) -> "Geometry":
        """Rebuild a geometry from stored arrays (validated; weights taken as given)."""
        if kind == "single-cell":
            if np.asarray(vertices).shape[:1] != (1,) or np.asarray(edges).size != 0:
                raise ValueError("a single-cell geometry has 1 node and no edges; got "
                                 f"vertices {np.asarray(vertices).shape}, edges "
                                 f"{np.asarray(edges).shape}")
            return cls.single_cell(name=name)
        v = _check_vertices(vertices)
        n = v.shape[0]
        e = _check_index_array(edges, n, 2, "edges")
        w = np.asarray(edge_weights, dtype=np.float64)
        m = np.asarray(mass, dtype=np.float64)
        if w.shape != (e.shape[0],) or not np.all(np.isfinite(w)):
            raise ValueError(
                f"edge_weights must be finite with shape ({e.shape[0]},); got {w.shape}"
            )
        if m.shape != (n,) or not np.all(np.isfinite(m)) or np.any(m <= 0):
            raise ValueError(f"mass must be positive and finite with shape ({n},)")
        f = None if faces is None else _check_index_array(faces, n, 3, "faces")
        r, names = _normalise_regions(regions, region_names, n)
        return cls._build(v, e, w, m, r, names, f, kind, pacing_sites, name)

    @staticmethod
    def _build(v, e, w, m, r, region_names, faces, kind, pacing_sites, name) -> "Geometry":
        return Geometry(
            vertices=jnp.asarray(v, dtype=float),
            edges=jnp.asarray(e, dtype=jnp.int32),
            edge_weights=jnp.asarray(w, dtype=float),
            mass=jnp.asarray(m, dtype=float),
            regions=jnp.asarray(r, dtype=jnp.int32),
            faces=None if faces is None else jnp.asarray(faces, dtype=jnp.int32),
            kind=kind,
            n_regions=len(region_names),
            region_names=tuple(region_names),
            pacing_sites=_normalise_sites(pacing_sites, v.shape[0]),
            name=name,
        )

    # -- constructors -------------------------------------------------------------------
    @classmethod
    def cable(
        cls,
        n_nodes: int = 64,
        dx: float = 0.025,
        *,
        n_regions: int = 2,
        site_width: int = 3,
        name: str | None = None,
    ) -> "Geometry":
        """1-D cable of ``n_nodes`` nodes spaced ``dx`` cm along x (no-flux ends).

        Regions: ``n_regions`` equal segments (names ``"proximal", "distal"`` for 2,
        ``"segment_k"`` otherwise). Pacing sites: ``"left"``, ``"right"``, ``"center"``
        (``site_width`` nodes each).
        """
        n_nodes = _as_int(n_nodes, "n_nodes", minimum=2)
        dx = _as_pos(dx, "dx")
        n_regions = _as_int(n_regions, "n_regions", minimum=1)
        site_width = _as_int(site_width, "site_width", minimum=1)
        if n_regions > n_nodes:
            raise ValueError(f"n_regions={n_regions} exceeds n_nodes={n_nodes}")
        x = np.arange(n_nodes) * dx
        v = np.stack([x, np.zeros_like(x), np.zeros_like(x)], axis=1)
        e = np.stack([np.arange(n_nodes - 1), np.arange(1, n_nodes)], axis=1)
        w = np.full(n_nodes - 1, 1.0 / dx)
        m = np.full(n_nodes, dx)
        m[0] = m[-1] = dx / 2
        r = np.minimum((np.arange(n_nodes) * n_regions) // n_nodes, n_regions - 1)
        names = (
            ("proximal", "distal")
            if n_regions == 2
            else tuple(f"segment_{k}" for k in range(n_regions))
        )
        sw = min(site_width, n_nodes)
        c0 = max(0, n_nodes // 2 - sw // 2)
        sites = {
            "left": range(sw),
            "right": range(n_nodes - sw, n_nodes),
            "center": range(c0, c0 + sw),
        }
        return cls._build(v, e, w, m, r, names, None, "cable", sites, name or f"cable{n_nodes}")

    @classmethod
    def single_cell(cls, *, name: str = "single-cell") -> "Geometry":
        """One isolated cell: a single node at the origin, no edges (so no diffusion),
        unit mass, one region ``"all"`` and one pacing site ``"cell"``. The geometry of
        a patch-clamp or single-myocyte recording."""
        return Geometry(
            vertices=jnp.zeros((1, 3), dtype=float),
            edges=jnp.zeros((0, 2), dtype=jnp.int32),
            edge_weights=jnp.zeros((0,), dtype=float),
            mass=jnp.ones((1,), dtype=float),
            regions=jnp.zeros((1,), dtype=jnp.int32),
            faces=None,
            kind="single-cell",
            n_regions=1,
            region_names=("all",),
            pacing_sites=(("cell", (0,)),),
            name=name,
        )

    @classmethod
    def sheet(
        cls,
        nx: int = 32,
        ny: int = 32,
        dx: float = 0.025,
        *,
        n_regions: int = 2,
        site_width: int = 3,
        name: str | None = None,
    ) -> "Geometry":
        """2-D sheet of ``nx * ny`` nodes on a square grid of spacing ``dx`` cm in the
        z = 0 plane; node ``iy * nx + ix`` at ``(ix dx, iy dx, 0)``; no-flux borders.

        Regions: ``n_regions`` vertical bands along x (``"left", "right"`` for 2).
        Pacing sites: ``"left"``/``"right"``/``"bottom"``/``"top"`` (a whole border
        column/row ``site_width`` wide: planar waves), ``"corner"`` and ``"center"``
        (``site_width x site_width`` patches).
        """
        nx = _as_int(nx, "nx", minimum=2)
        ny = _as_int(ny, "ny", minimum=2)
        dx = _as_pos(dx, "dx")
        n_regions = _as_int(n_regions, "n_regions", minimum=1)
        site_width = _as_int(site_width, "site_width", minimum=1)
        if n_regions > nx:
            raise ValueError(f"n_regions={n_regions} exceeds nx={nx}")
        ix, iy = np.meshgrid(np.arange(nx), np.arange(ny), indexing="xy")
        ix, iy = ix.ravel(), iy.ravel()
        node = lambda a, b: b * nx + a  # noqa: E731
        v = np.stack([ix * dx, iy * dx, np.zeros(ix.size)], axis=1)
        # horizontal edges
        hx, hy = np.meshgrid(np.arange(nx - 1), np.arange(ny), indexing="xy")
        he = np.stack([node(hx, hy), node(hx + 1, hy)], axis=-1).reshape(-1, 2)
        hw = np.where((hy == 0) | (hy == ny - 1), 0.5, 1.0).ravel()
        vx, vy = np.meshgrid(np.arange(nx), np.arange(ny - 1), indexing="xy")
        ve = np.stack([node(vx, vy), node(vx, vy + 1)], axis=-1).reshape(-1, 2)
        vw = np.where((vx == 0) | (vx == nx - 1), 0.5, 1.0).ravel()
        e = np.concatenate([he, ve])
        w = np.concatenate([hw, vw])
        order = np.lexsort((e[:, 1], e[:, 0]))
        e, w = e[order], w[order]
        fx = np.where((ix == 0) | (ix == nx - 1), 0.5, 1.0)
        fy = np.where((iy == 0) | (iy == ny - 1), 0.5, 1.0)
        m = dx * dx * fx * fy
        # faces (for plotting): two triangles per cell
        cx, cy = np.meshgrid(np.arange(nx - 1), np.arange(ny - 1), indexing="xy")
        a, b = node(cx, cy).ravel(), node(cx + 1, cy).ravel()
        c, d = node(cx + 1, cy + 1).ravel(), node(cx, cy + 1).ravel()
        faces = np.concatenate([np.stack([a, b, c], 1), np.stack([a, c, d], 1)])
        r = np.minimum((ix * n_regions) // nx, n_regions - 1)
        names = (
            ("left", "right") if n_regions == 2 else tuple(f"band_{k}" for k in range(n_regions))
        )
        sw = min(site_width, nx, ny)
        cx0, cy0 = max(0, nx // 2 - sw // 2), max(0, ny // 2 - sw // 2)
        sites = {
            "left": np.where(ix < sw)[0],
            "right": np.where(ix >= nx - sw)[0],
            "bottom": np.where(iy < sw)[0],
            "top": np.where(iy >= ny - sw)[0],
            "corner": np.where((ix < sw) & (iy < sw))[0],
            "center": np.where((ix >= cx0) & (ix < cx0 + sw) & (iy >= cy0) & (iy < cy0 + sw))[0],
        }
        return cls._build(v, e, w, m, r, names, faces, "sheet", sites, name or f"sheet{nx}x{ny}")

    @classmethod
    def from_mesh(
        cls,
        vertices,
        faces,
        *,
        regions=None,
        region_names=None,
        pacing_sites=None,
        name: str = "mesh",
        negative_weights: str = "clip",
        area_tol: float = 1e-12,
    ) -> "Geometry":
        """A user's triangle mesh: cotangent stiffness, barycentric lumped mass.

        Checks: finite coordinates, integer faces in range, no repeated index within a
        face, no zero-area face (relative ``area_tol``), no duplicate faces, no edge
        shared by more than two faces, no isolated node.

        ``negative_weights``: what to do with negative cotangent weights (from obtuse
        angle pairs) -- ``"clip"`` (default: set to 0 with a warning, keeping the
        maximum principle and a non-negative weight for neural diffusion), ``"keep"``
        (exact cotangent Laplacian, still negative semidefinite) or ``"error"``.
        """
        v = _check_vertices(vertices)
        n = v.shape[0]
        f = _check_index_array(faces, n, 3, "faces")
        rep = np.where((f[:, 0] == f[:, 1]) | (f[:, 1] == f[:, 2]) | (f[:, 0] == f[:, 2]))[0]
        if rep.size:
            raise ValueError(
                f"faces: {rep.size} degenerate face(s) repeat a node index, first face "
                f"{int(rep[0])} = {f[rep[0]].tolist()}"
            )
        area = _triangle_areas(v, f)
        scale = np.max(np.ptp(v, axis=0)) ** 2
        tiny = np.where(area <= area_tol * scale)[0]
        if tiny.size:
            raise ValueError(
                f"faces: {tiny.size} degenerate face(s) with zero area (collinear vertices), "
                f"first face {int(tiny[0])} = {f[tiny[0]].tolist()}"
            )
        sf = np.sort(f, axis=1)
        _, first, counts = np.unique(sf, axis=0, return_index=True, return_counts=True)
        if np.any(counts > 1):
            k = int(first[np.argmax(counts > 1)])
            raise ValueError(f"faces: duplicate face {f[k].tolist()} (face {k})")
        _check_isolated(n, f.ravel(), "faces")
        all_e = np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), axis=1)
        ue, ecount = np.unique(all_e, axis=0, return_counts=True)
        if np.any(ecount > 2):
            bad = ue[np.argmax(ecount > 2)]
            raise ValueError(
                f"faces: non-manifold edge {bad.tolist()} is shared by more than two faces"
            )
        e, w = cotangent_weights(v, f)
        if negative_weights not in ("clip", "keep", "error"):
            raise ValueError(
                f"negative_weights must be 'clip', 'keep' or 'error'; got {negative_weights!r}"
            )
        neg = w < 0
        if np.any(neg):
            msg = (
                f"mesh {name!r}: {int(neg.sum())} edge(s) have negative cotangent weights "
                f"(obtuse angle pairs), min {w.min():.3g}"
            )
            if negative_weights == "error":
                raise ValueError(msg)
            if negative_weights == "clip":
                warnings.warn(msg + "; clipped to 0", stacklevel=2)
                w = np.maximum(w, 0.0)
        m = lumped_mass(v, f)
        r, names = _normalise_regions(regions, region_names, n)
        return _warn_if_disconnected(cls._build(v, e, w, m, r, names, f, "mesh", pacing_sites,
                                                name))

    @classmethod
    def from_edges(
        cls,
        vertices,
        edges,
        weights=None,
        *,
        mass=None,
        regions=None,
        region_names=None,
        pacing_sites=None,
        name: str = "graph",
    ) -> "Geometry":
        """A user's graph. Defaults: ``w = 1/length^2``, ``m = 1`` (the standard finite
        difference Laplacian on regular grids of any dimension). Edges are made unique
        with i < j; self-loops, duplicates, negative/NaN weights and isolated nodes raise."""
        v = _check_vertices(vertices)
        n = v.shape[0]
        e = _check_index_array(edges, n, 2, "edges")
        loops = np.where(e[:, 0] == e[:, 1])[0]
        if loops.size:
            raise ValueError(
                f"edges: self-loop at node {int(e[loops[0], 0])} (edge {int(loops[0])})"
            )
        es = np.sort(e, axis=1)
        uniq, first, counts = np.unique(es, axis=0, return_index=True, return_counts=True)
        if np.any(counts > 1):
            raise ValueError(f"edges: duplicate edge {uniq[np.argmax(counts > 1)].tolist()}")
        _check_isolated(n, e.ravel(), "edges")
        length = np.linalg.norm(v[es[:, 1]] - v[es[:, 0]], axis=1)
        if weights is None:
            if np.any(length == 0):
                k = int(np.argmax(length == 0))
                raise ValueError(
                    f"edges: edge {es[k].tolist()} joins coincident vertices (zero length)"
                )
            w = 1.0 / length**2
        else:
            w = np.asarray(weights, dtype=np.float64)
            if w.shape != (e.shape[0],):
                raise ValueError(f"weights must have shape ({e.shape[0]},); got {w.shape}")
            if not np.all(np.isfinite(w)):
                raise ValueError("weights: non-finite (NaN/inf) edge weight")
            if np.any(w < 0):
                raise ValueError(
                    f"weights: negative edge weight at edge {int(np.argmax(w < 0))}; "
                    "L would not be dissipative"
                )
        if mass is None:
            m = np.ones(n)
        else:
            m = np.asarray(mass, dtype=np.float64)
            if m.shape != (n,) or not np.all(np.isfinite(m)) or np.any(m <= 0):
                raise ValueError(f"mass must be positive and finite with shape ({n},)")
        order = np.lexsort((es[:, 1], es[:, 0]))
        r, names = _normalise_regions(regions, region_names, n)
        return _warn_if_disconnected(cls._build(v, es[order], w[order], m, r, names, None,
                                                "graph", pacing_sites, name))

    @classmethod
    def ventricle(
        cls,
        n_nodes: int = 1862,
        *,
        radius: float = 2.5,
        length: float = 5.0,
        base: float = 0.3,
        patch_radius: float = 0.6,
        name: str | None = None,
    ) -> "Geometry":
        """Left-ventricle-like surface: the prolate spheroid
        ``(x^2 + y^2)/radius^2 + z^2/length^2 = 1`` (cm) from the apex ``(0, 0, -length)``
        up to the base plane ``z = base * length`` (open rim, no-flux).

        Built from rings of constant meridian spacing, zipped into triangles, then
        relaxed (tangential smoothing + Delaunay edge flips + removal of interior
        valence-4 / boundary valence-3 nodes + a local obtuse-angle repair). The result
        has **no obtuse triangle** (checked; a ValueError is raised otherwise) and
        about ``n_nodes`` nodes (within ~2%). Deterministic.

        Regions: ``apex`` (lowest third of the long axis), ``mid_septal``,
        ``mid_lateral``, ``base_septal``, ``base_lateral`` (septum: x < 0).
        Pacing sites (patches of radius ``patch_radius`` cm): ``apex``, ``septum``,
        ``lateral``, ``anterior`` (y > 0), ``posterior``, ``base_lateral``, ``base_septal``.
        """
        n_nodes = _as_int(n_nodes, "n_nodes", minimum=100)
        if n_nodes > 20000:
            raise ValueError(
                f"n_nodes={n_nodes} is too large for the ventricle generator (<= 20000)"
            )
        radius, length = _as_pos(radius, "radius"), _as_pos(length, "length")
        if not (-0.8 <= base <= 0.8):
            raise ValueError(f"base must lie in [-0.8, 0.8] (fraction of length); got {base}")
        v, f = _ventricle_mesh(n_nodes, float(radius), float(length), float(base))
        geo = cls.from_mesh(v, f, name=name or f"ventricle{v.shape[0]}", negative_weights="error")
        z = v[:, 2]
        zn = (z + length) / (length * (1 + base))  # 0 at apex, 1 at the base
        band = np.where(zn < 1 / 3, 0, np.where(zn < 2 / 3, 1, 2))
        septal = v[:, 0] < 0
        r = np.where(
            band == 0, 0, np.where(band == 1, np.where(septal, 1, 2), np.where(septal, 3, 4))
        )
        names = ("apex", "mid_septal", "mid_lateral", "base_septal", "base_lateral")

        def surface_point(zfrac, phi):
            zz = -length + zfrac * length * (1 + base)
            rr = radius * np.sqrt(max(0.0, 1 - (zz / length) ** 2))
            return np.array([rr * np.cos(phi), rr * np.sin(phi), zz])

        tmp = Geometry._build(
            v,
            np.asarray(geo.edges),
            np.asarray(geo.edge_weights),
            np.asarray(geo.mass),
            r,
            names,
            f,
            "mesh",
            None,
            geo.name,
        )
        centres = {
            "apex": np.array([0.0, 0.0, -length]),
            "septum": surface_point(0.5, np.pi),
            "lateral": surface_point(0.5, 0.0),
            "anterior": surface_point(0.5, np.pi / 2),
            "posterior": surface_point(0.5, -np.pi / 2),
            "base_lateral": surface_point(0.85, 0.0),
            "base_septal": surface_point(0.85, np.pi),
        }
        sites = {k: tmp.nodes_within(tmp.nearest_node(c), patch_radius) for k, c in centres.items()}
        return tmp.with_pacing_sites(sites, replace=True)


# ----------------------------------------------------------------------------------
# argument checks
# ----------------------------------------------------------------------------------
def _as_int(x, what, minimum=None) -> int:
    if isinstance(x, bool) or not float(x).is_integer():
        raise ValueError(f"{what} must be an integer; got {x!r}")
    x = int(x)
    if minimum is not None and x < minimum:
        raise ValueError(f"{what} must be >= {minimum}; got {x}")
    return x


def _as_pos(x, what) -> float:
    x = float(x)
    if not np.isfinite(x) or x <= 0:
        raise ValueError(f"{what} must be a positive finite number; got {x}")
    return x


# ----------------------------------------------------------------------------------
# the ventricle mesh generator
# ----------------------------------------------------------------------------------
def _spheroid_scale(p, a, c):
    return np.sqrt((p[:, 0] ** 2 + p[:, 1] ** 2) / a**2 + p[:, 2] ** 2 / c**2)


def _spheroid_normals(p, a, c):
    nrm = np.stack([p[:, 0] / a**2, p[:, 1] / a**2, p[:, 2] / c**2], axis=1)
    return nrm / np.linalg.norm(nrm, axis=1, keepdims=True)


def _project(q, rim, a, c, zb):
    q = q / _spheroid_scale(q, a, c)[:, None]
    rr = a * np.sqrt(1 - zb**2)
    ph = np.arctan2(q[rim, 1], q[rim, 0])
    q[rim] = np.stack([rr * np.cos(ph), rr * np.sin(ph), np.full(ph.size, zb * c)], axis=1)
    return q


def _rings(n_target, a, c, zb):
    tb = np.arccos(-zb)
    tt = np.linspace(0, tb, 4001)
    r, z = a * np.sin(tt), -c * np.cos(tt)
    ds = np.hypot(np.diff(r), np.diff(z))
    s = np.concatenate([[0], np.cumsum(ds)])
    total = s[-1]
    area = np.sum(2 * np.pi * 0.5 * (r[1:] + r[:-1]) * ds)
    h = np.sqrt(area / (np.sqrt(3) / 2 * n_target))
    best = None
    for _ in range(40):
        nr = max(2, int(round(total / (h * np.sqrt(3) / 2))))
        sk = np.linspace(0, total, nr + 1)
        rk, zk = np.interp(sk, s, r), np.interp(sk, s, z)
        pts, rings, phs, start = [np.array([[0.0, 0.0, -c]])], [], [], 1
        for k in range(1, nr + 1):
            m = max(6, int(round(2 * np.pi * rk[k] / h)))
            off = 0.0 if k == 1 else phs[-1][0] + np.pi / len(phs[-1])
            ph = (off + 2 * np.pi * np.arange(m) / m) % (2 * np.pi)
            phs.append(ph)
            pts.append(np.stack([rk[k] * np.cos(ph), rk[k] * np.sin(ph), np.full(m, zk[k])], 1))
            rings.append(np.arange(start, start + m))
            start += m
        p = np.concatenate(pts)
        if best is None or abs(len(p) - n_target) < abs(len(best[0]) - n_target):
            best = (p, rings, phs)
        if abs(len(p) - n_target) <= max(2, 0.005 * n_target):
            break
        h *= np.sqrt(len(p) / n_target)
    p, rings, phs = best
    faces = [(0, rings[0][i], rings[0][(i + 1) % len(rings[0])]) for i in range(len(rings[0]))]
    for k in range(len(rings) - 1):
        ra, rb, pa, pb = rings[k], rings[k + 1], phs[k], phs[k + 1]
        ua, ub = (pa - pa[0]) % (2 * np.pi), (pb - pa[0]) % (2 * np.pi)
        oa, ob = np.argsort(ua), np.argsort(ub)
        ra, ua, rb, ub = ra[oa], ua[oa], rb[ob], ub[ob]
        ma, mb = len(ra), len(rb)
        ua, ub = np.append(ua, 2 * np.pi), np.append(ub, ub[0] + 2 * np.pi)
        i = j = 0
        while i < ma or j < mb:
            if j >= mb or (i < ma and ua[i + 1] < ub[j + 1]):
                faces.append((ra[i], ra[(i + 1) % ma], rb[j % mb]))
                i += 1
            else:
                faces.append((ra[i % ma], rb[(j + 1) % mb], rb[j % mb]))
                j += 1
    rim = np.zeros(len(p), bool)
    rim[rings[-1]] = True
    return p, np.asarray(faces, dtype=np.int64), rim


def _angle(p, o, a, b):
    u, v = p[a] - p[o], p[b] - p[o]
    return np.arccos(np.clip(u @ v / (np.linalg.norm(u) * np.linalg.norm(v)), -1, 1))


def _flip_pass(p, f):
    """One pass of Delaunay edge flips (opposite angles summing to more than pi)."""
    f = f.copy()
    d: dict = {}
    for fi, (i, j, k) in enumerate(f):
        for e in ((i, j), (j, k), (k, i)):
            d.setdefault((min(e), max(e)), []).append(fi)
    for (i, j), fs in list(d.items()):
        if len(fs) != 2 or (i, j) not in d:
            continue
        f1, f2 = fs
        t1, t2 = list(f[f1]), list(f[f2])
        if not ({i, j} <= set(t1) and {i, j} <= set(t2)):
            continue
        k = [x for x in t1 if x not in (i, j)][0]
        l_ = [x for x in t2 if x not in (i, j)][0]
        if _angle(p, k, i, j) + _angle(p, l_, i, j) <= np.pi + 1e-9:
            continue
        if (min(k, l_), max(k, l_)) in d:
            continue
        ii = t1.index(i)
        a_, b_ = (i, j) if t1[(ii + 1) % 3] == j else (j, i)
        f[f1] = (a_, l_, k)
        f[f2] = (l_, b_, k)
        del d[(i, j)]
        d[(min(k, l_), max(k, l_))] = [f1, f2]
        for (x, y), fo, fn in (((a_, l_), f2, f1), ((b_, k), f1, f2)):
            lst = d[(min(x, y), max(x, y))]
            lst[lst.index(fo)] = fn
    return f


def _smooth(p, f, rim, a, c, zb, iters):
    for it in range(iters):
        if it % 5 == 0:
            f = _flip_pass(p, f)
        e = _unique_edges_of_faces(f)
        acc, cnt = np.zeros_like(p), np.zeros(len(p))
        np.add.at(acc, e[:, 0], p[e[:, 1]])
        np.add.at(acc, e[:, 1], p[e[:, 0]])
        np.add.at(cnt, e[:, 0], 1)
        np.add.at(cnt, e[:, 1], 1)
        nrm = _spheroid_normals(p, a, c)
        dd = acc / cnt[:, None] - p
        dd -= np.sum(dd * nrm, axis=1, keepdims=True) * nrm
        p = _project(p + 0.5 * dd, rim, a, c, zb)
    return p, _flip_pass(p, f)


def _remove_low_valence(p, f, rim):
    """Remove interior nodes of valence <= 4 and rim nodes of valence <= 3 (they
    force an angle >= 90 degrees), re-triangulating their link."""
    while True:
        n = len(p)
        val = np.zeros(n, int)
        e = _unique_edges_of_faces(f)
        np.add.at(val, e[:, 0], 1)
        np.add.at(val, e[:, 1], 1)
        cand = np.where((~rim & (val <= 4)) | (rim & (val <= 3)))[0]
        if cand.size == 0:
            return p, f, rim
        v = int(cand[0])
        nxt = {}
        for face in f[np.any(f == v, axis=1)]:
            face = list(face)
            i = face.index(v)
            nxt[face[(i + 1) % 3]] = face[(i + 2) % 3]
        if not rim[v]:
            start = next(iter(nxt))
            poly = [start]
            while nxt[poly[-1]] != start:
                poly.append(nxt[poly[-1]])
            if len(poly) == 4:
                if np.linalg.norm(p[poly[0]] - p[poly[2]]) < np.linalg.norm(
                    p[poly[1]] - p[poly[3]]
                ):
                    new = [(poly[0], poly[1], poly[2]), (poly[0], poly[2], poly[3])]
                else:
                    new = [(poly[1], poly[2], poly[3]), (poly[1], poly[3], poly[0])]
            else:
                new = [tuple(poly)]
        else:
            preds = set(nxt.values())
            poly = [[x for x in nxt if x not in preds][0]]
            while poly[-1] in nxt:
                poly.append(nxt[poly[-1]])
            new = [tuple(poly)] if len(poly) == 3 else []
        keep = ~np.any(f == v, axis=1)
        f = np.concatenate([f[keep], np.asarray(new, dtype=f.dtype).reshape(-1, 3)])
        f = np.where(f > v, f - 1, f)
        p, rim = np.delete(p, v, 0), np.delete(rim, v)


def _repair_obtuse(p, f, rim, a, c, zb, target=89.0, max_iter=300):
    fixed = np.zeros(len(p), bool)
    fixed[0] = True  # keep the apex node on the apex
    for _ in range(max_iter):
        ang = triangle_angles(p, f)
        bad = np.argwhere(ang > target)
        if bad.size == 0:
            return p
        mv = np.zeros_like(p)
        for fi, corner in bad:
            v, o1, o2 = f[fi, corner], f[fi, (corner + 1) % 3], f[fi, (corner + 2) % 3]
            mid = 0.5 * (p[o1] + p[o2])
            half = 0.5 * np.linalg.norm(p[o1] - p[o2])
            d = p[v] - mid
            dist = np.linalg.norm(d)
            need = max(half * 1.02 / np.tan(np.radians(target) / 2) - dist, 0.0)
            mv[v] += 0.5 * need * d / dist
            t = (p[o2] - p[o1]) / (2 * half)
            mv[o1] += 0.1 * need * t
            mv[o2] -= 0.1 * need * t
        nrm = _spheroid_normals(p, a, c)
        mv -= np.sum(mv * nrm, axis=1, keepdims=True) * nrm
        mv[fixed] = 0.0
        p = _project(p + mv, rim, a, c, zb)
    return p


@functools.lru_cache(maxsize=8)
def _ventricle_mesh_cached(n_target, a, c, zb):
    p, f, rim = _rings(n_target, a, c, zb)
    p, f = _smooth(p, f, rim, a, c, zb, 20)
    n0 = len(p)
    p, f, rim = _remove_low_valence(p, f, rim)
    if len(p) != n0:
        p, f = _smooth(p, f, rim, a, c, zb, 10)
    p = _repair_obtuse(p, f, rim, a, c, zb)
    ang = triangle_angles(p, f)
    if ang.max() >= 90.0:
        raise ValueError(
            f"ventricle: could not build a mesh without obtuse triangles for n_nodes={n_target}, "
            f"radius={a}, length={c}, base={zb} (max angle {ang.max():.2f} deg); "
            "try a slightly different n_nodes"
        )
    # orient faces outward (normal along the spheroid normal)
    cen = p[f].mean(axis=1)
    nrm = np.cross(p[f[:, 1]] - p[f[:, 0]], p[f[:, 2]] - p[f[:, 0]])
    flip = np.sum(nrm * _spheroid_normals(cen, a, c), axis=1) < 0
    f[flip] = f[flip][:, ::-1]
    p.setflags(write=False)
    f.setflags(write=False)
    return p, f


def _ventricle_mesh(n_target, a, c, zb):
    p, f = _ventricle_mesh_cached(n_target, a, c, zb)
    return p.copy(), f.copy()


# module-level aliases -------------------------------------------------------------
cable = Geometry.cable
sheet = Geometry.sheet
ventricle = Geometry.ventricle
from_mesh = Geometry.from_mesh
from_edges = Geometry.from_edges
