"""The diffusion catalog (dissipative, charge-conserving) and bounded neural closures."""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from leads_jax.geometry import Geometry
from leads_jax.physics.closures import AdditiveClosure, GateClosure
from leads_jax.physics.diffusion import (
    LaplacianDiffusion,
    NeuralGraphDiffusion,
    NoDiffusion,
    dirichlet_energy,
)


@functools.cache
def geometries():
    return {
        "cable": Geometry.cable(24),
        "mesh": Geometry.ventricle(400),
    }


def random_neural(seed, max_gain=3.0, scale=4.0):
    """A neural diffusion with random (not zero-initialised) weights."""
    d = NeuralGraphDiffusion((8,), max_gain, 0.5, 1.0, key=jax.random.key(seed))
    keys = jax.random.split(jax.random.key(seed + 100), len(d.mlp.weights))
    weights = tuple(
        scale * jax.random.normal(k, w.shape) for k, w in zip(keys, d.mlp.weights, strict=True)
    )
    return eqx.tree_at(lambda x: x.mlp.weights, d, weights)


_call = eqx.filter_jit(lambda f, *args: f(*args))


@eqx.filter_jit
def _diagnostics(op, geo, cond, u0, dt):
    """Forward-Euler pure diffusion (well inside the stable step) and, along it: charge,
    M-weighted energy, extrema, the Dirichlet energy E_c of the operator's conductances
    at the start state, the geometry's own Dirichlet energy, and the energy identity
    d/dt (1/2)|u|_M^2 = -2 E_{c(u)}(u) at every state."""

    def step(u, _):
        u1 = u + dt * op(u, geo, cond)
        return u1, u1

    _, us = jax.lax.scan(step, u0, None, length=200)
    us = jnp.concatenate([u0[None], us])
    c0 = op.edge_conductance(u0, geo, cond)

    def per_state(u):
        c = op.edge_conductance(u, geo, cond)
        return (
            jnp.sum(geo.mass * u),
            0.5 * jnp.sum(geo.mass * u**2),
            dirichlet_energy(u, geo.edges, c0),
            geo.dirichlet_energy(u),
            jnp.sum(geo.mass * u * op(u, geo, cond)),
            2 * dirichlet_energy(u, geo.edges, c),
            jnp.min(c),
        )

    return us, jax.vmap(per_state)(us)


def _nonincreasing(x, name):
    x = np.asarray(x)
    assert np.all(np.diff(x) <= 1e-6 * abs(x[0])), name
    assert x[-1] < x[0], name


@pytest.mark.parametrize("geo_name", ["cable", "mesh"])
def test_dissipation_and_charge_for_every_operator(geo_name):
    """Every diffusion operator of the catalog, the neural one with random weights:
    charge conserved, M-weighted energy non-increasing, maximum principle; for the linear
    ones the Dirichlet energy of their conductances never increases (with a global D it
    is D times the geometry's own Dirichlet energy); for the neural one the energy
    identity holds with a non-negative Dirichlet form at every state."""
    geo = geometries()[geo_name]
    n = geo.n_nodes
    u0 = jax.random.uniform(jax.random.key(1), (n,))
    cond_node = 10 ** jax.random.uniform(jax.random.key(2), (n,), minval=-4.0, maxval=-2.0)
    operators = {
        "laplacian-global": (LaplacianDiffusion(), jnp.full((n,), 1e-3)),
        "laplacian-per-node": (LaplacianDiffusion(), cond_node),
        "neural-graph": (random_neural(3), cond_node),
    }
    for name, (op, cond) in operators.items():
        gain = float(jax.nn.softplus(2 * op.max_gain) / np.log(2.0)) if "neural" in name else 1.0
        dt = 0.25 * geo.max_stable_dt(float(cond.max()) * gain)
        us, (charge, l2, e_c, e_geo, rate_l2, form, cmin) = _diagnostics(op, geo, cond, u0, dt)
        np.testing.assert_allclose(charge, charge[0], rtol=2e-5, err_msg=name)
        _nonincreasing(l2, name)
        assert float(us.max()) <= float(u0.max()) + 1e-6, name  # maximum principle
        assert float(us.min()) >= float(u0.min()) - 1e-6, name
        assert float(cmin.min()) >= 0.0, name
        np.testing.assert_allclose(rate_l2, -form, rtol=1e-3, atol=1e-9, err_msg=name)
        if "laplacian" in name:
            _nonincreasing(e_c, name)
        if name == "laplacian-global":
            _nonincreasing(e_geo, name)
            np.testing.assert_allclose(e_c, 1e-3 * e_geo, rtol=1e-4)
            np.testing.assert_allclose(
                op(u0, geo, cond), 1e-3 * geo.laplacian(u0), rtol=1e-4, atol=1e-6
            )


def test_neural_diffusion_is_symmetric_positive_and_bounded():
    geo = geometries()["cable"]
    op = random_neural(5)
    u = jax.random.uniform(jax.random.key(0), (geo.n_nodes,), minval=-3.0, maxval=3.0)
    gain = _call(op.gain, u, geo.edges)
    flipped = _call(op.gain, u, geo.edges[:, ::-1])
    np.testing.assert_allclose(gain, flipped, rtol=1e-6)
    lo = float(jax.nn.softplus(-2 * op.max_gain) / np.log(2.0))
    hi = float(jax.nn.softplus(2 * op.max_gain) / np.log(2.0))
    assert float(gain.min()) >= lo * (1 - 1e-6) and float(gain.max()) <= hi * (1 + 1e-6)
    # A fresh (zero last layer) neural diffusion equals the Laplacian.
    fresh = NeuralGraphDiffusion((8,), 2.0, 0.5, 1.0, key=jax.random.key(0))
    cond = jnp.full((geo.n_nodes,), 1e-3)
    np.testing.assert_allclose(
        _call(fresh, u, geo, cond), _call(LaplacianDiffusion(), u, geo, cond), rtol=1e-5, atol=1e-7
    )
    assert float(jnp.abs(NoDiffusion()(u, geo, cond)).max()) == 0.0


def test_additive_closure_is_bounded_and_starts_at_zero():
    center, scale = jnp.array([0.5, 2.25]), jnp.array([1.0, 2.75])
    c = AdditiveClosure(2, 1, (16, 16), 0.1, center, scale, key=jax.random.key(0))
    state = jax.random.normal(jax.random.key(1), (2, 50)) * 100.0
    assert float(jnp.abs(_call(c, state)).max()) == 0.0  # physics first (APHYNITY)
    weights = tuple(10 * jax.random.normal(jax.random.key(i), w.shape)
                    for i, w in enumerate(c.mlp.weights))
    c = eqx.tree_at(lambda c: c.mlp.weights, c, weights)
    for raw in (-5.0, 0.0, 50.0):
        cc = eqx.tree_at(lambda c: c.raw_scale, c, jnp.asarray(raw))
        out = _call(cc, state)
        assert float(jnp.abs(out).max()) <= 0.1 * float(jax.nn.sigmoid(raw)) + 1e-7
    nb = AdditiveClosure(2, 0, (4,), 0.1, center, scale, neighbours=True, key=jax.random.key(0))
    with pytest.raises(ValueError, match="neighbour"):
        nb(state)
    assert nb(state, jnp.zeros(50)).shape == (50,)


def test_gate_closure_bounds():
    c = GateClosure(1, (8,), 2.0, 40.0, 0.5, 1.0, key=jax.random.key(0))
    c = eqx.tree_at(lambda c: c.mlp.weights, c, tuple(
        20 * jax.random.normal(jax.random.key(i), w.shape) for i, w in enumerate(c.mlp.weights)))
    u = jnp.linspace(-50.0, 50.0, 201)
    g_inf, tau = _call(c.inf_tau, u)
    assert float(g_inf.min()) >= 0.0 and float(g_inf.max()) <= 1.0
    assert float(tau.min()) >= 2.0 - 1e-5 and float(tau.max()) <= 40.0 + 1e-4
    # The relaxation points into [0, 1] from outside it: gates cannot leave the interval.
    state = jnp.stack([u, jnp.where(u > 0, 1.0, 0.0)])
    rate = _call(c, state)
    assert bool(jnp.all(jnp.where(state[1] == 1.0, rate <= 0, rate >= 0)))
