"""Virtual twins: McSharry parameters fitted to measured baseline intervals."""

import jax
import numpy as np
import pytest

from ecg_world.calibrated import default_pharmacology
from ecg_world.pharmacology import apply_action, scale_waves
from ecg_world.twin import kernel_intervals, twin_from_intervals

pytest.importorskip("leads_jax.physics.ecg_fiducials")

KI = jax.jit(kernel_intervals)  # compiled once for the module

# (RR, PR, QRS, QT) ms: a typical, a fast short-PR and a slow long-QT subject
INTERVALS = np.array([[1057.0, 165.0, 98.0, 401.0], [780.0, 132.0, 84.0, 352.0],
                      [1300.0, 205.0, 112.0, 470.0]])


@pytest.fixture(scope="module")
def twins():
    return twin_from_intervals(*INTERVALS.T)


def test_twin_reproduces_intervals(twins):
    params, fit = twins
    np.testing.assert_allclose(np.asarray(fit.achieved), INTERVALS, atol=1.0)
    np.testing.assert_allclose(np.asarray(params.heart_rate), 60000.0 / INTERVALS[:, 0],
                               rtol=1e-5)
    # re-measure independently of the fit's own bookkeeping
    f = jax.jit(jax.vmap(kernel_intervals))
    np.testing.assert_allclose(np.asarray(f(params.ecg, params.heart_rate)), INTERVALS,
                               atol=1.0)


def test_wave_stretches_realise_fractional_changes(twins):
    params, _ = twins
    m = jax.tree_util.tree_map(lambda x: x[0], params.ecg)
    hr = params.heart_rate[0]
    f = KI
    base = np.asarray(f(m, hr))
    for k, args in ((3, (0.1, 0.0, 0.0)), (1, (0.0, 0.1, 0.0)), (2, (0.0, 0.0, 0.1))):
        got = np.asarray(f(scale_waves(m, *args), hr))
        assert got[k] / base[k] - 1 == pytest.approx(0.1, abs=0.01)


def test_drug_prolongs_twin_qt(twins):
    from ecg_world.actions import make_action

    params, _ = twins
    p0 = jax.tree_util.tree_map(lambda x: x[0], params)
    step = jax.jit(lambda p, a, pharm: apply_action(p, a, pharm=pharm))
    qt = {}
    for d in ("placebo", "dofetilide"):
        q = step(p0, make_action(d, time_h=2.5), default_pharmacology())
        qt[d] = float(KI(q.ecg, q.heart_rate)[3])
    assert qt["dofetilide"] - qt["placebo"] > 30.0


@pytest.mark.parametrize("bad", [
    dict(rr_ms=[np.nan], pr_ms=[160.0], qrs_ms=[90.0], qt_ms=[400.0]),
    dict(rr_ms=[1000.0], pr_ms=[-5.0], qrs_ms=[90.0], qt_ms=[400.0]),
    dict(rr_ms=[1000.0], pr_ms=[160.0], qrs_ms=[90.0], qt_ms=[2000.0]),
])
def test_bad_intervals(bad):
    with pytest.raises(ValueError, match="must be finite and within"):
        twin_from_intervals(**bad)
