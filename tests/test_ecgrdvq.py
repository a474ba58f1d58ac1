"""The SCR-002 / ECGRDVQ reader and the calibration targets computed from the table."""

import numpy as np
import pandas as pd
import pytest

from ecg_world.ecgrdvq import (
    REQUIRED_COLUMNS,
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
