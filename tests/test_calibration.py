"""The committed calibration against targets recomputed from the study table (fast), and the
full calibration / kernel re-measurement (slow)."""

import json

import numpy as np
import pytest

from ecg_world.calibration import (
    CALIBRATED_JSON,
    Calibration,
    calibrate,
    coverage_table,
    default_calibration,
    predicted_time_courses,
)
from ecg_world.ecgrdvq import compute_targets

CSV = "ecgrdvq/SCR-002.Clinical.Data.dev.csv"
ACCEPT = ("QTcF", "PR", "HR")


@pytest.fixture(scope="module")
def targets(data_dir):
    return compute_targets(data_dir / CSV)


def test_committed_parameters_have_provenance(targets):
    doc = json.loads(CALIBRATED_JSON.read_text())
    prov = doc["provenance"]
    for k in ("created_utc", "subjects", "calibration_drugs", "git_commit", "method"):
        assert k in prov
    assert set(prov["calibration_drugs"]) == set(targets.drug.values)
    cal = default_calibration()
    # the map is shared: scalar parameters only, no per-drug ECG entries
    assert all(np.ndim(v) == 0 for v in cal.emap.to_dict().values())
    assert set(cal.pk) >= {"dofetilide", "quinidine", "ranolazine", "verapamil"}
    for d, p in cal.pk.items():
        lo, hi = cal.library[d].unbound_fraction_range
        assert lo - 1e-6 <= p["unbound_fraction"] <= hi + 1e-6


def test_committed_parameters_reproduce_recomputed_targets(targets):
    """Effect-space check of the committed parameters against the table's targets (the
    kernel re-measurement is the slow test below)."""
    pred = predicted_time_courses(default_calibration(), targets, n_virtual=256)
    cov = coverage_table(pred.sim_mean, targets).set_index(["drug", "endpoint"])
    for d in targets.drug.values:
        for e in ACCEPT:
            assert cov.loc[(d, e), "inside_band"] >= 0.8, (d, e)
        assert cov.loc[(d, "QTcF"), "rmse"] < 10.0
    # the study's regression-to-the-mean term is the only difference to the population mean
    diff = (pred.sim_mean - pred.sim_mean_population).sel(time=targets.time > -0.5)
    np.testing.assert_allclose(diff.values, np.broadcast_to(
        targets.dd_rtm.values[:, None, :], diff.shape), atol=1e-4)
    # peak timing and size of the two strong hERG blockers
    for d in ("dofetilide", "quinidine"):
        sim = pred.sim_mean.sel(drug=d, endpoint="QTcF")
        assert 50 < float(sim.max()) < 95
        assert 1.0 <= float(sim.idxmax("time")) <= 4.0


def test_committed_kernel_sensitivity_includes_qt_pr_coupling():
    """The effect-space fit must see the kernel's QT -> PR cross-coupling (T/P overlap) as
    well as the rate coupling, otherwise it under-predicts the kernel's PR under hERG block."""
    s = default_calibration().sensitivity
    assert -1.2 < s["dPR_dHR"] < -0.4
    assert 0.5 < s["dPR_dqt"] < 10.0


def test_calibration_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        Calibration.from_json(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text(json.dumps({"effect_map": {}}))
    with pytest.raises(ValueError, match="missing sections"):
        Calibration.from_json(tmp_path / "bad.json")


def test_calibrate_rejects_table_without_columns(data_dir, tmp_path):
    import pandas as pd

    raw = pd.read_csv(data_dir / CSV, nrows=50).drop(columns=["RR"])
    with pytest.raises(ValueError, match="RR"):
        calibrate(raw)


@pytest.mark.slow
def test_kernel_simulated_cohort_meets_acceptance(data_dir, targets):
    from ecg_world.calibration_report import simulate_study_kernel

    ker = simulate_study_kernel(default_calibration(), data_dir / CSV, targets=targets)
    cov = coverage_table(ker.sim_mean, targets).set_index(["drug", "endpoint"])
    misses = [(d, e, round(cov.loc[(d, e), "inside_band"], 2)) for d in targets.drug.values
              for e in ACCEPT if cov.loc[(d, e), "inside_band"] < 0.8]
    assert not misses


@pytest.mark.slow
def test_full_calibration_is_reproducible(data_dir, targets):
    cal, _ = calibrate(data_dir / CSV, max_nfev=60)
    pred = predicted_time_courses(cal, targets, n_virtual=256)
    cov = coverage_table(pred.sim_mean, targets).set_index(["drug", "endpoint"])
    assert all(cov.loc[(d, e), "inside_band"] >= 0.8 for d in targets.drug.values
               for e in ACCEPT)


def test_table_guards_never_give_all_nan_targets(data_dir):
    """A table without placebo or baseline rows is a clear error; a table without
    concentrations falls back to the drugs.json PK (documented in fit_pk), with a warning."""
    import pandas as pd

    from ecg_world.calibration import fit_pk
    from ecg_world.ecgrdvq import read_ecgrdvq

    raw = pd.read_csv(data_dir / CSV)
    with pytest.raises(ValueError, match="no placebo rows"):
        compute_targets(raw[raw.EXTRT != "Placebo"])
    with pytest.raises(ValueError, match="no pre-dose baseline rows"):
        compute_targets(raw[raw.TPT != -0.5])
    with pytest.raises(ValueError, match="in the placebo period"):
        compute_targets(raw[~((raw.TPT == -0.5) & (raw.EXTRT == "Placebo"))])
    with pytest.raises(ValueError, match="only placebo rows"):
        compute_targets(raw[raw.EXTRT == "Placebo"])
    no_conc = raw.drop(columns=["PCSTRESN", "PCSTRESU"])
    t = compute_targets(no_conc)
    assert np.isfinite(t.dd_mean.sel(endpoint="QTcF")).mean() > 0.9
    assert np.isnan(t.conc_median).all()
    with pytest.warns(UserWarning, match="stay at the drugs.json values"):
        assert fit_pk(read_ecgrdvq(no_conc)) == {}


CV_DIR = CALIBRATED_JSON.parents[2] / "benchmarks/results/calibration_ecgrdvq"


def test_subject_folds_partition_the_subjects():
    from ecg_world.calibration import subject_folds

    subs = [1001, 1002, 1003, 1004, 1006, 1007, 1011, 1012, 1013]
    folds = subject_folds(subs, 4, seed=0)
    assert len(folds) == 4 and sorted(sum(folds, [])) == subs
    assert {len(f) for f in folds} <= {2, 3}
    assert folds == subject_folds(list(reversed(subs)), 4, seed=0)  # seeded, order-free
    with pytest.raises(ValueError, match="k must lie"):
        subject_folds(subs, 1)


def test_committed_cross_validation_matches_its_predictions(targets):
    """The committed cross-validation table is what its committed out-of-fold predictions
    give against the table's bands (recomputed here), with provenance."""
    import xarray as xr

    doc = json.loads((CV_DIR / "cross_validation.json").read_text())
    prov = doc["provenance"]
    for k in ("created_utc", "git_commit", "command", "k", "seed", "subjects"):
        assert k in prov
    folds = doc["folds"]
    assert len(folds) == prov["k"] and sorted(sum(folds, [])) == sorted(prov["subjects"])
    assert sorted(prov["subjects"]) == sorted(targets.attrs["subjects"])
    pooled = xr.load_dataset(CV_DIR / "cross_validation.nc", engine="h5netcdf")
    cov = coverage_table(pooled.sim_mean, targets).set_index(["drug", "endpoint"])
    for r in doc["rows"]:
        assert cov.loc[(r["drug"], r["endpoint"]), "inside_band"] == pytest.approx(
            r["cv_inside_band"])
        assert cov.loc[(r["drug"], r["endpoint"]), "rmse"] == pytest.approx(r["cv_rmse"],
                                                                             rel=1e-4)


@pytest.mark.slow
def test_cross_validation_is_reproducible(data_dir):
    import xarray as xr

    from ecg_world.calibration import cross_validate

    doc = json.loads((CV_DIR / "cross_validation.json").read_text())
    p = doc["provenance"]
    pooled, _, folds = cross_validate(data_dir / CSV, k=p["k"], seed=p["seed"],
                                      max_nfev=p["max_nfev"], n_virtual=p["n_virtual"])
    assert folds == doc["folds"]
    ref = xr.load_dataset(CV_DIR / "cross_validation.nc", engine="h5netcdf")
    np.testing.assert_allclose(pooled.sim_mean.values, ref.sim_mean.values, atol=0.5)


def test_two_part_map_fits_jtpeak_with_nonzero_mitigation(targets):
    """The committed map carries the study's multichannel signature: it was fitted to
    J-Tpeak_c too, its late-Na and L-type Ca weights are positive (with their priors
    recorded), and removing ranolazine's late-Na block raises its predicted ddQTcF and
    ddJTpc."""
    from ecg_world.calibration import MAP_PRIORS, mitigation_check

    cal = default_calibration()
    assert "JTpc" in targets.endpoint.values
    assert "JTpc" in cal.fit_info["endpoints"]
    assert set(cal.fit_info["priors"]) == set(MAP_PRIORS)
    assert float(cal.emap.w_inal) > 0 and float(cal.emap.w_ical) > 0
    assert 0.0 < float(cal.emap.jt_share) < 1.0
    mit = mitigation_check(cal, targets, n_virtual=64).set_index(["drug", "block_removed"])
    r = mit.loc[("ranolazine", "INaL")]
    assert r.peak_ddQTcF_without > r.peak_ddQTcF_as_fitted
    assert r.peak_ddJTpc_without > r.peak_ddJTpc_as_fitted
    # J-Tpeak: dofetilide (pure hERG) is prolonged far more than the mixed blockers
    pred = predicted_time_courses(cal, targets, n_virtual=64)
    jt = pred.sim_mean_population.sel(endpoint="JTpc").max("time")
    assert float(jt.sel(drug="dofetilide")) > 4 * float(jt.sel(drug="ranolazine"))
    assert float(jt.sel(drug="dofetilide")) > 4 * float(jt.sel(drug="verapamil"))


def test_committed_report_shows_multichannel_terms_and_peak_sd():
    doc = json.loads((CV_DIR / "calibration_summary.json").read_text())
    terms = {r["term"]: r for r in doc["multichannel_terms"]}
    cal = default_calibration()
    for k in ("w_inal", "w_ical", "jt_share"):
        assert terms[k]["value"] == pytest.approx(float(getattr(cal.emap, k)), rel=1e-5)
    assert {r["drug"] for r in doc["peak_sd"]} == {"dofetilide", "quinidine", "ranolazine",
                                                   "verapamil"}
    for r in doc["peak_sd"]:
        assert r["sim_plus_resid_sd"] == pytest.approx(np.hypot(r["sim_sd"], r["resid_sd"]))


def test_committed_variability_is_per_drug_exposure_plus_pd():
    """Each drug keeps its own exposure variability (from its concentrations) relative to the
    population's, and the PD variability is no longer fitted to zero."""
    cal = default_calibration()
    om = float(cal.variability.omega_exposure)
    for d in ("dofetilide", "quinidine", "ranolazine", "verapamil"):
        p = cal.pk[d]
        assert p["exposure_scale"] == pytest.approx(p["omega_exposure"] / om, rel=1e-5)
        assert cal.library[d].pk["exposure_scale"] == pytest.approx(p["exposure_scale"])
    assert float(cal.variability.omega_pd) > 0.05


def test_pk_absorption_chosen_by_aic(data_dir):
    """Immediate-release drugs are fitted with one and with two absorption stages and keep
    the one with the lower AIC; the extended-release product keeps its release stage. On the
    study, dofetilide's slow rise needs the transit stage; quinidine's does not."""
    from ecg_world.calibration import fit_pk
    from ecg_world.ecgrdvq import as_read_table

    pk = fit_pk(as_read_table(data_dir / CSV))
    assert pk["ranolazine"]["absorption"] == "release" and len(pk["ranolazine"]["aic"]) == 1
    for d in ("dofetilide", "quinidine", "verapamil"):
        aic = pk[d]["aic"]
        assert len(aic) == 2
        assert pk[d]["absorption"] == ("transit" if aic[1] < aic[0] else "first-order")
        assert ("release_per_h" in pk[d]) == (pk[d]["absorption"] == "transit")
    assert pk["dofetilide"]["absorption"] == "transit"
    assert pk["quinidine"]["absorption"] == "first-order"
    committed = default_calibration()
    assert committed.pk["dofetilide"]["absorption"] == "transit"
    assert committed.library["dofetilide"].pk["release_per_h"] == pytest.approx(
        committed.pk["dofetilide"]["release_per_h"])
