"""`ecg-world synth`: virtual cohorts with exact intervals, risk labels and splits."""

import numpy as np
import pytest

from ecg_world.cli import main
from ecg_world.cohort import read_cohort, synthesize

pytest.importorskip("leads_jax.physics.ecg_fiducials")

N, TIMES = 4, (1.0, 3.0)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("cohort") / "cohort.nc"
    rc = main(["synth", "--n-patients", str(N), "--out", str(out), "--seed", "3",
               "--times", *map(str, TIMES), "--sampling-rate", "125", "--duration", "4",
               "--leads", "I", "V2", "--long-qt-share", "0.5"])
    assert rc == 0 and out.exists()
    return read_cohort(out)


def test_dims_and_units(cohort):
    ds = cohort
    assert ds.ecg.dims == ("patient", "action", "time_after_dose", "lead", "time")
    assert ds.sizes["patient"] == N and ds.sizes["time"] == 500
    assert list(ds.action.values) == ["placebo", "dofetilide", "quinidine", "ranolazine",
                                      "verapamil"]
    assert ds.ecg.attrs["units"] == "mV" and ds.attrs["sampling_rate_hz"] == 125.0
    assert np.isfinite(ds.ecg.values).all()
    # R-aligned: the first R peak sits at first_r_peak_s (lead I: R taller than T)
    t0 = ds.attrs["first_r_peak_s"]
    seg = ds.ecg.sel(lead="I").isel(time=slice(0, int(0.6 * 125)))
    peak_t = seg.time.values[np.asarray(seg.argmax("time")).ravel()]
    assert np.median(np.abs(peak_t - t0)) <= 0.025


def test_exact_intervals_and_labels(cohort):
    ds = cohort
    qtcf = ds.QT / np.cbrt(ds.RR / 1000.0)
    np.testing.assert_allclose(ds.QTcF, qtcf, rtol=1e-5)
    assert bool((ds.qtcf_ge_500 == (ds.QTcF >= 500)).all())
    assert bool((ds.dqtcf_ge_60 == (ds.QTcF - ds.baseline_QTcF >= 60)).all())
    assert bool((ds.torsade_risk == (ds.qtcf_ge_500 | ds.dqtcf_ge_60)).all())
    # drugs act through the calibrated map: dofetilide lengthens QTcF vs placebo at 3 h
    d = ds.QTcF.sel(action="dofetilide", time_after_dose=3.0) - ds.QTcF.sel(
        action="placebo", time_after_dose=3.0)
    assert float(d.mean()) > 15
    # doses from 0.25x to 1x the study dose (the calibrated range), placebo none
    m = ds.dose_multiplier.sel(action="dofetilide").values
    assert ((m >= 0.25) & (m <= 1.0)).all()
    assert (ds.dose_mg.sel(action="placebo").values == 0).all()


def test_patient_level_splits(cohort):
    split = cohort.split.values
    assert set(split) <= {"train", "val", "test"}
    assert split.shape == (N,)  # one split per patient: no patient in two splits


def test_bad_input():
    with pytest.raises(ValueError, match="n_patients"):
        synthesize(0)
    with pytest.raises(ValueError, match="times_h"):
        synthesize(2, times_h=(-1.0,))
    with pytest.raises(ValueError, match="unknown leads"):
        synthesize(2, leads=("X9",))
    with pytest.raises(ValueError, match="unknown drugs"):
        synthesize(2, drugs=("aspirin",))


def test_cli_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("synth", "calibrate"):
        assert cmd in out
    assert main(["synth", "--n-patients", "0", "--out", "x.nc"]) == 2  # clear error, no trace


def test_virtual_baselines_match_the_study(data_dir):
    """Virtual patients (no long-QT share) re-measured on the kernel reproduce the study's
    baseline distribution, computed from the table (not from the calibration file)."""
    import pandas as pd

    from ecg_world.calibrated import default_calibration
    from ecg_world.calibration_report import baseline_check

    csv = data_dir / "ecgrdvq/SCR-002.Clinical.Data.dev.csv"
    chk = baseline_check(default_calibration(), csv).set_index("interval")
    # the study side, straight from the raw rows: pre-dose QTcF per subject (mean of periods)
    raw = pd.read_csv(csv)
    pre = raw[raw.TPT == -0.5]
    qtcf = (pre.QT / np.cbrt(pre.RR / 1000.0)).groupby([pre.RANDID, pre.EXTRT]).mean()
    qtcf = qtcf.groupby(level=0).mean()
    assert chk.loc["QTcF", "study_mean"] == pytest.approx(qtcf.mean(), abs=0.05)
    assert chk.loc["QTcF", "n_study"] == raw.RANDID.nunique()
    for k, r in chk.iterrows():
        se = r.study_sd / np.sqrt(r.n_study)
        assert abs(r.virtual_mean - r.study_mean) < 2.5 * se + 2.0, (k, dict(r))
        assert 0.7 < r.virtual_sd / r.study_sd < 1.3, (k, dict(r))
