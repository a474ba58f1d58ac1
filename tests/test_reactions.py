"""The reaction catalog: contract, metadata, action potentials against independent
values, the Nagumo front speed, stable steps, and Rush-Larsen.

Independent references used here (none produced by the package code):

- Mitchell & Schaeffer (2003): the gate closes from 1 to h_min = 4 tau_in / tau_out
  during the plateau, so APD_max ~ tau_close ln(tau_out / (4 tau_in)) (leading order);
  the fold of the fast equation is then passed with a delay given by the Airy
  function (derivation in ``test_mitchell_schaeffer_apd_max``).
- The Nagumo front speed sqrt(k D / 2) (1 - 2a) of u_t = D u_xx + k u (u-a)(1-u).
- Sharp-Heaviside implementations of every model typed in this file from the papers'
  equations and integrated with SciPy's adaptive RK45 (tight tolerances).
"""

import json
import math

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import solve_ivp

from leads_jax.physics.reactions import (
    REACTIONS,
    AbstractReactionModel,
    FitzHughNagumo,
    MitchellSchaeffer,
    catalog_metadata,
    from_unconstrained,
    get_reaction,
    level_crossing_apd,
    pace,
    to_unconstrained,
)
from leads_jax.physics.reactions._stability import beat_summary
from leads_jax.physics.rush_larsen import (
    GatedODETerm,
    RushLarsen,
    reaction_term,
    rush_larsen_step,
)

NAMES = tuple(REACTIONS)
GATED = tuple(n for n, c in REACTIONS.items() if c.gate_states)
T_BEAT = 600.0


@pytest.fixture(scope="module")
def beats():
    """One paced beat per model at its stable_dt (RK4), sampled every 0.1 ms or step."""
    out = {}
    for name, cls in REACTIONS.items():
        m = cls.default()
        dt = cls.stable_dt
        ts, ys = pace(m, t_end=T_BEAT, dt=dt, save_dt=dt * max(1, round(0.1 / dt)))
        out[name] = (ts, ys, np.asarray(m.observe(jnp.asarray(ys.T))))
    return out


# --------------------------------------------------------------------------------------
# registry, parameters, metadata
# --------------------------------------------------------------------------------------
def test_registry_and_aliases():
    assert set(REACTIONS) == {
        "aliev-panfilov", "fitzhugh-nagumo", "mitchell-schaeffer", "fenton-karma",
        "bueno-orovio",
    }
    for alias, name in [("AP", "aliev-panfilov"), ("aliev_panfilov", "aliev-panfilov"),
                        ("FHN", "fitzhugh-nagumo"), ("Mitchell Schaeffer", "mitchell-schaeffer"),
                        ("FentonKarma", "fenton-karma"), ("bo", "bueno-orovio")]:
        assert get_reaction(alias) is REACTIONS[name]
    with pytest.raises(KeyError, match="valid names.*aliev-panfilov"):
        get_reaction("hodgkin-huxley")


@pytest.mark.parametrize("name", NAMES)
def test_parameters_are_named_bounded_and_round_trip(name):
    cls = REACTIONS[name]
    assert issubclass(cls, AbstractReactionModel)
    fields = [f.name for f in __import__("dataclasses").fields(cls)]
    assert tuple(fields) == cls.param_names()
    for s in cls.param_specs:
        assert s.lower < s.default < s.upper and s.units and s.role and s.source
        if s.units in ("ms", "1/ms") or s.name.startswith("tau"):
            assert s.lower >= 0.0, f"{name}.{s.name}: rates and time constants stay positive"
    m = cls.default()
    vec = m.to_vector()
    np.testing.assert_allclose(cls.from_vector(vec).to_vector(), vec)
    np.testing.assert_allclose(cls.from_raw(m.to_raw()).to_vector(), vec, rtol=1e-4, atol=1e-6)
    raw = jnp.linspace(-30.0, 30.0, 7)
    for s in cls.param_specs:
        x = from_unconstrained(raw, s)
        assert bool(jnp.all((x >= s.lower) & (x <= s.upper)))
        np.testing.assert_allclose(from_unconstrained(to_unconstrained(s.default, s), s),
                                   s.default, rtol=1e-4)
    with pytest.raises(ValueError, match="unknown parameter"):
        cls.default(not_a_parameter=1.0)
    assert cls.default(**{cls.param_names()[0]: 0.2}).to_vector()[0] == pytest.approx(0.2)


def test_catalog_metadata_is_json_and_complete():
    meta = json.loads(json.dumps(catalog_metadata()))
    assert set(meta) == set(NAMES)
    for name, entry in meta.items():
        cls = REACTIONS[name]
        assert entry["states"] == list(cls.state_names)
        assert entry["citation"] and entry["equations"] and entry["summary"]
        assert entry["stable_dt_ms"] == cls.stable_dt > 0 and entry["stable_dt_scheme"] == "rk4"
        assert set(entry["stable_dt_limits_ms"]) == {"euler", "rk4", "rush-larsen"}
        assert [p["name"] for p in entry["parameters"]] == list(cls.param_names())
        for p in entry["parameters"]:
            assert {"default", "lower", "upper", "units", "role", "source"} <= set(p)
        lo, hi = entry["observed"]["range"]
        assert entry["observed"]["units"] == "mV" and lo < cls.v_rest < hi
        if cls.gate_states:
            assert entry["switch_steepness"] > 0


# --------------------------------------------------------------------------------------
# vector fields: shapes, rest, gate split, differentiability
# --------------------------------------------------------------------------------------
def _random_states(cls, key, n):
    lo = jnp.array([max(b[0], 0.0) for b in cls.state_bounds])
    hi = jnp.array([min(b[1], 1.0) for b in cls.state_bounds])
    return lo[:, None] + (hi - lo)[:, None] * jax.random.uniform(key, (len(lo), n))


@pytest.mark.parametrize("name", NAMES)
def test_rates_vectorised_rest_gate_split_and_grad(name):
    cls = REACTIONS[name]
    m = cls.default()
    y = _random_states(cls, jax.random.PRNGKey(0), 16)
    idx = jnp.asarray(cls.gate_indices(), dtype=int)

    @jax.jit
    def evaluate(m, y):
        r = m.rates(0.0, y)
        r1 = jax.vmap(lambda yi: m.rates(0.0, yi), in_axes=1, out_axes=1)(y)
        per_node = cls.from_vector(jnp.repeat(m.to_vector()[:, None], y.shape[1], axis=1))
        rest = m.rest_state(3)
        gates = m.gate_inf_tau(y) if cls.gate_states else None
        return r, r1, per_node.rates(0.0, y), rest, m.rates(0.0, rest), m.observe(rest), gates

    r, r1, r_node, rest, r_rest, v_rest, gates = evaluate(m, y)
    assert r.shape == y.shape
    # per-node == per-cell, and per-node parameter arrays broadcast
    np.testing.assert_allclose(r, r1, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(r_node, r, rtol=1e-5, atol=1e-6)
    # the resting state is (close to) a fixed point; observe maps it to v_rest
    assert rest.shape == (len(cls.state_names), 3)
    assert float(jnp.max(jnp.abs(r_rest))) < 1e-4
    np.testing.assert_allclose(v_rest, cls.v_rest)
    # gates: dg/dt = (g_inf - g) / tau, tau > 0, g_inf in [0, 1]
    if cls.gate_states:
        g_inf, tau = gates
        assert g_inf.shape == tau.shape == (len(cls.gate_states), 16)
        np.testing.assert_allclose((g_inf - y[idx]) / tau, r[idx], rtol=1e-4, atol=1e-6)
        assert bool(jnp.all(tau > 0)) and bool(jnp.all((g_inf >= 0) & (g_inf <= 1)))
    # differentiable in the unconstrained parameters (no Python branching on values)
    g = jax.jit(jax.grad(lambda raw: jnp.sum(cls.from_raw(raw).rates(0.0, y) ** 2)))(m.to_raw())
    assert g.shape == (len(cls.param_specs),) and bool(jnp.all(jnp.isfinite(g)))
    assert float(jnp.max(jnp.abs(g))) > 0


# --------------------------------------------------------------------------------------
# action potentials
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_paced_beat_has_upstroke_plateau_and_returns_to_rest(name, beats):
    cls = REACTIONS[name]
    ts, ys, v = beats[name]
    v_rest = cls.v_rest
    i_peak = int(np.argmax(v))
    amplitude = v[i_peak] - v_rest
    lo, hi = cls.observed_range
    assert lo <= v.min() and v.max() <= hi, (v.min(), v.max())
    # upstroke: a fast rise to the peak within 20 ms of the pulse
    assert ts[i_peak] < 20.0 and amplitude > 80.0
    assert np.max(np.diff(v) / np.diff(ts)) > 5.0  # mV/ms
    # plateau / repolarisation: above half amplitude for >= 100 ms, APD90 200-400 ms
    above = ts[v > v_rest + 0.5 * amplitude]
    assert above[-1] - above[0] > 100.0
    assert 200.0 < level_crossing_apd(ts, v) < 400.0
    # return to rest, with every state back inside its bounds
    assert abs(v[-1] - v_rest) < 2.0
    for k, (a, b) in enumerate(cls.state_bounds):
        assert a <= ys[:, k].min() and ys[:, k].max() <= b


def _stim(t, amp, dur):
    return amp if t < dur else 0.0


def _sharp_aliev_panfilov(t, y, a=0.15, k=8.0, e0=0.002, mu1=0.2, mu2=0.3, T=12.9):
    u, v = y
    du = -k * u * (u - a) * (u - 1) - u * v
    dv = (e0 + mu1 * v / (mu2 + u)) * (-v - k * u * (u - a - 1))
    return [du / T, dv / T]


def _sharp_fitzhugh_nagumo(t, y, a=0.13, b=0.013, c1=0.26, c2=0.1, c3=1.0):
    u, v = y
    return [c1 * u * (u - a) * (1 - u) - c2 * u * v, b * (u - c3 * v)]


def _sharp_mitchell_schaeffer(t, y, t_in=0.3, t_out=6.0, t_open=120.0, t_close=150.0,
                              u_gate=0.13):
    u, h = y
    dh = (1 - h) / t_open if u < u_gate else -h / t_close
    return [h * u * u * (1 - u) / t_in - u / t_out, dh]


def _sharp_fenton_karma(t, y):  # MLR-I set, Fenton & Karma 1998 Table 1
    u, v, w = y
    td, tr, to, tsi, tvp, tvm, twp, twm, uc, ucsi, k = (
        0.172, 130.0, 12.5, 127.0, 10.0, 18.2, 1020.0, 80.0, 0.13, 0.85, 10.0)
    p = 1.0 if u >= uc else 0.0
    jfi = -v * p * (1 - u) * (u - uc) / td
    jso = u * (1 - p) / to + p / tr
    jsi = -w * (1 + math.tanh(k * (u - ucsi))) / (2 * tsi)
    return [-(jfi + jso + jsi), (1 - p) * (1 - v) / tvm - p * v / tvp,
            (1 - p) * (1 - w) / twm - p * w / twp]


def _sharp_bueno_orovio(t, y):  # EPI set, Bueno-Orovio et al. 2008 Table 1
    u, v, w, s = y
    uo, uu, thv, thw, thvm, tho = 0.0, 1.55, 0.3, 0.13, 0.006, 0.006
    tv1m, tv2m, tvp, tw1m, tw2m, kwm, uwm, twp = 60.0, 1150.0, 1.4506, 60.0, 15.0, 65.0, 0.03, 200.0
    tfi, to1, to2, tso1, tso2, kso, uso = 0.11, 400.0, 6.0, 30.0181, 0.9957, 2.0458, 0.65
    ts1, ts2, ks, us, tsi, twinf, winfs = 2.7342, 16.0, 2.0994, 0.9087, 1.8875, 0.07, 0.94
    hv, hw = float(u >= thv), float(u >= thw)
    tvm = tv1m if u < thvm else tv2m
    twm = tw1m + (tw2m - tw1m) * (1 + math.tanh(kwm * (u - uwm))) / 2
    tso = tso1 + (tso2 - tso1) * (1 + math.tanh(kso * (u - uso))) / 2
    tau_s = ts1 if u < thw else ts2
    tau_o = to1 if u < tho else to2
    vinf = 1.0 if u < thvm else 0.0
    winf = 1 - u / twinf if u < tho else winfs
    jfi = -v * hv * (u - thv) * (uu - u) / tfi
    jso = (u - uo) * (1 - hw) / tau_o + hw / tso
    jsi = -hw * w * s / tsi
    return [-(jfi + jso + jsi), (1 - hv) * (vinf - v) / tvm - hv * v / tvp,
            (1 - hw) * (winf - w) / twm - hw * w / twp,
            ((1 + math.tanh(ks * (u - us))) / 2 - s) / tau_s]


_SHARP = {
    "aliev-panfilov": (_sharp_aliev_panfilov, [0.0, 0.0], -80.0, 100.0),
    "fitzhugh-nagumo": (_sharp_fitzhugh_nagumo, [0.0, 0.0], -85.0, 125.0),
    "mitchell-schaeffer": (_sharp_mitchell_schaeffer, [0.0, 1.0], -85.0, 100.0),
    "fenton-karma": (_sharp_fenton_karma, [0.0, 1.0, 1.0], -85.0, 100.0),
    "bueno-orovio": (_sharp_bueno_orovio, [0.0, 1.0, 1.0, 0.0], -84.0, 85.7),
}


def _sharp_beat(name, amp, dur, ts):
    """The sharp-switch beat, evaluated at the times `ts` (which start at 0)."""
    rhs, y0, v_rest, v_scale = _SHARP[name]

    def paced(t, y):
        d = rhs(t, y)
        d[0] += _stim(t, amp, dur)
        return d

    kw = dict(method="RK45", rtol=1e-8, atol=1e-10, dense_output=True)
    s1 = solve_ivp(paced, (0.0, dur), y0, max_step=0.01, **kw)
    s2 = solve_ivp(paced, (dur, ts[-1]), s1.y[:, -1], max_step=0.5, **kw)
    u = np.where(ts < dur, s1.sol(np.minimum(ts, dur))[0], s2.sol(np.maximum(ts, dur))[0])
    return v_rest + v_scale * u


@pytest.mark.parametrize("name", NAMES)
def test_beat_matches_independent_sharp_switch_implementation(name, beats):
    """APD90 and peak of the smooth-switch JAX model (at stable_dt) vs the papers'
    sharp equations, both read on the same samples."""
    cls = REACTIONS[name]
    ts, _, v_m = beats[name]
    v = _sharp_beat(name, *cls.default_stimulus, ts)
    apd_ref = level_crossing_apd(ts, v)
    assert level_crossing_apd(ts, v_m) == pytest.approx(apd_ref, rel=0.01)
    assert abs(v_m.max() - v.max()) < 1.0
    assert np.sqrt(np.mean((v_m - v) ** 2)) < 2.0  # mV over the whole beat
    assert cls.v_rest == _SHARP[name][2] and cls.v_scale == _SHARP[name][3]


def test_mitchell_schaeffer_apd_max():
    r"""APD_max = tau_close ln(tau_out / (4 tau_in)) (Mitchell & Schaeffer 2003) and the
    fold-passage delay.

    During the plateau h = exp(-t / tau_close) and the excited branch of
    du/dt = (u / tau_in)(h u (1 - u) - tau_in / tau_out) ends in a fold at u = 1/2 when
    h = h_min = 4 tau_in / tau_out. Near the fold, with x = u - 1/2 and
    eps = (t - t_fold) / tau_close, dx/dt = -(2 / tau_out)(x^2 + eps / 4); scaling
    x = alpha X, t - t_fold = beta S with alpha^3 = tau_out / (8 tau_close) and
    beta = tau_out / (2 alpha) gives the Riccati equation dX/dS = -(X^2 + S), solved by
    X = -Ai'(-S) / Ai(-S): u passes 1/2 at S = 1.01879 (first zero of Ai'). So the time
    u spends above 1/2 is tau_close ln(1 / h_min) + 1.01879 beta.
    """
    cases = [{}, {"tau_close": 300.0}, {"tau_in": 0.15, "tau_out": 8.0}]
    for over in cases:
        m = MitchellSchaeffer.default(**over)
        p = {s.name: float(getattr(m, s.name)) for s in m.param_specs}
        ts, ys = pace(m, t_end=2.5 * p["tau_close"] * math.log(p["tau_out"] / (4 * p["tau_in"])),
                      dt=0.01, save_dt=0.05)
        u = ys[:, 0]
        above = ts[u >= 0.5]
        t_half = above[-1] - above[0]
        leading = p["tau_close"] * math.log(p["tau_out"] / (4 * p["tau_in"]))
        alpha = (p["tau_out"] / (8 * p["tau_close"])) ** (1 / 3)
        corrected = leading + 1.01879 * p["tau_out"] / (2 * alpha)
        assert t_half == pytest.approx(corrected, rel=0.02), over
        assert t_half == pytest.approx(leading, rel=0.10), over
    # at the defaults: 241 ms to leading order
    assert 150 * math.log(6 / 1.2) == pytest.approx(241.4, abs=0.1)


def test_nagumo_front_speed_on_a_cable():
    """Fast subsystem (v = 0) of the Rogers-McCulloch FHN on a cable: speed
    sqrt(c1 D / 2)(1 - 2a), constant along the cable."""
    from leads_jax.geometry import cable

    D, dx, dt, length = 1e-3, 0.01, 0.05, 2.0  # cm^2/ms, cm, ms, cm
    n = int(round(length / dx)) + 1
    geo = cable(n, dx=dx)
    m = FitzHughNagumo.default(b=0.0)  # b = 0 keeps v = 0: the Nagumo equation
    x = np.arange(n) * dx
    y0 = jnp.stack([jnp.where(jnp.asarray(x) < 0.2, 1.0, 0.0), jnp.zeros(n)])

    def f(y):
        return m.rates(0.0, y).at[0].add(D * geo.laplacian(y[0]))

    def step(y, _):
        k1 = f(y)
        k2 = f(y + dt / 2 * k1)
        k3 = f(y + dt / 2 * k2)
        k4 = f(y + dt * k3)
        y = y + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        return y, y[0]

    n_steps = int(180.0 / dt)
    _, us = jax.jit(lambda y: jax.lax.scan(step, y, None, length=n_steps))(y0)
    us = np.asarray(us)
    ts = (np.arange(n_steps) + 1) * dt
    sel = (x > 0.5) & (x < 1.5)
    act = np.array([np.interp(0.5, us[:, i], ts) for i in np.nonzero(sel)[0]])
    speed = 1.0 / np.polyfit(x[sel], act, 1)[0]
    analytic = math.sqrt(0.26 * D / 2) * (1 - 2 * 0.13)
    assert speed == pytest.approx(analytic, rel=0.03)
    half = x[sel] < 1.0
    s1 = 1.0 / np.polyfit(x[sel][half], act[half], 1)[0]
    s2 = 1.0 / np.polyfit(x[sel][~half], act[~half], 1)[0]
    assert s1 == pytest.approx(s2, rel=0.01)  # constant speed
    resid = act - np.polyval(np.polyfit(x[sel], act, 1), x[sel])
    assert np.max(np.abs(resid)) < 0.5  # ms


# --------------------------------------------------------------------------------------
# stable steps
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_stable_dt_is_stable_and_converged(name, beats):
    cls = REACTIONS[name]
    m = cls.default()
    ts, ys, v = beats[name]  # at stable_dt
    assert np.all(np.isfinite(ys))
    apd = level_crossing_apd(ts, v)
    apd_ref, peak_ref = beat_summary(m, cls.stable_dt / 10, save_dt=ts[1] - ts[0])
    assert apd == pytest.approx(apd_ref, rel=0.01)
    assert abs(v.max() - peak_ref) <= 1.0  # on the same samples
    limits = cls.stable_dt_limits
    assert set(limits) == {"euler", "rk4", "rush-larsen"}
    assert cls.stable_dt <= 0.5 * limits["rk4"]
    assert cls.stable_dt <= 0.5 * cls.default_stimulus[1]


# --------------------------------------------------------------------------------------
# Rush-Larsen
# --------------------------------------------------------------------------------------
def test_rush_larsen_gate_update_is_exact_and_bounded():
    g_inf, tau = 0.3, 2.0
    vf = lambda t, y, args: jnp.stack([jnp.zeros_like(y[0]), (g_inf - y[1]) / tau])
    gates = lambda t, y, args: (
        jnp.full((1,) + y.shape[1:], g_inf), jnp.full((1,) + y.shape[1:], tau)
    )
    y0 = jnp.array([[0.5], [1.0]])
    for dt in (0.1, 5.0, 50.0):
        y1 = rush_larsen_step(vf, gates, (1,), 0.0, y0, dt)
        exact = g_inf + (1.0 - g_inf) * math.exp(-dt / tau)
        assert float(y1[1, 0]) == pytest.approx(exact, rel=1e-6)
        assert 0.0 <= float(y1[1, 0]) <= 1.0
    # forward Euler at the same large step leaves [0, 1]
    assert float((y0 + 50.0 * vf(0.0, y0, None))[1, 0]) < 0.0


@pytest.mark.parametrize("name", GATED)
def test_rush_larsen_beat_is_converged_at_stable_dt(name):
    cls = REACTIONS[name]
    m = cls.default()
    apd_rl, _ = beat_summary(m, cls.stable_dt, scheme="rush-larsen")
    apd_ref, _ = beat_summary(m, cls.stable_dt / 10, scheme="rk4")
    assert apd_rl == pytest.approx(apd_ref, rel=0.01)


def test_rush_larsen_diffrax_solver_first_order_and_differentiable():
    m = MitchellSchaeffer.default()
    amp, dur = m.default_stimulus
    # pulse edge late in a step: the scan reads the pulse at mid-step, RushLarsen at the
    # step start, so both switch it off on the same step
    current = lambda t: jnp.where(t < dur + 0.08, amp, 0.0)
    term = reaction_term(m, current)
    assert isinstance(term, GatedODETerm) and term.gate_index == (1,)
    dt, t_end = 0.1, 40.0
    sol = diffrax.diffeqsolve(
        term, RushLarsen(), 0.0, t_end, dt, m.rest_state(),
        saveat=diffrax.SaveAt(ts=jnp.arange(0.0, t_end + dt / 2, 1.0)),
        stepsize_controller=diffrax.ConstantStepSize(), max_steps=int(t_end / dt) + 1,
    )
    _, ys = pace(m, t_end=t_end, dt=dt, scheme="rush-larsen", save_dt=1.0,
                 stimulus=(amp, dur + 0.08))
    np.testing.assert_allclose(np.asarray(sol.ys), ys, rtol=1e-4, atol=1e-4)
    # first order: halving the step halves the error
    ref = pace(m, t_end=t_end, dt=0.005, scheme="rk4", save_dt=1.0)[1]
    err = [
        np.abs(pace(m, t_end=t_end, dt=h, scheme="rush-larsen", save_dt=1.0)[1] - ref).max()
        for h in (0.1, 0.05)
    ]
    assert 1.7 < err[0] / err[1] < 2.3

    @jax.jit
    def h_end(tau_close):
        model = eqx.tree_at(lambda mm: mm.tau_close, m, tau_close)
        sol = diffrax.diffeqsolve(reaction_term(model, current), RushLarsen(), 0.0, 10.0,
                                  0.1, model.rest_state(), max_steps=101)
        return sol.ys[-1, 1]

    g = jax.grad(h_end)(jnp.asarray(150.0))
    fd = (h_end(jnp.asarray(151.0)) - h_end(jnp.asarray(149.0))) / 2.0
    assert bool(jnp.isfinite(g)) and float(g) == pytest.approx(float(fd), rel=2e-2)
