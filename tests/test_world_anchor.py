"""The McSharry energy anchor: fit recovery on a synthetic strip, and the action through the
pharmacology (same kernel, explicit pharmacology)."""

import jax.numpy as jnp
import numpy as np
import pytest

from ecg_world.actions import Action, make_action
from ecg_world.calibrated import default_calibration
from ecg_world.world.anchor import (
    AnchorConfig,
    anchor_post_strips,
    anchor_pre_strips,
    fit_anchor,
    simulate_strip,
)

CFG = AnchorConfig(n_steps=800)


@pytest.fixture(scope="module")
def truth_and_fit():
    # a beat away from the default start: T later, wider and smaller, R taller and wider
    ti = jnp.deg2rad(jnp.array([-70.0, -15.0, 0.0, 15.0, 100.0])) * jnp.array(
        [1.05, 1.0, 1.0, 1.0, 1.08])
    ai = jnp.array([[1.2, -5.0, 30.0, -7.5, 0.75]]) * jnp.array([1.0, 1.0, 1.1, 1.0, 0.9])
    bi = jnp.array([0.25, 0.1, 0.1, 0.1, 0.4]) * jnp.array([1.0, 1.0, 1.06, 1.0, 1.07])
    x = simulate_strip(ti, ai, bi, jnp.float32(0.9), jnp.float32(0.25), jnp.zeros(1),
                       jnp.zeros(1), n_samples=1024, config=CFG)
    # the rhythm starts 8 ms and 1% off, as a detector at 250 Hz would give
    fit = fit_anchor(np.asarray(x)[None], CFG, rr_s=[0.909], t_first_r=[0.242])
    return (np.asarray(ti), np.asarray(ai), np.asarray(bi), np.asarray(x)), fit


def test_anchor_fit_recovers_r_and_t_waves(truth_and_fit):
    (ti, ai, bi, x), fit = truth_and_fit
    rel = lambda a, b: abs(float(a) / float(b) - 1.0)
    # R wave: amplitude and width; T wave: angle, amplitude and width (within 5 %)
    assert rel(fit.ai[0, 0, 2], ai[0, 2]) < 0.05
    assert rel(fit.bi[0, 2], bi[2]) < 0.05
    for got, want in ((fit.ti[0, 4], ti[4]), (fit.ai[0, 0, 4], ai[0, 4]),
                      (fit.bi[0, 4], bi[4])):
        assert rel(got, want) < 0.05
    assert float(fit.corr[0]) >= 0.99
    assert abs(float(fit.rr_s[0]) - 0.9) < 0.005
    assert abs(float(fit.t_first_r[0]) - 0.25) < 0.004
    # the fitted pre strip is the fit itself: its r with the data is the fit's reported r
    pre = np.asarray(anchor_pre_strips(fit, n_samples=1024, config=CFG))
    assert pre.shape == (1, 1, 1024)
    r = np.corrcoef(pre[0, 0], x[0])[0, 1]
    assert r >= 0.99 and abs(r - float(fit.corr[0])) < 1e-3


def test_anchor_applies_the_drug_through_the_pharmacology(truth_and_fit):
    (_, _, _, x), fit = truth_and_fit
    pharm = default_calibration().pharmacology
    acts = [make_action(d, None, None, 2.0, library=pharm.library)
            for d in ("placebo", "dofetilide")]
    action = Action(np.array([int(a.drug) for a in acts]),
                    np.array([float(a.dose_mg) for a in acts], np.float32),
                    np.array([2.0, 2.0], np.float32), pharm.library)
    two = type(fit)(*[jnp.concatenate([v, v]) for v in
                      (fit.ti, fit.ai, fit.bi, fit.offset, fit.slope, fit.rr_s,
                       fit.t_first_r, fit.rmse, fit.corr)])
    post, rr = anchor_post_strips(two, action, pharm, n_samples=1024, config=CFG)
    post = np.asarray(post)
    assert post.shape == (2, 1, 1024) and np.all(np.isfinite(post))
    # dofetilide (IKr block) moves the T wave later: its T peak comes after placebo's
    t = np.arange(1024) / 250.0
    r0 = float(fit.t_first_r[0])
    win = (t > r0 + 0.15) & (t < r0 + 0.7)
    t_peak = [t[win][np.argmax(post[i, 0, win])] for i in range(2)]
    assert t_peak[1] > t_peak[0] + 0.01
    # the ODE's predicted change over the first beat (later beats drift in phase with the
    # heart-rate change): placebo leaves the fitted pre strip nearly as it was, while
    # dofetilide changes it more
    pre = np.asarray(anchor_pre_strips(two, n_samples=1024, config=CFG))
    first = t < r0 + 0.7
    d = [float(np.sqrt(np.mean((post[i, 0, first] - pre[i, 0, first]) ** 2))) for i in range(2)]
    assert d[0] < 0.05 * np.ptp(pre[0, 0]) and d[1] > 1.3 * d[0], d
