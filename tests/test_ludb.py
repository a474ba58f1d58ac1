"""LUDB reader (annotations per lead and beat, traps of the database), the seeded-hash
tuning/reporting split, and the committed delineation table against its own per-beat data.

Records 1 (sinus bradycardia) and 101 (atrial fibrillation) are copied unchanged from LUDB
v1.0.1 into tests/data/ludb (attribution in tests/data/README.md)."""

import hashlib
import pathlib
import shutil

import numpy as np
import pytest

from ecg_world import ludb

ROOT = pathlib.Path(__file__).resolve().parents[1]
TABLE = ROOT / "benchmarks" / "results" / "delineation_ludb"


def test_read_record_1_signals_and_lead_ii_annotations(data_dir):
    rec = ludb.read_ludb_record(data_dir / "ludb" / "1")
    assert rec.ecg.dims == ("lead", "time") and rec.ecg.attrs["units"] == "mV"
    assert rec.ecg.attrs["sampling_rate"] == 500 and rec.ecg.sizes["time"] == 5000
    assert list(rec.ecg["lead"].values) == ["I", "II", "III", "aVR", "aVL", "aVF",
                                             "V1", "V2", "V3", "V4", "V5", "V6"]
    a = rec.annotations
    assert a.sizes["lead"] == 12 and list(a["lead"].values) == list(rec.ecg["lead"].values)
    ii = a.sel(lead="II")
    m = ii["beat_mask"].values
    # lead II of record 1 (values read from 1.ii with wfdb.rdann): 6 QRS complexes
    assert m.sum() == 6
    np.testing.assert_array_equal(ii["qrs_onset"].values[m], [644, 1324, 1979, 2624, 3286, 3950])
    np.testing.assert_array_equal(ii["qrs_peak"].values[:2], [662, 1342])
    np.testing.assert_array_equal(ii["qrs_offset"].values[:2], [682, 1374])
    # the first beat's P wave lies before the first annotation: not annotated (NaN)
    assert np.isnan(ii["p_onset"].values[0]) and ii["p_onset"].values[1] == 1250
    assert ii["t_peak"].values[0] == 843 and ii["t_offset"].values[0] == 878
    # the last beat's T wave is after the last annotation
    assert np.isnan(ii["t_offset"].values[m][-1])
    np.testing.assert_allclose(ii["qrs_onset_ms"].values[:2], [1288.0, 2648.0])
    assert float(ii["annotated_start"]) == 644 and float(ii["annotated_stop"]) == 3996
    assert ii["qrs_onset"].attrs["units"] == "samples" and ii["qrs_onset_ms"].attrs["units"] == "ms"
    assert rec.sinus_rhythm and a.attrs["rhythm"] == "Sinus bradycardia"
    assert a.attrs["age"] == "51" and a.attrs["sex"] == "F"
    assert rec.record_id == "1" and rec.split == ludb.ludb_split("1")


def test_atrial_fibrillation_record_is_not_sinus_and_has_no_p_waves(data_dir):
    rec = ludb.read_ludb_record(data_dir / "ludb" / "101.hea", leads=["ii"])
    a = rec.annotations.sel(lead="II")
    assert not rec.sinus_rhythm and "fibrillation" in rec.annotations.attrs["rhythm"].lower()
    assert a["beat_mask"].sum() == 11 and a["p_peak"].isnull().all()
    assert a["t_peak"].notnull().sum() >= 9


def test_is_sinus_rhythm_rules():
    assert ludb.is_sinus_rhythm("Sinus rhythm")
    assert ludb.is_sinus_rhythm("Sinus tachycardia; Sinus arrhythmia")
    assert not ludb.is_sinus_rhythm("Atrial fibrillation")
    assert not ludb.is_sinus_rhythm("")
    assert not ludb.is_sinus_rhythm("Sinus rhythm", ["UNIpolar atrial pacing"])
    assert not ludb.is_sinus_rhythm("Sinus rhythm; Atrial flutter")


def test_damaged_annotations_missing_points_unknown_symbols_missing_lead(data_dir, tmp_path):
    """A triplet without its onset, an unknown symbol, a stray ')' and a lead without an
    annotation file: NaN where a point is missing, nothing shifted, the lead listed."""
    import wfdb

    for f in (data_dir / "ludb").glob("1.*"):
        if f.suffix in (".hea", ".dat", ".i"):
            shutil.copy(f, tmp_path / f.name)
    # lead II: beat 1 lacks its QRS onset, a 'u' wave and a stray ')' are inserted
    samples = [600, 620, 640, 700, 720, 740, 800, 820, 840, 860, 900, 1200, 1220, 1240,
               1320, 1340, 1360]
    symbols = ["(", "p", ")", "(", "N", ")", "(", "t", ")", "u", ")", "(", "p", ")",
               "N", ")", ")"]
    wfdb.wrann("1", "ii", np.asarray(samples), symbols, write_dir=str(tmp_path))
    a = ludb.read_ludb_annotations(tmp_path / "1", leads=["II", "I", "V1"])
    ii = a.sel(lead="II")
    assert ii["beat_mask"].sum() == 2
    np.testing.assert_array_equal(ii["qrs_peak"].values[:2], [720, 1320])
    assert ii["qrs_onset"].values[0] == 700 and np.isnan(ii["qrs_onset"].values[1])
    assert ii["qrs_offset"].values[1] == 1340
    assert ii["p_onset"].values[0] == 600 and ii["p_peak"].values[1] == 1220
    assert ii["t_offset"].values[0] == 840 and np.isnan(ii["t_peak"].values[1])
    assert a.attrs["leads_without_annotations"] == "V1"
    assert not a.sel(lead="V1")["beat_mask"].any()
    assert a.sel(lead="I")["beat_mask"].sum() == 6  # the untouched lead I file
    with pytest.raises(KeyError, match="has no lead"):
        ludb.read_ludb_annotations(tmp_path / "1", leads=["X"])


def test_split_is_a_seeded_hash_of_the_id_with_at_least_half_reported(tmp_path):
    def by_hand(rid):  # the documented rule, spelled out
        h = int(hashlib.sha256(f"0:{rid}".encode()).hexdigest(), 16)
        return "tuning" if h % 100 < 40 else "reporting"

    ids = [str(i) for i in range(1, 1001)]
    got = [ludb.ludb_split(i) for i in ids]
    assert got == [by_hand(i) for i in ids]
    assert 0.5 <= got.count("reporting") / len(got) <= 0.7
    assert ludb.ludb_split(7) == ludb.ludb_split("007") == ludb.ludb_split("ludb/7.hea")
    assert ludb.ludb_split("7", seed=1) in ("tuning", "reporting")
    with pytest.raises(ValueError, match="at least half"):
        ludb.ludb_split("7", tuning_percent=60)
    # the directory is globbed, not listed
    for rid in ("3", "12", "200"):
        (tmp_path / f"{rid}.hea").write_text("")
    assert ludb.ludb_record_ids(tmp_path) == ["3", "12", "200"]
    with pytest.raises(FileNotFoundError):
        ludb.ludb_record_ids(tmp_path / "missing")


def test_committed_delineation_table_matches_its_per_beat_data_and_split():
    """The committed benchmark (benchmarks/delineation_ludb.py): every record sits in the
    split that ludb_split gives it, the two splits are disjoint, and the summary statistics
    (and the markdown's acceptance numbers) are recomputed from the stored per-beat values."""
    import xarray as xr

    ds = xr.load_dataset(TABLE.with_suffix(".nc"), engine="h5netcdf")
    md = TABLE.with_suffix(".md").read_text()
    tuning = set(ds.attrs["records_tuning"].split(","))
    reporting = set(ds.attrs["records_reporting"].split(","))
    assert tuning and reporting and not tuning & reporting
    assert len(reporting) >= len(tuning)
    assert all(ludb.ludb_split(r) == "tuning" for r in tuning)
    assert all(ludb.ludb_split(r) == "reporting" for r in reporting)
    assert set(np.unique(ds["record"].values)) == tuning | reporting
    assert ds.attrs["command"] in md and "REPORTING split" in md
    rep = ds["row_split"].values == "reporting"
    for name, (a, b) in {"PR": ("p_onset", "qrs_onset"), "QRS": ("qrs_onset", "qrs_offset"),
                         "QT": ("qrs_onset", "t_offset")}.items():
        ours = ds[f"ecg_world_{b}"].values - ds[f"ecg_world_{a}"].values
        ref = ds[f"ref_{b}"].values - ds[f"ref_{a}"].values
        e = (ours - ref)[rep]
        e = e[np.isfinite(e)]
        st = ds["error_stat"].sel(split="reporting", delineator="ecg_world", quantity=name)
        assert int(st.sel(stat="n")) == e.size
        np.testing.assert_allclose(float(st.sel(stat="mean")), e.mean(), atol=1e-6)
        med = float(np.median(np.abs(e)))
        np.testing.assert_allclose(float(st.sel(stat="median_abs")), med, atol=1e-6)
        assert f"| {name} median abs error | " in md and f"{med:.1f} ms" in md
