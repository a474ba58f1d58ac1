"""WFDB records -> xarray, lead names, NaN repair, filtering, resampling, beats, median beat."""

import json

import numpy as np
import pytest

from ecg_world import records


def test_read_record_100_units_leads(data_dir):
    ecg = records.read_record(data_dir / "wfdb" / "100", stop=10.0)
    assert ecg.dims == ("lead", "time")
    assert list(ecg["lead"].values) == ["II", "V5"]  # MLII -> II
    assert list(ecg["lead_original"].values) == ["MLII", "V5"]
    assert ecg.attrs["units"] == "mV" and ecg.attrs["sampling_rate"] == 360
    assert ecg.sizes["time"] == 3600
    np.testing.assert_allclose(ecg["time"].values[:2], [0.0, 1 / 360])
    assert ecg["time"].attrs["units"] == "s"
    assert np.isfinite(ecg.values).all() and ecg.attrs["n_repaired"] == 0
    # MIT-BIH amplitudes are about a millivolt
    assert 0.5 < float(ecg.sel(lead="II").max() - ecg.sel(lead="II").min()) < 5


def test_lead_aliases_ptb(data_dir):
    ecg = records.read_record(data_dir / "wfdb" / "s0010_re.hea", leads=["II", "avr", "V5"])
    assert list(ecg["lead"].values) == ["II", "aVR", "V5"]
    assert list(ecg["lead_original"].values) == ["ii", "avr", "v5"]
    assert records.canonical_lead_name("MLII") == records.canonical_lead_name("ii") == "II"
    assert records.canonical_lead_name("vx") == "X"
    assert records.select_leads(ecg, "ii").sizes["lead"] == 1


def test_bad_input_clear_errors(data_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="no WFDB record"):
        records.read_record(tmp_path / "nothing_here")
    with pytest.raises(KeyError, match="has no lead"):
        records.read_record(data_dir / "wfdb" / "100", leads=["V1"])
    ecg = records.read_record(data_dir / "wfdb" / "100", stop=2.0)
    with pytest.raises(KeyError, match="no lead"):
        records.select_leads(ecg, ["aVF"])
    with pytest.raises(ValueError, match="nan_policy"):
        records.read_record(data_dir / "wfdb" / "100", nan_policy="ignore")


def _write_record(tmp_path, name, sig, names, fs=250):
    import wfdb

    wfdb.wrsamp(name, fs=fs, units=["mV"] * len(names), sig_name=list(names), p_signal=sig,
                fmt=["16"] * len(names), adc_gain=[200.0] * len(names),
                baseline=[0] * len(names), write_dir=str(tmp_path))
    return tmp_path / name


def test_nan_samples_repaired_or_raised(tmp_path):
    t = np.arange(2500) / 250
    sig = np.stack([np.sin(2 * np.pi * t), np.cos(2 * np.pi * t)], axis=1)
    sig[100:110, 0] = np.nan  # a gap: stored as the format's invalid value
    path = _write_record(tmp_path, "gap", sig, ["MLII", "V5"])
    ecg = records.read_record(path)
    assert ecg.attrs["n_repaired"] == 10
    assert np.isfinite(ecg.values).all()
    # linear interpolation across the gap
    np.testing.assert_allclose(ecg.values[0, 100:110], np.sin(2 * np.pi * t[100:110]), atol=0.02)
    with pytest.raises(ValueError, match="NaN samples in leads \\['MLII'\\]"):
        records.read_record(path, nan_policy="raise")


def test_missing_lead_all_nan(tmp_path):
    sig = np.zeros((500, 2))
    sig[:, 0] = np.sin(np.arange(500) / 10)
    sig[:, 1] = np.nan  # lead V5 not recorded
    path = _write_record(tmp_path, "nolead", sig, ["MLII", "V5"])
    with pytest.raises(ValueError, match="lead 'V5' has no valid sample"):
        records.read_record(path)
    ecg = records.read_record(path, leads=["II"])  # the other lead still reads
    assert list(ecg["lead"].values) == ["II"]


def test_baseline_resample_segment_median(data_dir):
    ecg = records.read_record(data_dir / "wfdb" / "100", stop=20.0)
    wander = 0.5 * np.sin(2 * np.pi * 0.1 * ecg["time"].values)
    hp = records.remove_baseline(ecg + wander, cutoff_hz=0.5)
    # the 0.1 Hz wander is gone: the signal's slow mean stays near zero
    slow = hp.sel(lead="II").rolling(time=720, center=True).mean().dropna("time")
    assert float(abs(slow).max()) < 0.1
    up = records.resample(ecg, 500)
    assert up.attrs["sampling_rate"] == 500 and abs(up.sizes["time"] - 20 * 500) <= 1
    r, _ = records.read_beat_annotations(data_dir / "wfdb" / "100")
    r = r[r < ecg.sizes["time"]]
    beats = records.segment_beats(ecg, r, before=0.25, after=0.45)
    assert beats.dims == ("beat", "lead", "time") and beats.sizes["time"] == 252
    assert np.isnan(beats.values[0, 0, 0])  # the first beat's window starts before the record
    med = records.median_beat(beats)
    assert med.dims == ("lead", "time") and np.isfinite(med.values).all()
    # the median beat peaks at the R peak (time 0) in MLII
    assert abs(float(med["time"][int(med.sel(lead="II").argmax("time"))])) < 0.02


def test_beat_annotations_exclude_non_beats(data_dir):
    samples, symbols = records.read_beat_annotations(data_dir / "wfdb" / "100")
    assert len(samples) == 2273 and "+" not in set(symbols)
    assert set(symbols) == {"N", "A", "V"}


def test_manual_annotation_committed(data_dir):
    ann = json.loads((data_dir / "s0010_re_qt_annotation.json").read_text())
    assert (data_dir / "s0010_re_median_beat.png").stat().st_size > 10_000
    assert "by eye" in ann["method"]
    for a in ann["leads"].values():
        assert -80 < a["qrs_onset_ms"] < 0 < 300 < a["t_end_ms"] < 500


def test_truncated_wfdb_file_clear_error(data_dir, tmp_path):
    """A signal file cut short (a broken download): 'file is truncated' naming the file and
    how much is there, not wfdb's internal numpy broadcast message; the part that is there
    still reads with stop=."""
    import shutil

    shutil.copy(data_dir / "wfdb" / "100.hea", tmp_path / "100.hea")
    (tmp_path / "100.dat").write_bytes((data_dir / "wfdb" / "100.dat").read_bytes()[:100_000])
    with pytest.raises(ValueError, match="file is truncated") as err:
        records.read_record(tmp_path / "100")
    assert "100.dat" in str(err.value) and "broadcast" not in str(err.value)
    with pytest.raises(ValueError, match="file is truncated"):
        records.read_record(tmp_path / "100", stop=600.0)
    part = records.read_record(tmp_path / "100", stop=10.0)
    assert part.sizes["time"] == 3600
    (tmp_path / "100.dat").unlink()
    with pytest.raises(FileNotFoundError, match="missing"):
        records.read_record(tmp_path / "100")
