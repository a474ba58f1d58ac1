"""World-model data layer on a real (tiny) synthetic cohort: strips, splits, truth
perturbations, action features, bad inputs."""

import numpy as np
import pytest

from ecg_world.calibrated import default_calibration
from ecg_world.world.data import StripSpec, choose_leads, pairs_from_batch


@pytest.fixture(scope="module")
def batch():
    from ecg_world.cohort import synthesize_batch

    return synthesize_batch(6, seed=3, times_h=(2.0,), drugs=("dofetilide", "placebo"),
                            duration_s=4.2, leads=("I", "II", "V2"))


@pytest.fixture(scope="module")
def pharm(batch):
    return default_calibration().with_library(batch.library).pharmacology


def test_pairs_follow_the_cohort(batch, pharm):
    pairs = pairs_from_batch(batch, pharm, seed=0)
    assert choose_leads(batch.lead_names) == ("II", "V2")
    assert pairs.pre.shape == (6 * 2, 2, 1024) and pairs.post.shape == pairs.pre.shape
    # patient-level splits exactly as the cohort assigns them
    split_of = dict(zip(np.asarray(batch.patient_id).tolist(),
                        np.asarray(batch.split).tolist(), strict=True))
    for p, s in zip(np.asarray(pairs.patient), np.asarray(pairs.split), strict=True):
        assert split_of[int(p)] == int(s)
    # every pair of one patient shares its pre strip
    pre = np.asarray(pairs.pre)
    pat = np.asarray(pairs.patient)
    for p in np.unique(pat):
        rows = pre[pat == p]
        np.testing.assert_array_equal(rows[0], rows[-1])
    # the truth perturbation changes the strips, deterministically for a seed
    raw = pairs_from_batch(batch, pharm, seed=0, perturb=False)
    again = pairs_from_batch(batch, pharm, seed=0)
    np.testing.assert_array_equal(np.asarray(again.post), np.asarray(pairs.post))
    d = np.abs(np.asarray(pairs.post) - np.asarray(raw.post))
    assert 0.005 < float(d.mean()) < 0.2
    # placebo and dofetilide have different conditions; dofetilide blocks IKr
    names = [pairs.drug_names[int(i)] for i in np.asarray(pairs.drug)]
    f = np.asarray(pairs.features)
    dof = f[[n == "dofetilide" for n in names]]
    pla = f[[n == "placebo" for n in names]]
    assert np.all(dof[:, 0] > 0.05) and np.all(pla[:, 0] == 0)
    # a second realization redraws only the post strips' beat-to-beat variation
    two = pairs_from_batch(batch, pharm, seed=0, post_realization=1)
    np.testing.assert_array_equal(np.asarray(two.pre), pre)
    np.testing.assert_array_equal(np.asarray(two.truth_qtcf), np.asarray(pairs.truth_qtcf))
    d2 = np.abs(np.asarray(two.post) - np.asarray(pairs.post)).mean(axis=(1, 2))
    assert np.all(d2 > 1e-3), d2
    with pytest.raises(ValueError, match="post_realization"):
        pairs_from_batch(batch, pharm, seed=0, post_realization=-1)


def test_bad_cohort_inputs(batch, pharm):
    with pytest.raises(ValueError, match="lacks leads"):
        pairs_from_batch(batch, pharm, StripSpec(leads=("II", "V5")))
    with pytest.raises(ValueError, match="too short"):
        pairs_from_batch(batch, pharm, StripSpec(n_samples=2048, leads=("II",)))
    with pytest.raises(ValueError, match="lead II"):
        choose_leads(["I", "V2"])
    other = default_calibration().pharmacology
    if tuple(other.library.names) != tuple(batch.library.names):
        with pytest.raises(ValueError, match="drugs"):
            pairs_from_batch(batch, other)
