"""The SCR-002 / ECGRDVQ reader and the calibration targets computed from the table."""

import numpy as np
import pandas as pd
import pytest

from ecg_world.ecgrdvq import (
    BASELINE_TPT,
    REQUIRED_COLUMNS,
    baseline_regression,
    compute_targets,
    read_ecgrdvq,
    subject_baselines,
)

CSV = "ecgrdvq/SCR-002.Clinical.Data.dev.csv"


@pytest.fixture(scope="module")
def table(data_dir):
    return read_ecgrdvq(data_dir / CSV)


@pytest.fixture(scope="module")
def targets(table):
    return compute_targets(table)


def test_reader_repairs_and_names(table):
    assert set(table.drug.unique()) == {"placebo", "dofetilide", "quinidine", "ranolazine",
                                        "verapamil"}
    # two wrapped 32-bit PR values repaired, none left negative
    assert table.attrs["repairs"]["wrapped_intervals"] == 2
    assert (table.PR.dropna() > 0).all()
    assert table.PR.max() < 400
    # NA intervals are kept as NaN
    assert table.QT.isna().sum() == 6
    # dofetilide concentrations converted from pg/mL
    dof = table[(table.drug == "dofetilide")].conc_ng_ml.max()
    qui = table[(table.drug == "quinidine")].conc_ng_ml.max()
    assert 1.0 < dof < 10.0 and 500 < qui < 5000


def test_subjects_come_from_the_file(table, targets):
    assert targets.attrs["subjects"] == sorted(table.subject.unique().tolist())
    # subject 1002 has no quinidine period: 15 subjects there, 16 elsewhere
    n = targets.dd_n.sel(endpoint="QTcF", time=2.0)
    assert int(n.sel(drug="quinidine")) == 15
    assert int(n.sel(drug="dofetilide")) == 16


def test_targets_match_published_facts(targets):
    """Numbers stated in tests/data/README.md (computed from this file)."""
    qt = targets.dd_mean.sel(endpoint="QTcF")
    assert qt.sel(drug="dofetilide").max() == pytest.approx(81, abs=2)
    assert float(qt.sel(drug="dofetilide").idxmax("time")) == 2.5
    assert qt.sel(drug="quinidine").max() == pytest.approx(83, abs=2)
    assert float(qt.sel(drug="quinidine").idxmax("time")) == 2.0
    assert float(qt.sel(drug="ranolazine", time=7.0)) == pytest.approx(15, abs=1.5)
    pr = targets.dd_mean.sel(endpoint="PR", drug="verapamil")
    assert 25 < float(pr.max()) < 40
    pl_qt = targets.pl_mean.sel(endpoint="QTcF").values[1:]
    assert -17 < pl_qt.min() < -10
    pl_hr = targets.pl_mean.sel(endpoint="HR").values[1:]
    assert 6 < pl_hr.max() < 11
    assert targets.base_mean.sel(endpoint_all="QTcF") == pytest.approx(396, abs=3)
    # confidence band brackets the mean
    assert bool(((targets.dd_lo <= targets.dd_mean) | targets.dd_mean.isnull()).all())


def test_targets_follow_a_subset_of_subjects(table):
    """Targets are recomputed from whatever table is given (e.g. held-back subjects)."""
    sub = table[table.subject.isin(sorted(table.subject.unique())[:6])]
    t = compute_targets(sub)
    assert len(t.attrs["subjects"]) == 6
    assert int(t.dd_n.sel(endpoint="QTcF", drug="dofetilide", time=2.0)) <= 6


def test_missing_columns_and_unknown_drug(data_dir, tmp_path):
    raw = pd.read_csv(data_dir / CSV, nrows=60)
    with pytest.raises(ValueError, match="QT"):
        read_ecgrdvq(raw.drop(columns=["QT"]))
    bad = raw.copy()
    bad.loc[0, "EXTRT"] = "Aspirin"
    with pytest.raises(ValueError, match="Aspirin"):
        read_ecgrdvq(bad)
    with pytest.raises(FileNotFoundError):
        read_ecgrdvq(tmp_path / "nope.csv")


def test_nonpositive_intervals_become_nan(data_dir):
    raw = pd.read_csv(data_dir / CSV, nrows=30)
    raw.loc[3, "QRS"] = -5
    df = read_ecgrdvq(raw)
    assert np.isnan(df.loc[3, "QRS"])
    assert df.attrs["repairs"]["nonpositive_intervals"] == 1


def test_subject_baselines(table):
    b = subject_baselines(table)
    assert len(b) == table.subject.nunique()
    assert list(b.columns) == ["RR", "PR", "QRS", "QT", "QTcF", "HR"]
    assert set(REQUIRED_COLUMNS) <= set(table.columns)


def _crossover(n_sub=300, sd_day=2.0, sd_noise=4.0, effect=5.0, seed=0):
    """Synthetic crossover with a persistent day effect per period and independent noise at
    every time point: the regression-to-the-mean slope is sd_noise^2 / (sd_noise^2 +
    sd_day^2)."""
    rng = np.random.default_rng(seed)
    rows = []
    times = [BASELINE_TPT, 1.0, 2.0, 4.0]
    for s in range(n_sub):
        level = rng.normal(400.0, 15.0)
        for arm in ("placebo", "drug_a", "drug_b"):
            day = rng.normal(0.0, sd_day)
            for t in times:
                eff = effect if (arm == "drug_a" and t > 0) else 0.0
                rows.append({"subject": s, "drug": arm, "tpt": t,
                             "QTcF": level + day + eff + rng.normal(0.0, sd_noise)})
    return pd.DataFrame(rows)


def test_baseline_regression_recovers_known_slope():
    means = _crossover()
    rtm = baseline_regression(means, endpoints=("QTcF",))
    lam = float(rtm.rtm_slope.sel(endpoint="QTcF"))
    se = float(rtm.rtm_slope_se.sel(endpoint="QTcF"))
    assert abs(lam - 16.0 / 20.0) < max(3 * se, 0.05), (lam, se)
    assert 0 < se < 0.1
    # the term a ddX of these subjects carries, computed independently
    b = means[means.tpt == BASELINE_TPT].pivot(index="subject", columns="drug", values="QTcF")
    for d in ("drug_a", "drug_b"):
        want = -lam * float((b[d] - b["placebo"]).mean())
        assert float(rtm.dd_rtm.sel(drug=d, endpoint="QTcF")) == pytest.approx(want, rel=1e-9)
    dev = b.sub(b.mean(axis=1), axis=0)
    assert float(rtm.pl_rtm.sel(endpoint="QTcF")) == pytest.approx(
        -lam * float(dev["placebo"].mean()), rel=1e-9)
    # exact baselines (no noise): no regression to the mean
    exact = _crossover(n_sub=50, sd_noise=0.0)
    lam0 = float(baseline_regression(exact, endpoints=("QTcF",)).rtm_slope[0])
    assert abs(lam0) < 1e-6


def test_baseline_regression_on_the_study(table, targets):
    """The dofetilide period's baseline PR is higher than the placebo period's and
    ranolazine's lower (the README's trap for the observed ddPR of these two drugs)."""
    lam = targets.rtm_slope.sel(endpoint="PR").item()
    assert 0.5 < lam < 0.95
    means = table.groupby(["subject", "drug", "tpt"], as_index=False)["PR"].mean()
    b = means[means.tpt == BASELINE_TPT].pivot(index="subject", columns="drug", values="PR")
    d_dof = float((b["dofetilide"] - b["placebo"]).mean())
    d_ran = float((b["ranolazine"] - b["placebo"]).mean())
    assert d_dof > 1.0 and d_ran < -1.0
    assert targets.base_diff.sel(drug="dofetilide", endpoint="PR").item() == pytest.approx(
        d_dof, rel=1e-9)
    assert targets.dd_rtm.sel(drug="dofetilide", endpoint="PR").item() == pytest.approx(
        -lam * d_dof, rel=1e-6)
    assert targets.dd_rtm.sel(drug="ranolazine", endpoint="PR").item() > 1.0
    # observed means are never altered by it
    assert np.isfinite(targets.dd_mean.sel(drug="dofetilide", endpoint="PR").values).all()
    for e in ("QTcF", "HR"):
        assert 0.2 < targets.rtm_slope.sel(endpoint=e).item() < 1.0


def test_missing_table_says_where_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="physionet.org/content/ecgrdvq"):
        read_ecgrdvq(tmp_path / "none.csv")


def test_jtpeak_endpoint_read_and_optional(data_dir, table, targets):
    """J-Tpeak_c = JTPEAK / RR^0.58 (the study's correction) is read when the table has
    JTPEAK and joins the targets; the study's multichannel signature is in it (dofetilide
    lengthens J-Tpeak_c, ranolazine and verapamil barely move it); a table without the
    column gives the four core endpoints."""
    from ecg_world.ecgrdvq import JT_ENDPOINT

    row = table.dropna(subset=["JTPEAK", "RR"]).iloc[0]
    assert row[JT_ENDPOINT] == pytest.approx(row.JTPEAK / (row.RR / 1000.0) ** 0.58)
    assert list(targets.endpoint.values) == ["QTcF", "PR", "QRS", "HR", JT_ENDPOINT]
    jt = targets.dd_mean.sel(endpoint=JT_ENDPOINT).max("time")
    assert float(jt.sel(drug="dofetilide")) > 30
    assert float(jt.sel(drug="ranolazine")) < 6 and float(jt.sel(drug="verapamil")) < 4
    raw = pd.read_csv(data_dir / CSV).drop(columns=["JTPEAK"])
    t = compute_targets(raw)
    assert list(t.endpoint.values) == ["QTcF", "PR", "QRS", "HR"]
