"""Stimulus protocols: timing, sites, jump times, serialisation, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from leads_jax.geometry import cable, sheet
from leads_jax.stimulus import Stimulus, site_label


@pytest.fixture(scope="module")
def geo():
    return cable(20, 0.1)


def test_single_pulse_timing_and_site(geo):
    s = Stimulus.single(geo, "left", onset=5.0, amplitude=0.3, duration=2.0)
    ts = jnp.array([0.0, 4.99, 5.0, 6.0, 6.99, 7.0, 50.0])
    cur = jax.vmap(s.current)(ts)
    assert cur.shape == (7, 20)
    on = np.array([0, 0, 1, 1, 1, 0, 0], bool)
    np.testing.assert_allclose(cur[on][:, :3], 0.3)
    np.testing.assert_allclose(cur[~on], 0.0)
    np.testing.assert_allclose(cur[:, 3:], 0.0)
    np.testing.assert_allclose(s.jump_times(), [5.0, 7.0])
    assert s.end_time == pytest.approx(7.0)


def test_s1s2_protocol(geo):
    s = Stimulus.s1s2(geo, "right", s1_period=300.0, n_s1=4, s2_interval=180.0, duration=1.0)
    np.testing.assert_allclose(s.onsets, [0, 300, 600, 900, 1080])
    jt = np.asarray(s.jump_times())
    assert np.all(np.diff(jt) > 0) and len(jt) == 10
    assert float(s.current(1080.5)[-1]) > 0 and float(s.current(1081.0)[-1]) == 0
    padded = s.padded(7)
    assert padded.n_pulses == 7
    np.testing.assert_allclose(
        jax.vmap(padded.current)(jnp.arange(0.0, 2000.0, 0.5)),
        jax.vmap(s.current)(jnp.arange(0.0, 2000.0, 0.5)),
    )
    stacked = jax.tree.map(lambda *x: jnp.stack(x), padded, Stimulus.single(geo).padded(7))
    assert jax.vmap(lambda st: st.current(1.0))(stacked).shape == (2, 20)


def test_train_multi_site_and_indices():
    g = sheet(6, 5, 0.1)
    s = Stimulus.train(g, ["left", "bottom"], period=100.0, n=3)
    w = np.asarray(s.sites).reshape(5, 6)
    assert w[:, :3].all() and w[:3, :].all() and not w[3:, 3:].any()
    s2 = Stimulus.single(g, [0, 7])
    assert np.nonzero(np.asarray(s2.sites))[0].tolist() == [0, 7]
    assert site_label([0, 7]) == "nodes:0,7" and site_label(["left", "bottom"]) == "left+bottom"


def test_none_and_jit(geo):
    s = Stimulus.none(geo)
    assert s.n_pulses == 0 and s.jump_times().shape == (0,)
    np.testing.assert_allclose(jax.jit(lambda st, t: st.current(t))(s, 1.0), 0.0)
    s = Stimulus.single(geo, "center")
    out = jax.jit(lambda st, t: st.current(t))(s, jnp.asarray(1.0))
    assert float(out.sum()) == pytest.approx(3 * 0.5)


def test_dict_round_trip(geo):
    s = Stimulus.s1s2(geo, "left", s1_period=250.0, n_s1=2, s2_interval=150.0)
    d = s.padded(4).to_dict(site_label="left", protocol="s1s2")
    back = Stimulus.from_dict(geo, d)
    for k in ("sites", "amplitude", "duration", "onsets"):
        np.testing.assert_allclose(getattr(back, k), getattr(s, k))
    assert d["protocol"] == "s1s2" and d["site_label"] == "left"


def test_no_recompilation_across_sites(geo):
    import equinox as eqx

    traces = []

    @eqx.filter_jit
    def f(st, t):
        traces.append(1)
        return st.current(t)

    f(Stimulus.single(geo, "left"), jnp.asarray(1.0))
    f(Stimulus.single(geo, "right", onset=3.0, amplitude=0.2), jnp.asarray(4.0))
    assert len(traces) == 1


def test_bad_input(geo):
    with pytest.raises(ValueError, match="unknown pacing site 'apex'"):
        Stimulus.single(geo, "apex")
    with pytest.raises(ValueError, match="off the mesh"):
        Stimulus.single(geo, 20)
    with pytest.raises(ValueError, match="duration"):
        Stimulus.single(geo, "left", duration=0.0)
    with pytest.raises(ValueError, match="amplitude"):
        Stimulus.single(geo, "left", amplitude=float("nan"))
    with pytest.raises(ValueError, match="overlap"):
        Stimulus.train(geo, "left", period=1.0, n=3, duration=2.0)
    with pytest.raises(ValueError, match="onset"):
        Stimulus.single(geo, "left", onset=-1.0)
    with pytest.raises(ValueError, match="n_s1"):
        Stimulus.s1s2(geo, "left", n_s1=0)
    with pytest.raises(ValueError, match="weights"):
        Stimulus.custom(geo, np.full(20, 2.0), onsets=[0.0])
