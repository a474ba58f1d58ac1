"""Reference fiducials and intervals of the McSharry ECG (the labels later code is scored on)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from leads_jax.physics.ecg_fiducials import (
    FIDUCIAL_NAMES,
    INTERVAL_NAMES,
    qtc_bazett,
    qtc_fridericia,
    reference_intervals,
    reference_intervals_table,
    steady_state_beat,
)
from leads_jax.physics.mcsharry import ECGSYN_AI, ECGSYN_BI, McSharryECG, ecg_waveform

RATES = np.arange(50.0, 111.0, 10.0)


@pytest.fixture(scope="module")
def tables():
    m = McSharryECG.default()
    return {
        sc: reference_intervals_table(m, RATES, hr_scaling=sc)
        for sc in ("physiological", "ecgsyn")
    }


def test_physiological_scaling_keeps_qtcf_flat(tables):
    ds = tables["physiological"]
    assert bool(ds.valid.all())
    slope = np.polyfit(RATES, ds.QTc_fridericia.values, 1)[0]
    assert abs(slope) <= 0.2  # ms per bpm over 50-110 bpm
    assert np.ptp(ds.QTc_fridericia.values) <= 0.2 * 60
    # QRS does not depend on rate; QT shortens as RR^(1/3); PR shortens mildly
    assert np.ptp(ds.QRS.values) <= 6.0
    expo = np.polyfit(np.log(ds.RR.values), np.log(ds.QT.values), 1)[0]
    assert 0.28 < expo < 0.38
    assert np.all(np.diff(ds.PR.values) < 0)


def test_ecgsyn_scaling_qt_rate_dependence(tables):
    """ECGSYN scales by the mean rate: QT ~ RR^0.6 (QTcF falls with rate), QRS ~ RR^0.5."""
    ds = tables["ecgsyn"]
    assert bool(ds.valid.all())
    expo = np.polyfit(np.log(ds.RR.values), np.log(ds.QT.values), 1)[0]
    assert 0.55 < expo < 0.7
    assert np.polyfit(RATES, ds.QTc_fridericia.values, 1)[0] < -1.0


def test_intervals_are_consistent(tables):
    for ds in tables.values():
        np.testing.assert_allclose(ds.PR, ds.qrs_onset - ds.p_onset, atol=1e-3)
        np.testing.assert_allclose(ds.QRS, ds.qrs_offset - ds.qrs_onset, atol=1e-3)
        np.testing.assert_allclose(ds.QT, ds.t_end - ds.qrs_onset, atol=1e-3)
        np.testing.assert_allclose(ds.RR, 60000.0 / RATES)
        np.testing.assert_allclose(ds.QTc_bazett, ds.QT / np.sqrt(ds.RR / 1000), rtol=1e-5)
        np.testing.assert_allclose(ds.QTc_fridericia, ds.QT / np.cbrt(ds.RR / 1000), rtol=1e-5)
        assert np.all(np.abs(ds.r_peak) < 2.0)  # R peak at the R-wave angle
        for name in INTERVAL_NAMES + FIDUCIAL_NAMES:
            assert ds[name].attrs["units"] == "ms"
    assert float(qtc_bazett(400.0, 640.0)) == pytest.approx(500.0)
    assert float(qtc_fridericia(400.0, 512.0)) == pytest.approx(500.0)


def test_fiducials_match_the_simulated_waveform():
    """The steady-state beat is the beat of a long simulation; the R peak is its maximum."""
    m = McSharryECG.default()
    hr, fs = 75.0, 1000
    rr = 60.0 / hr
    n = int(round(rr * fs))  # 800 samples per beat
    z = ecg_waveform(m, rr, n_samples=12 * n, sampling_rate=fs, resp_amplitude=0.0)
    last = np.asarray(z[10 * n : 11 * n])  # beat 10 starts at phase 0 (its R wave)
    t, zs, dz, _ = steady_state_beat(m, hr, n_samples=n, theta_start=0.0)
    # (after 8 s the start transient has decayed to e^-8 of its size)
    np.testing.assert_allclose(last, np.asarray(zs[:n]), atol=1e-3 * np.ptp(last))
    # exact slope (the ODE right-hand side) agrees with a finite difference
    fd = np.gradient(np.asarray(zs[:n]), 1.0 / fs)
    inner = slice(5, n - 5)
    assert np.max(np.abs(fd[inner] - np.asarray(dz[:n])[inner])) < 0.02 * np.max(np.abs(fd))
    # the reference R peak is the waveform's maximum (times relative to phase 0)
    r_peak = float(reference_intervals(m, hr)["r_peak"])
    i_r = int(np.argmax(np.concatenate([last[-n // 4 :], last[: n // 4]]))) - n // 4
    assert abs(1000.0 * i_r / fs - r_peak) <= 1.0


def test_pure_jax_vmap_jit_grad():
    base = McSharryECG.default()
    models = jax.tree.map(lambda *x: jnp.stack(x), base, McSharryECG.from_degrees(
        (-65.0, -14.0, 0.0, 14.0, 95.0), ECGSYN_AI, ECGSYN_BI))
    hrs = jnp.array([60.0, 90.0])
    out = jax.jit(jax.vmap(lambda m, h: reference_intervals(m, h)))(models, hrs)
    assert out["QT"].shape == (2,) and bool(jnp.all(out["valid"]))
    assert float(out["QT"][1]) < float(out["QT"][0])  # faster rate, shorter QT
    # differentiable: d QT / d theta_T > 0 (a later T wave lengthens QT)
    g = jax.grad(lambda m: reference_intervals(m, 70.0)["QT"])(base)
    for leaf in (g.ti, g.ai, g.bi):
        assert bool(jnp.all(jnp.isfinite(leaf)))
    assert float(g.ti[4]) > 0
    # a wider T wave (b_T) lengthens QT
    assert float(g.bi[4]) > 0


def test_sampling_is_fine_enough():
    """Labels converge: 2 kHz vs 8 kHz differ by well under a millisecond."""
    m = McSharryECG.default()
    a = reference_intervals(m, 70.0, sampling_rate=2000)
    b = reference_intervals(m, 70.0, sampling_rate=8000)
    for name in ("PR", "QRS", "QT"):
        assert abs(float(a[name]) - float(b[name])) < 0.5, name
    assert math.isfinite(float(a["QTc_fridericia"]))


def test_table_bad_input():
    with pytest.raises(ValueError, match="heart_rate"):
        reference_intervals_table(None, [60, 0])
    with pytest.raises(ValueError, match="heart_rate"):
        reference_intervals_table(None, [60, float("nan")])
    with pytest.raises(ValueError, match="sampling_rate"):
        reference_intervals_table(None, [60], sampling_rate=500)
