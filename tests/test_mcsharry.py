"""The McSharry (ECGSYN) kernel: parity with neurokit2, gradients, fitting, input checks."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate
import scipy.ndimage

from leads_jax.physics.ecg_fiducials import steady_state_beat
from leads_jax.physics.mcsharry import (
    ECGSYN_AI,
    ECGSYN_BI,
    ECGSYN_TI_DEGREES,
    MULTILEAD_GAMMA,
    McSharryECG,
    ecg_waveform,
    mcsharry_vector_field,
    rr_process,
    simulate_ecg,
    simulate_ecg_batch,
    upsample_rr,
    wave_parameters,
)

nk = pytest.importorskip("neurokit2")
from neurokit2.ecg.ecg_simulate import (  # noqa: E402
    _ecg_simulate_derivsecgsyn,
    _ecg_simulate_rrprocess,
)


def _ecgsyn_params(hr):
    hrfact = math.sqrt(hr / 60.0)
    hrfact2 = math.sqrt(hrfact)
    ti = np.deg2rad(ECGSYN_TI_DEGREES) * np.array([hrfact2, hrfact, 1, hrfact, hrfact2])
    return ti, np.array(ECGSYN_AI), np.array(ECGSYN_BI) * hrfact


def test_vector_field_is_ecgsyns():
    rng = np.random.default_rng(0)
    ti, ai, bi = _ecgsyn_params(80.0)
    model = McSharryECG(ti, ai, bi)
    rr = 0.75
    rrn = np.full(100, rr)
    for _ in range(20):
        y = rng.normal(size=3) * np.array([1.0, 1.0, 0.05])
        t = rng.uniform(0, 0.1)
        ref = _ecg_simulate_derivsecgsyn(t, y, rrn, ti, 500, ai, bi)
        z0 = 0.005 * math.sin(2 * math.pi * 0.25 * t)
        got = mcsharry_vector_field(t, jnp.asarray(y), model, 2 * math.pi / rr, z0)
        np.testing.assert_allclose(np.asarray(got), ref, rtol=2e-5, atol=2e-6)
    # ecgsyn scaling reproduces the per-rate parameters
    ts, as_, bs = wave_parameters(McSharryECG.default(), 0.75, hr_scaling="ecgsyn")
    np.testing.assert_allclose(np.asarray(ts), ti, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(bs), bi, rtol=1e-6)


@pytest.mark.parametrize("hr", [50.0, 70.0, 110.0])
def test_parity_with_tight_solve_ivp(hr):
    """Max |difference| <= 0.01 mV against ECGSYN's own RHS at rtol = atol = 1e-9."""
    fs, duration = 500, 6.0
    ti, ai, bi = _ecgsyn_params(hr)
    n = int(duration * fs)
    te = np.arange(n) / fs
    rrn = np.full(n + 10, 60.0 / hr)
    sol = scipy.integrate.solve_ivp(
        lambda t, x: _ecg_simulate_derivsecgsyn(t, x, rrn, ti, fs, ai, bi),
        (0, te[-1]), [1.0, 0.0, 0.04], t_eval=te, rtol=1e-9, atol=1e-9,
    )
    zr = sol.y[2]
    z = np.asarray(ecg_waveform(McSharryECG.default(), 60.0 / hr, n_samples=n, sampling_rate=fs,
                                hr_scaling="ecgsyn", scale="none"))
    to_mv = 1.6 / (zr.max() - zr.min())  # ECGSYN's output scaling
    assert np.max(np.abs(z - zr)) * to_mv <= 0.01
    zs = np.asarray(ecg_waveform(McSharryECG.default(), 60.0 / hr, n_samples=n, sampling_rate=fs,
                                 hr_scaling="ecgsyn", scale="ecgsyn"))
    assert np.max(np.abs(zs - ((zr - zr.min()) * to_mv - 0.4))) <= 0.01


def test_parity_with_neurokit_ecg_simulate():
    """Pearson r >= 0.99 against neurokit2.ecg_simulate(ecgsyn, noise=0, hrstd=0), 60-110 bpm.

    neurokit2 integrates with solve_ivp's default (loose) RK45 tolerances, whose own error
    depends on the CPU's floating point: at 90 bpm the max |difference| was 0.34 mV on one
    AMD EPYC and under 0.2 mV on the developers' machine, at r = 0.998 on both. So only a
    correlation is asserted here; the absolute bound (<= 0.01 mV) is asserted against the
    tight solve_ivp reference in ``test_parity_with_tight_solve_ivp``."""
    rates = np.array([60.0, 75.0, 90.0, 110.0])
    fs = 500
    ours = simulate_ecg_batch(10, fs, rates, 0, key=jax.random.key(0), noise=0)
    assert ours.dims == ("ecg", "time")
    for i, hr in enumerate(rates):
        ref = nk.ecg_simulate(duration=10, sampling_rate=fs, noise=0, heart_rate=hr,
                              heart_rate_std=0, random_state=0)
        z = ours.values[i]
        assert z.shape == ref.shape
        assert np.corrcoef(ref, z)[0, 1] >= 0.99, hr


def test_rr_process_and_resampling_match_ecgsyn():
    n, hr, hrstd = 64, 70.0, 3.0
    rng = np.random.RandomState(4)
    ref = _ecg_simulate_rrprocess(hrmean=hr, hrstd=hrstd, n=n, rng=np.random.RandomState(4))
    phases = 2 * np.pi * rng.uniform(size=n // 2 - 1)
    got = np.asarray(rr_process(None, n, heart_rate=hr, heart_rate_std=hrstd,
                                phases=jnp.asarray(phases)))
    np.testing.assert_allclose(got, ref, rtol=1e-5)
    assert abs(got.mean() - 60 / hr) < 1e-5
    assert abs(got.std() - 60 * hrstd / hr**2) < 1e-5
    # random draws: right mean/std, spectrum peaks in the LF and HF bands
    rr = np.asarray(rr_process(jax.random.key(1), 1024, heart_rate=60.0, heart_rate_std=2.0))
    spec = np.abs(np.fft.rfft(rr - rr.mean())) ** 2
    f = np.fft.rfftfreq(1024, 1.0)
    assert 0.2 < f[np.argmax(spec)] < 0.3  # HF (respiratory) peak, twice LF's power
    lf = spec[(f > 0.07) & (f < 0.13)].sum()
    hf = spec[(f > 0.22) & (f < 0.28)].sum()
    assert 0.2 < lf / hf < 1.0
    # cubic-spline upsampling = scipy.ndimage.zoom (but its last sample, which zoom zeroes)
    x = np.random.default_rng(2).normal(size=16)
    ref = scipy.ndimage.zoom(x, 50)
    got = np.asarray(upsample_rr(jnp.asarray(x), 50))
    np.testing.assert_allclose(got[:-1], ref[:-1], atol=1e-5)


def test_heart_rate_variability_parity_with_matched_phases():
    """With neurokit2's own RR-process draw, the whole ECGSYN pipeline agrees (r >= 0.99)."""
    hr, fs = 70.0, 250
    ref = nk.ecg_simulate(duration=10, sampling_rate=fs, noise=0, heart_rate=hr,
                          heart_rate_std=3, random_state=np.random.RandomState(3))
    phases = 2 * np.pi * np.random.RandomState(3).uniform(size=16 // 2 - 1)
    z = simulate_ecg(10, fs, hr, 3, key=jax.random.key(0), noise=0, rr_phases=phases)
    assert np.corrcoef(ref, z.values[0])[0, 1] >= 0.99


def test_xarray_outputs_and_batch():
    key = jax.random.key(1)
    one = simulate_ecg(4, 250, 72, 1, key=key)
    assert one.dims == ("ecg", "time") and one.shape == (1, 1000)
    assert one.attrs["units"] == "mV" and one.time.attrs["units"] == "s"
    np.testing.assert_allclose(one.time.values[:2], [0.0, 0.004])
    assert np.all(np.isfinite(one.values))
    # different parameters, rates and keys in one call; raw units
    ai = np.tile(ECGSYN_AI, (3, 1)) * np.array([[1.0], [0.8], [1.2]])
    batch = simulate_ecg_batch(4, 250, [60, 70, 80], [0, 1, 2], ECGSYN_TI_DEGREES, ai,
                               ECGSYN_BI, key=key, scale="none", hr_scaling="physiological")
    assert batch.sizes == {"ecg": 3, "time": 1000}
    assert batch.attrs["units"] == "model units"
    assert not np.allclose(batch.values[0], batch.values[1])
    # several leads
    leads = simulate_ecg(4, 250, 70, 1, key=key, gamma=MULTILEAD_GAMMA, noise=0)
    assert leads.dims == ("ecg", "lead", "time") and leads.sizes["lead"] == 12
    assert list(leads.lead.values[:2]) == ["I", "II"]
    # noise mirrors signal_distort: Laplace noise scaled by the signal SD
    clean = simulate_ecg(4, 250, 72, 1, key=key, noise=0)
    noisy = simulate_ecg(4, 250, 72, 1, key=key, noise=0.05)
    resid = noisy.values - clean.values
    assert 0.01 < resid.std() / clean.values.std() < 0.2


def test_scalings_agree_at_60_bpm_and_physiological_qrs_is_rate_independent():
    m = McSharryECG.default()
    a = ecg_waveform(m, 1.0, n_samples=800, sampling_rate=250, hr_scaling="ecgsyn")
    b = ecg_waveform(m, 1.0, n_samples=800, sampling_rate=250, hr_scaling="physiological")
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
    # beat-by-beat RRs: one value per beat, jit + vmap over a batch of RR sequences
    rr = jnp.array([[0.8, 0.7, 0.9, 0.75], [1.0, 1.1, 0.9, 1.0]])
    f = jax.jit(jax.vmap(lambda r: ecg_waveform(m, r, n_samples=750, sampling_rate=250)))
    z = f(rr)
    assert z.shape == (2, 750) and bool(jnp.all(jnp.isfinite(z)))


def test_gradients_match_finite_differences():
    with jax.enable_x64(True):
        m = McSharryECG.default()
        target = ecg_waveform(McSharryECG.from_degrees([-65, -12, 2, 17, 95], ECGSYN_AI,
                                                       ECGSYN_BI),
                              0.8, n_samples=400, sampling_rate=250)

        def loss(model):
            z = ecg_waveform(model, 0.8, n_samples=400, sampling_rate=250)
            return jnp.sum((z - target) ** 2)

        grads = jax.grad(loss)(m)
        for name in ("ti", "ai", "bi"):
            g = np.asarray(getattr(grads, name))
            assert np.all(np.isfinite(g)), name
            for i in range(5):
                eps = 1e-6
                arr = getattr(m, name)
                where = lambda mm, n=name: getattr(mm, n)  # noqa: E731
                up = eqx.tree_at(where, m, arr.at[i].add(eps))
                dn = eqx.tree_at(where, m, arr.at[i].add(-eps))
                fd = (loss(up) - loss(dn)) / (2 * eps)
                assert abs(fd - g[i]) <= 1e-4 * max(1.0, abs(fd)), (name, i, fd, g[i])


def _median_beat(data_dir, pre_s=0.30, post_s=0.45):
    wfdb = pytest.importorskip("wfdb")
    rec = wfdb.rdrecord(str(data_dir / "wfdb" / "100"))
    ann = wfdb.rdann(str(data_dir / "wfdb" / "100"), "atr")
    fs = rec.fs
    sig = rec.p_signal[:, rec.sig_name.index("MLII")]
    r = np.array([s for s, sym in zip(ann.sample, ann.symbol, strict=True) if sym == "N"])
    pre, post = int(pre_s * fs), int(post_s * fs)
    r = r[(r > pre) & (r < len(sig) - post)]
    beats = np.stack([sig[i - pre : i + post] for i in r])
    beats = beats - np.median(beats[:, : int(0.05 * fs)], axis=1, keepdims=True)
    return np.median(beats, axis=0), int(round(np.median(np.diff(r)))), pre, fs


def test_fit_to_real_median_beat(data_dir):
    """Fit (ti, ai, bi, gain, offset) to record 100's median normal beat (MLII)."""
    import optax

    y_np, n, pre, fs = _median_beat(data_dir)
    y = jnp.asarray(y_np)
    hr = 60.0 * fs / n  # RR quantised to the record's samples: the beat grid is its grid

    def beat(m):
        _, z, _, _ = steady_state_beat(m, hr, n_samples=n, theta_start=-2 * math.pi * pre / n)
        return z[: y.shape[0]]

    def affine(z):  # least-squares gain and offset (fitted exactly at every step)
        zc, yc = z - z.mean(), y - y.mean()
        return jnp.sum(zc * yc) / jnp.sum(zc * zc) * zc + y.mean()

    m0 = McSharryECG.default()
    scale = jnp.abs(m0.ai) + 1.0
    p0 = {"ti": m0.ti, "u": m0.ai / scale, "log_b": jnp.log(m0.bi)}

    def to_model(p):
        return McSharryECG(p["ti"], p["u"] * scale, jnp.exp(p["log_b"]))

    def loss(p):
        return jnp.mean((affine(beat(to_model(p))) - y) ** 2)

    opt = optax.adam(0.01)

    @jax.jit
    def fit(p):
        def step(carry, _):
            p, s = carry
            g = jax.grad(loss)(p)
            u, s = opt.update(g, s, p)
            return (optax.apply_updates(p, u), s), None

        (p, _), _ = jax.lax.scan(step, (p, opt.init(p)), None, length=300)
        return p

    fitted = to_model(fit(p0))
    yhat0, yhat = affine(beat(m0)), affine(beat(fitted))
    rmse0 = float(jnp.sqrt(jnp.mean((yhat0 - y) ** 2)))
    rmse = float(jnp.sqrt(jnp.mean((yhat - y) ** 2)))
    r = float(jnp.corrcoef(yhat, y)[0, 1])
    assert r >= 0.95
    assert rmse <= 0.5 * rmse0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"heart_rate": 0}, "heart_rate"),
        ({"heart_rate": -60}, "heart_rate"),
        ({"heart_rate": float("nan")}, "heart_rate"),
        ({"sampling_rate": -250}, "sampling_rate"),
        ({"duration": 0}, "duration"),
        ({"duration": -1}, "duration"),
        ({"sampling_rate": 0}, "sampling_rate"),
        ({"ti": (0, 1, 2)}, r"ti must have shape \(5,\)"),
        ({"ai": np.ones((5, 2))}, "ai must have shape"),
        ({"bi": (0.1, 0.1, np.nan, 0.1, 0.1)}, "bi must be finite"),
        ({"ai": (1.2, np.nan, 30, -7.5, 0.75)}, "ai must be finite"),
        ({"bi": (0.1, 0.1, -0.1, 0.1, 0.1)}, "bi .* > 0"),
        ({"heart_rate_std": -1}, "heart_rate_std"),
    ],
)
def test_bad_input_raises(kwargs, match):
    args = {"duration": 2, "sampling_rate": 250}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match) as info:
        simulate_ecg(**args, key=jax.random.key(0))
    assert any(w in str(info.value) for w in (">", "shape", "finite"))  # names the valid range


def test_bad_model_parameters_raise():
    with pytest.raises(ValueError, match="ti must have shape"):
        McSharryECG(jnp.zeros(4), jnp.zeros(5), jnp.ones(5))
    with pytest.raises(ValueError, match="bi .* > 0"):
        McSharryECG.from_degrees(ECGSYN_TI_DEGREES, ECGSYN_AI, (0.1, 0.0, 0.1, 0.1, 0.1))
    with pytest.raises(ValueError, match="finite"):
        McSharryECG(jnp.full(5, jnp.nan), jnp.zeros(5), jnp.ones(5))
    with pytest.raises(ValueError, match="hr_scaling"):
        simulate_ecg(2, 250, 70, key=jax.random.key(0), hr_scaling="fast")
