"""Compilation of structures and simulation: parameters as data, one trace per topology,
divergence as data, jump times, the generic vector-field path, bad input."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from leads_jax.batching import bucket_size, stack_models, unstack_member
from leads_jax.compile import (
    compile_structure,
    compile_vector_field,
    partition,
    physical_parameters,
    replace_parameters,
    trainable_filter,
)
from leads_jax.geometry import Geometry
from leads_jax.simulate import simulate, simulate_batch
from leads_jax.stimulus import Stimulus
from leads_jax.structure import ClosureTerm, Structure, StructureError

GEO = Geometry.cable(32)
STIM = Stimulus.single(GEO, "left", onset=1.0)
TS = jnp.linspace(0.0, 60.0, 31)
DT = 0.05
AP = Structure.make("aliev-panfilov", "laplacian", free=("a", "k", "D"))


def _ap(structure=AP, seed=0):
    return compile_structure(structure, GEO, key=jax.random.key(seed))


# One jitted, vmapped program shared by the tests below: it may be traced only once.
@eqx.filter_jit
@eqx.debug.assert_max_traces(max_traces=1)
def _batch(models):
    return simulate_batch(models, GEO, STIM, TS, dt=DT)


@pytest.fixture(scope="module")
def ap_alone():
    """The default Aliev-Panfilov candidate simulated alone (outside any batch)."""
    return eqx.filter_jit(lambda m: simulate(m, GEO, STIM, TS, dt=DT))(_ap())


def test_parameters_are_data():
    s = AP.with_parameter("a", "per-region").with_parameter("eps0", "per-node")
    m, m0 = _ap(s), _ap()
    # Same topology: identical tree structure and leaf shapes, different data.
    a0, st0 = eqx.partition(m0, eqx.is_array)
    a1, st1 = eqx.partition(m, eqx.is_array)
    assert jax.tree.structure(a0) == jax.tree.structure(a1)
    assert [x.shape for x in jax.tree.leaves(a0)] == [x.shape for x in jax.tree.leaves(a1)]
    assert st0 == st1
    p = physical_parameters(m)
    assert set(p) == {"a", "k", "eps0", "mu1", "mu2", "time_scale", "D"}
    np.testing.assert_allclose(p["a"], 0.15, rtol=1e-5)
    np.testing.assert_allclose(p["D"], 1e-3, rtol=1e-4)
    # Localised values: region values map through the geometry's region labels.
    m2 = replace_parameters(m, a=jnp.array([0.1, 0.2]), k=9.0)
    p2 = physical_parameters(m2)
    np.testing.assert_allclose(p2["a"], np.where(np.asarray(GEO.regions) == 0, 0.1, 0.2), rtol=1e-5)
    np.testing.assert_allclose(p2["k"], 9.0, rtol=1e-5)


def test_fixed_parameters_get_zero_gradient():
    m = _ap(AP.with_parameter("eps0", "per-node"))
    params, static = partition(m)

    def f(params):
        v = eqx.combine(params, static).params.values()
        return jnp.sum(v**2)

    g = jax.grad(f)(params).params
    names = m.params.names
    for i, n in enumerate(names):
        total = abs(g.raw_global[i]) + jnp.abs(g.raw_region[i]).sum() + jnp.abs(g.raw_node[i]).sum()
        if n in ("a", "k", "D"):
            assert g.raw_global[i] != 0 and jnp.all(g.raw_node[i] == 0)
        elif n == "eps0":
            assert jnp.all(g.raw_node[i] != 0) and g.raw_global[i] == 0
        else:
            assert total == 0, n
    f_tree = trainable_filter(m)
    assert f_tree.params.raw_global is True and f_tree.params.mode is False


def test_one_trace_for_many_candidates_and_divergence_is_data(ap_alone):
    """Many candidates of one topology (different free/fixed masks, localisation and
    values) share one trace; a candidate with absurd conductivity is flagged without
    touching the others."""
    structures = [
        AP,
        AP.with_parameter("a", "fixed", 0.12),
        AP.with_parameter("D", "per-region"),
        AP.with_parameter("k", "per-node", 7.0),
    ]
    models = [_ap(s, i) for i, s in enumerate(structures)]
    assert len({s.topology_key() for s in structures}) == 1
    good, mask = stack_models(models)
    assert mask.tolist() == [True] * 4
    bad_models = list(models)
    bad_models[2] = replace_parameters(models[2], D=0.9)  # far beyond the stable step
    bad, _ = stack_models(bad_models)

    tr_good = _batch(good)
    tr_bad = _batch(bad)  # same shapes: no second trace (assert_max_traces)
    shuffled, _ = stack_models([models[3], models[0], models[1], models[2]])
    _batch(shuffled)

    assert not bool(jnp.any(tr_good.diverged))
    assert tr_bad.diverged.tolist() == [False, False, True, False]
    assert int(tr_bad.reason[2]) in (1, 2)
    assert float(tr_bad.t_diverged[2]) < 2.0  # stopped within a few steps of the pulse
    assert bool(jnp.all(jnp.isnan(tr_bad.observed[2, -1])))
    for i in (0, 1, 3):
        np.testing.assert_array_equal(tr_bad.observed[i], tr_good.observed[i])
    # ... and equal to simulating the member alone, outside any batch.
    np.testing.assert_allclose(ap_alone.observed, tr_bad.observed[0], rtol=1e-5, atol=1e-3)
    assert unstack_member(good, 3).params.names == models[3].params.names

    # The wave travels: activation (crossing -40 mV) later at the far end.
    obs = np.asarray(tr_good.observed[0])
    act = [TS[np.argmax(obs[:, i] > -40.0)] for i in (2, 16, 30)]
    assert act[0] < act[1] < act[2], act


def test_stack_rejects_mixed_topologies_and_buckets():
    other = _ap(AP.with_closure(ClosureTerm("v", hidden=(4,))))
    with pytest.raises(ValueError, match="topology"):
        stack_models([_ap(), other])
    assert [bucket_size(n) for n in (0, 1, 2, 3, 5, 8, 9, 100)] == [1, 1, 2, 4, 8, 8, 16, 128]
    stacked, mask = stack_models([_ap()] * 3)
    assert mask.tolist() == [True, True, True, False]
    assert stacked.params.raw_global.shape[0] == 4


def test_adaptive_steps_cannot_skip_a_pulse():
    """A 0.5 ms pulse at t = 40 ms inside a long quiet interval: the PID controller would
    step over it; the stimulus jump times make it land on the pulse."""
    stim = Stimulus.single(GEO, "left", onset=40.0, duration=0.5, amplitude=2.0)
    ts = jnp.linspace(0.0, 80.0, 5)
    m = _ap(Structure.make("aliev-panfilov", "none"))
    tr = simulate(m, GEO, stim, ts, solver="tsit5", adaptive=True, dt=20.0)
    assert int(tr.reason) == 0
    assert float(tr.observed[-1, 0]) > 0.0  # excited after the pulse
    assert float(tr.observed[1, 0]) == pytest.approx(-80.0, abs=1e-3)  # quiet before


def test_generic_vector_field_matches_compiled_structure(ap_alone):
    def fn(t, y, p, geometry):
        u, v = y
        du = -p["k"] * u * (u - p["a"]) * (u - 1.0) - u * v
        eps = 0.002 + 0.2 * v / (0.3 + u)
        dv = eps * (-v - p["k"] * u * (u - p["a"] - 1.0))
        # Reaction in model time units (12.9 ms each); diffusion already per ms.
        return jnp.stack([du, dv]) / 12.9 + jnp.stack([p["D"] * geometry.laplacian(u), 0 * v])

    params = {"a": jnp.asarray(0.15), "k": jnp.asarray(8.0), "D": jnp.asarray(1e-3)}
    gen = compile_vector_field(
        fn, params, state_names=("u", "v"), state_bounds=((-0.5, 1.5), (-0.5, 5.0)), dt=DT
    )
    b = simulate(gen, GEO, STIM, TS)
    np.testing.assert_allclose(ap_alone.observed, b.observed, rtol=1e-4, atol=1e-2)
    assert trainable_filter(gen).params["a"] is True


def test_gate_closure_keeps_gate_in_unit_interval_under_rush_larsen():
    s = Structure.make("mitchell-schaeffer", "laplacian").with_closure(
        ClosureTerm("h", "gate", hidden=(8,), tau_min=2.0, tau_max=50.0)
    )
    m = compile_structure(s, GEO, key=jax.random.key(3))
    # Random, large weights: whatever the network says, h stays in [0, 1].
    m = eqx.tree_at(
        lambda m: m.closures[0].mlp.weights,
        m,
        tuple(5 * jax.random.normal(jax.random.key(i), w.shape) for i, w in
              enumerate(m.closures[0].mlp.weights)),
    )
    tr = simulate(m, GEO, STIM, jnp.linspace(0.0, 100.0, 21), solver="rush-larsen", dt=0.05)
    assert int(tr.reason) == 0
    h = np.asarray(tr.state[:, 1])
    assert h.min() >= 0.0 and h.max() <= 1.0


def test_bad_input_is_named():
    m = _ap()
    with pytest.raises(ValueError, match="unknown solver"):
        simulate(m, GEO, STIM, TS, solver="rk45")
    with pytest.raises(ValueError, match="adaptive"):
        simulate(m, GEO, STIM, TS, solver="rk4", adaptive=True)
    with pytest.raises(ValueError, match="y0"):
        simulate(m, GEO, STIM, TS, y0=jnp.zeros((3, 32)), dt=DT)
    with pytest.raises(ValueError, match="ts"):
        simulate(m, GEO, STIM, jnp.zeros(1), dt=DT)
    with pytest.raises(ValueError, match="nodes"):
        simulate(m, Geometry.cable(16), None, TS, dt=DT)
    with pytest.raises(ValueError, match="dt"):
        simulate(m, GEO, STIM, TS, dt=-1.0)
    with pytest.raises(StructureError, match="known-reaction"):
        compile_structure(Structure("hodgkin-huxley"), GEO, key=jax.random.key(0))
    with pytest.raises(ValueError, match=r"D = 5.0 must lie strictly inside"):
        replace_parameters(m, D=5.0)
    with pytest.raises(KeyError, match="no parameter"):
        replace_parameters(m, tau_in=1.0)
    with pytest.raises(ValueError, match="state_bounds"):
        compile_vector_field(lambda t, y, p, g: y, {}, state_names=("u",), state_bounds=())


@pytest.mark.slow
def test_gradients_through_simulate_match_finite_differences():
    """Reverse mode through the checkpointed diffrax solve: free parameters get the
    finite-difference gradient, fixed ones exactly zero (slow: ~30 s of compilation)."""
    m = _ap(AP.with_parameter("eps0", "fixed"))
    ts = TS[:16]
    params, static = partition(m)

    def loss(params):
        tr = simulate(eqx.combine(params, static), GEO, STIM, ts, dt=DT)
        return jnp.mean((tr.observed + 40.0) ** 2) / 1e3

    g = eqx.filter_jit(jax.grad(loss))(params).params.raw_global
    names = m.params.names
    f = eqx.filter_jit(loss)
    for name in ("a", "k", "D"):
        i = names.index(name)
        eps = 1e-2
        up = eqx.tree_at(lambda p: p.params.raw_global, params,
                         params.params.raw_global.at[i].add(eps))
        dn = eqx.tree_at(lambda p: p.params.raw_global, params,
                         params.params.raw_global.at[i].add(-eps))
        fd = (f(up) - f(dn)) / (2 * eps)
        np.testing.assert_allclose(g[i], fd, rtol=5e-2, atol=1e-4, err_msg=name)
    for name in ("eps0", "mu1", "mu2", "time_scale"):
        assert float(g[names.index(name)]) == 0.0
