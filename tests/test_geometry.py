"""Geometries and their Laplacians: sign, dissipation, consistency with analytic values."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as sla
from scipy.integrate import quad

from leads_jax.geometry import Geometry, cable, from_edges, from_mesh, sheet, ventricle


@pytest.fixture(scope="module")
def heart():
    return ventricle()


def _icosphere(level: int):
    t = (1 + 5**0.5) / 2
    v = [
        (-1, t, 0),
        (1, t, 0),
        (-1, -t, 0),
        (1, -t, 0),
        (0, -1, t),
        (0, 1, t),
        (0, -1, -t),
        (0, 1, -t),
        (t, 0, -1),
        (t, 0, 1),
        (-t, 0, -1),
        (-t, 0, 1),
    ]
    f = [
        (0, 11, 5),
        (0, 5, 1),
        (0, 1, 7),
        (0, 7, 10),
        (0, 10, 11),
        (1, 5, 9),
        (5, 11, 4),
        (11, 10, 2),
        (10, 7, 6),
        (7, 1, 8),
        (3, 9, 4),
        (3, 4, 2),
        (3, 2, 6),
        (3, 6, 8),
        (3, 8, 9),
        (4, 9, 5),
        (2, 4, 11),
        (6, 2, 10),
        (8, 6, 7),
        (9, 8, 1),
    ]
    v = [np.array(p, float) / np.linalg.norm(p) for p in v]
    for _ in range(level):
        cache, nf = {}, []

        def mid(i, j, cache=cache):
            key = (min(i, j), max(i, j))
            if key not in cache:
                m = v[i] + v[j]
                v.append(m / np.linalg.norm(m))
                cache[key] = len(v) - 1
            return cache[key]

        for a, b, c in f:
            ab, bc, ca = mid(a, b), mid(b, c), mid(c, a)
            nf += [(a, ab, ca), (b, bc, ab), (c, ca, bc), (ab, bc, ca)]
        f = nf
    return np.array(v), np.array(f)


def _sym_eigs(geo):
    """Eigenvalues of M^1/2 L M^-1/2 (symmetric, same spectrum as L), from the edge list."""
    e = np.asarray(geo.edges)
    w = np.asarray(geo.edge_weights, dtype=np.float64)
    m = np.asarray(geo.mass, dtype=np.float64)
    n = geo.n_nodes
    C = sp.coo_matrix(
        (np.r_[w, w], (np.r_[e[:, 0], e[:, 1]], np.r_[e[:, 1], e[:, 0]])), shape=(n, n)
    ).tocsr()
    C = C - sp.diags(np.asarray(C.sum(axis=1)).ravel())
    S = sp.diags(m**-0.5) @ C @ sp.diags(m**-0.5)
    if n <= 400:
        ev = np.linalg.eigvalsh(S.toarray())
    else:
        ev = np.concatenate(
            [
                sla.eigsh(S, k=2, which="LA", return_eigenvectors=False),
                sla.eigsh(S, k=1, which="SA", return_eigenvectors=False),
            ]
        )
    return np.sort(ev), np.abs(ev).max(), sp.diags(1 / m) @ C


@pytest.mark.parametrize("kind", ["cable", "sheet", "mesh"])
def test_laplacian_nsd_dissipative_conservative(kind, heart):
    geo = {"cable": cable(48, 0.05), "sheet": sheet(12, 9, 0.1), "mesh": heart}[kind]
    ev, scale, L = _sym_eigs(geo)
    assert ev.max() <= 1e-6 * scale  # negative semidefinite
    assert ev[-2] < -1e-6 * scale  # one zero mode only: constants (connected)
    assert np.all(np.asarray(geo.edge_weights) >= 0)
    # matrix-free operator equals the assembled matrix, batched
    u = jax.random.normal(jax.random.PRNGKey(0), (3, geo.n_nodes))
    lu = geo.laplacian(u)
    assert lu.shape == u.shape
    np.testing.assert_allclose(lu, (L @ np.asarray(u, np.float64).T).T, atol=1e-4 * scale)
    if geo.n_nodes <= 400:
        np.testing.assert_allclose(geo.dense_laplacian(), L.toarray(), atol=1e-5 * scale)
    # pure diffusion, forward Euler at 0.9 x the stable step: energy never increases,
    # charge (mass-weighted sum) is conserved
    dt = 0.9 * geo.max_stable_dt(1.0)

    def step(x, _):
        x = x + dt * geo.laplacian(x)
        return x, (geo.dirichlet_energy(x), geo.total_charge(x))

    _, (energy, charge) = jax.lax.scan(step, u[0], None, length=200)
    energy = np.asarray(energy)
    assert np.all(np.diff(energy) <= 1e-6 * energy[0])
    assert energy[-1] < energy[0]
    np.testing.assert_allclose(charge, geo.total_charge(u[0]), rtol=1e-4, atol=1e-3)


def test_cable_matches_analytic_neumann_spectrum_and_second_derivative():
    n, dx = 40, 0.1
    geo = cable(n, dx)
    ev, _, _ = _sym_eigs(geo)
    k = np.arange(n)
    exact = -(4 / dx**2) * np.sin(k * np.pi / (2 * (n - 1))) ** 2  # DCT-I (Neumann) spectrum
    np.testing.assert_allclose(np.sort(ev), np.sort(exact), rtol=1e-4, atol=1e-3)
    x = np.asarray(geo.vertices[:, 0])
    lu = np.asarray(geo.laplacian(jnp.asarray(x**2)))
    np.testing.assert_allclose(lu[1:-1], 2.0, rtol=1e-3)
    assert geo.total_mass() == pytest.approx((n - 1) * dx, rel=1e-5)


def test_sheet_second_derivative_and_area():
    geo = sheet(10, 7, dx=0.2)
    x, y = np.asarray(geo.vertices[:, 0]), np.asarray(geo.vertices[:, 1])
    lu = np.asarray(geo.laplacian(jnp.asarray(x**2 + 3 * y**2))).reshape(7, 10)
    np.testing.assert_allclose(lu[1:-1, 1:-1], 8.0, rtol=1e-3)
    assert geo.total_mass() == pytest.approx(9 * 0.2 * 6 * 0.2, rel=1e-5)


def test_cotangent_laplacian_on_sphere_matches_laplace_beltrami():
    v, f = _icosphere(4)  # 2562 nodes, unit sphere
    geo = from_mesh(v, f, negative_weights="keep")
    # area -> 4 pi
    assert geo.total_mass() == pytest.approx(4 * np.pi, rel=0.01)
    # spherical harmonics of degree 1 and 2: Delta_S Y_l = -l (l + 1) Y_l
    for fn, lam in [(v[:, 2], -2.0), (v[:, 0] * v[:, 1], -6.0)]:
        lu = np.asarray(geo.laplacian(jnp.asarray(fn)))
        err = np.linalg.norm(lu - lam * fn) / np.linalg.norm(lam * fn)
        assert err < 0.03


def test_ventricle_mesh_quality_and_area(heart):
    assert 1000 <= heart.n_nodes <= 2000
    ang = heart.triangle_angles()
    assert ang.max() < 90.0, "the ventricle mesh must have no obtuse triangle"
    assert ang.min() > 20.0
    np.testing.assert_allclose(ang.sum(axis=1), 180.0, atol=1e-3)
    faces = np.asarray(heart.faces)
    edges = np.asarray(heart.edges)
    assert heart.n_nodes - len(edges) + len(faces) == 1  # a disc (cup open at the base)
    # surface area of the truncated spheroid, integrated independently
    a, c, zb = 2.5, 5.0, 0.3
    integrand = lambda t: 2 * np.pi * a * np.sin(t) * np.hypot(a * np.cos(t), c * np.sin(t))  # noqa: E731
    area, _ = quad(integrand, 0, np.arccos(-zb))
    assert heart.total_mass() == pytest.approx(area, rel=0.02)
    # metadata
    assert heart.kind == "mesh" and heart.n_regions == 5
    assert set(np.unique(np.asarray(heart.regions))) == set(range(5))
    for name in ("apex", "septum", "lateral", "base_lateral"):
        assert len(heart.pacing_site(name)) >= 3
    apex = np.asarray(heart.vertices)[list(heart.pacing_site("apex"))]
    assert np.all(apex[:, 2] < -4.0)


def test_geometry_is_a_pytree_through_jit():
    geo = cable(16, 0.1)
    out = jax.jit(lambda g, u: g.laplacian(u))(geo, jnp.ones((2, 16)))
    np.testing.assert_allclose(out, 0.0, atol=1e-5)
    vm = jax.vmap(geo.laplacian)(jnp.ones((4, 16)))
    assert vm.shape == (4, 16)


def test_round_trip_arrays():
    geo = sheet(5, 4, 0.1)
    arr = geo.to_arrays()
    back = Geometry.from_arrays(
        arr["vertices"],
        arr["edges"],
        arr["edge_weights"],
        arr["mass"],
        arr["regions"],
        arr["faces"],
        kind=arr["kind"],
        region_names=arr["region_names"],
        pacing_sites=arr["pacing_sites"],
        name=arr["name"],
    )
    for k in ("vertices", "edges", "edge_weights", "mass", "regions", "faces"):
        np.testing.assert_array_equal(np.asarray(getattr(back, k)), np.asarray(getattr(geo, k)))
    assert back.pacing_sites == geo.pacing_sites and back.region_names == geo.region_names


def test_from_edges_grid_and_user_regions():
    # a 1-D chain as an edge list: default weights 1/len^2, mass 1
    x = np.linspace(0, 1, 11)
    v = np.stack([x, 0 * x, 0 * x], 1)
    e = np.stack([np.arange(10), np.arange(1, 11)], 1)
    geo = from_edges(
        v,
        e[::-1],
        regions=(x > 0.5).astype(int),
        region_names=["a", "b"],
        pacing_sites={"end": [10]},
    )
    assert np.all(np.asarray(geo.edges)[:, 0] < np.asarray(geo.edges)[:, 1])
    lu = np.asarray(geo.laplacian(jnp.asarray(x**2)))
    np.testing.assert_allclose(lu[1:-1], 2.0, rtol=1e-3)
    assert geo.pacing_site("end") == (10,) and geo.region_names == ("a", "b")


# -- bad input -------------------------------------------------------------------
_V = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0]], float)
_F = np.array([[0, 1, 2], [1, 3, 2]])


def test_from_mesh_accepts_good_square():
    geo = from_mesh(_V, _F)
    assert geo.total_mass() == pytest.approx(1.0)


@pytest.mark.parametrize(
    "vertices, faces, match",
    [
        (np.where(np.arange(12).reshape(4, 3) == 4, np.nan, _V), _F, "non-finite"),
        (_V, np.array([[0, 1, 1], [1, 3, 2]]), "repeat a node"),
        (
            np.array([[0, 0, 0], [1, 0, 0], [2, 0, 0], [1, 1, 0]], float),
            np.array([[0, 1, 2], [1, 3, 2]]),
            "zero area",
        ),
        (np.vstack([_V, [[5, 5, 5]]]), _F, "isolated"),
        (_V, np.array([[0, 1, 2], [1, 3, 7]]), "out of range"),
        (_V, np.array([[0, 1, 2], [2, 1, 0]]), "duplicate face"),
        (_V, np.zeros((0, 3), int), "non-empty"),
    ],
)
def test_from_mesh_bad_input(vertices, faces, match):
    with pytest.raises(ValueError, match=match):
        from_mesh(vertices, faces)


def test_from_edges_bad_input():
    with pytest.raises(ValueError, match="self-loop"):
        from_edges(_V, [[0, 0], [1, 2], [2, 3]])
    with pytest.raises(ValueError, match="isolated"):
        from_edges(_V, [[0, 1], [1, 2]])
    with pytest.raises(ValueError, match="negative"):
        from_edges(_V, [[0, 1], [1, 2], [2, 3]], weights=[1.0, -1.0, 1.0])
    with pytest.raises(ValueError, match="duplicate edge"):
        from_edges(_V, [[0, 1], [1, 0], [2, 3], [1, 2]])


def test_obtuse_mesh_weights_clipped_with_warning():
    v = np.array([[0, 0, 0], [2, 0, 0], [1, 0.2, 0], [1, -0.2, 0]], float)  # two flat obtuse
    f = np.array([[0, 1, 2], [0, 3, 1]])
    with pytest.warns(UserWarning, match="negative cotangent"):
        geo = from_mesh(v, f)
    assert np.all(np.asarray(geo.edge_weights) >= 0)
    with pytest.raises(ValueError, match="negative cotangent"):
        from_mesh(v, f, negative_weights="error")


def test_pacing_site_errors():
    geo = cable(10, 0.1)
    assert geo.pacing_site("left") == (0, 1, 2)
    assert geo.pacing_site(9) == (9,)
    with pytest.raises(ValueError, match="unknown pacing site 'apex'.*left"):
        geo.pacing_site("apex")
    with pytest.raises(ValueError, match="off the mesh"):
        geo.pacing_site(10)
    with pytest.raises(ValueError, match="off the mesh"):
        geo.pacing_site([-1])
    with pytest.raises(ValueError, match="off the mesh"):
        geo.with_pacing_sites({"far": [12]})
    with pytest.raises(ValueError, match="n_nodes"):
        cable(1)
    with pytest.raises(ValueError, match="dx"):
        sheet(4, 4, dx=-1.0)


def test_disconnected_mesh_or_graph_warns_and_counts_components():
    """A wave paced in one part of a disconnected geometry never reaches the other: the
    constructors say so (a warning, since a user may mean it), ``n_components`` counts."""
    verts = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [5, 5, 0], [6, 5, 0], [5, 6, 0]]) * 0.1
    with pytest.warns(UserWarning, match="disconnected: 2 separate components"):
        mesh = Geometry.from_mesh(verts, [[0, 1, 2], [3, 4, 5]])
    assert mesh.n_components == 2
    with pytest.warns(UserWarning, match="disconnected: 2 separate components"):
        graph = Geometry.from_edges(verts, [[0, 1], [1, 2], [3, 4], [4, 5]])
    assert graph.n_components == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # connected: silent
        joined = Geometry.from_mesh(verts, [[0, 1, 2], [1, 3, 2], [3, 4, 5]])
    assert joined.n_components == 1
    assert Geometry.cable(8).n_components == 1 and Geometry.ventricle(200).n_components == 1
