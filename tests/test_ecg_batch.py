"""The typed hand-off to the world model: ECGBatch round-trips through the cohort netCDF."""

import jax
import numpy as np
import pytest

from ecg_world import ECGBatch
from ecg_world.batch import PLAUSIBLE_RANGES, SPLITS, Intervals, RiskLabels
from ecg_world.cohort import read_cohort, synthesize_batch, write_cohort


@pytest.fixture(scope="module")
def batch():
    # the shapes of test_cohort's cohort: in one process the compiled stages are reused
    return synthesize_batch(4, seed=5, times_h=(1.0, 3.0), sampling_rate=125, duration_s=4,
                            leads=("I", "V2"))


def _assert_same(a, b):
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_fields_are_named_and_shaped(batch):
    p, a, t = batch.shape
    assert (p, a, t) == (4, 5, 2)
    assert batch.signals.shape == (4, 5, 2, 2, 500)
    assert batch.baseline_signals.shape == (4, 2, 500)
    assert isinstance(batch.intervals, Intervals) and batch.intervals.qtcf.shape == (4, 5, 2)
    assert isinstance(batch.labels, RiskLabels)
    assert batch.action_names == ("placebo", "dofetilide", "quinidine", "ranolazine",
                                  "verapamil")
    assert batch.library.names[int(batch.drug[0, 1, 0])] == "dofetilide"
    assert batch.action.library == batch.library.names
    np.testing.assert_allclose(batch.intervals.qtcf,
                               batch.intervals.qt / np.cbrt(batch.intervals.rr / 1000), rtol=1e-5)
    np.testing.assert_allclose(batch.dqtcf, batch.intervals.qtcf
                               - batch.baseline_intervals.qtcf[:, None, None], atol=1e-3)
    assert set(np.asarray(batch.split).tolist()) <= set(range(len(SPLITS)))
    # labels are the thresholds of the intervals
    assert bool(np.all(np.asarray(batch.labels.qtcf_gt_450)
                       == (np.asarray(batch.intervals.qtcf) > 450)))
    # the flag is the physiological ranges
    lo, hi = PLAUSIBLE_RANGES["pr"]
    pr = np.asarray(batch.intervals.pr)
    assert not np.any(np.asarray(batch.plausible) & ((pr < lo) | (pr > hi)))


def test_round_trip_through_the_cohort_netcdf(batch, tmp_path):
    path = batch.to_netcdf(tmp_path / "c.nc")
    back = ECGBatch.from_netcdf(path)
    _assert_same(batch, back)
    for f in ("sampling_rate_hz", "lead_names", "action_names", "library", "attrs_json"):
        assert getattr(back, f) == getattr(batch, f), f
    # the Dataset is the cohort's layout (named dims, units)
    ds = read_cohort(path)
    assert ds.ecg.dims == ("patient", "action", "time_after_dose", "lead", "time")
    assert ds.QTcF.attrs["units"] == "ms" and ds.ecg.attrs["units"] == "mV"
    _assert_same(ECGBatch.from_dataset(ds), batch)


def test_flatten_and_split(batch):
    cells = batch.flatten()
    assert cells.signals.shape == (40, 2, 500) and cells.baseline_signals.shape == (40, 2, 500)
    # cell k = (patient, action, time) in row-major order, with its patient's baseline
    k = 1 * 10 + 2 * 2 + 1
    np.testing.assert_array_equal(cells.signals[k], batch.signals[1, 2, 1])
    np.testing.assert_array_equal(cells.baseline_signals[k], batch.baseline_signals[1])
    assert int(cells.patient[k]) == 1 and float(cells.action.time_h[k]) == 3.0
    for name in SPLITS:
        part = batch.select_split(name)
        ids = np.asarray(part.patient_id)
        assert np.all(np.asarray(batch.split)[ids] == SPLITS.index(name))
    with pytest.raises(ValueError, match="unknown split"):
        batch.select_split("holdout")


def test_from_dataset_names_what_is_missing(batch, tmp_path):
    ds = batch.to_dataset().drop_vars(["QTcF", "baseline_ecg"])
    with pytest.raises(ValueError, match="QTcF"):
        ECGBatch.from_dataset(ds)
    write_cohort(batch.to_dataset(), tmp_path / "ok.nc")
    with pytest.raises(FileNotFoundError):
        ECGBatch.from_netcdf(tmp_path / "none.nc")
