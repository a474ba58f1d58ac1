"""Interval measurement (pure JAX, batched): R peaks on MIT-BIH 100, the PTB 12-lead record
s0010_re against neurokit2 and a manual annotation, synthetic McSharry ECGs with exact reference
fiducials, bad input and the ``ecg-world intervals`` command."""

import json
import warnings

import jax
import numpy as np
import pytest

from ecg_world import intervals, records

NOISE_SD_MV = (0.1, 0.2)  # white Gaussian noise added to record 100 (numpy seed 0), see below


@pytest.fixture(scope="module")
def record_100(data_dir):
    ecg = records.read_record(data_dir / "wfdb" / "100")
    ref, _ = records.read_beat_annotations(data_dir / "wfdb" / "100")
    return ecg, ref


@pytest.fixture(scope="module")
def s0010(data_dir):
    ecg = records.read_record(data_dir / "wfdb" / "s0010_re")
    return ecg, intervals.measure_record(ecg)


def _nk_rpeaks(x, fs):
    import neurokit2 as nk

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, info = nk.ecg_peaks(nk.ecg_clean(x, sampling_rate=fs), sampling_rate=fs)
    return np.asarray(info["ECG_R_Peaks"])


def test_rpeaks_record_100_both_leads_clean_and_noisy(record_100):
    """Sensitivity and PPV >= 99.8 % (150 ms window) on MLII and V5, on the record and on
    copies with white Gaussian noise of SD 0.1 and 0.2 mV (SNR 5.4 / -0.6 dB on MLII, 2.0 /
    -4.0 dB on V5 relative to the leads' baseline-free RMS), at least as good as neurokit2's
    default detector (ecg_clean + ecg_peaks) on the same signals.
    benchmarks/rpeaks_mitbih.py prints the table."""
    ecg, ref = record_100
    fs = ecg.attrs["sampling_rate"]
    x = ecg.values.astype(np.float32)
    rng = np.random.default_rng(0)
    batch = np.stack([x] + [x + sd * rng.standard_normal(x.shape).astype(np.float32)
                            for sd in NOISE_SD_MV])  # (copy, lead, time): one compiled call
    cfg = intervals.IntervalConfig.for_duration(fs, x.shape[-1] / fs)
    idx, mask = jax.device_get(intervals.detect_r_peaks(batch, cfg))
    tol = int(round(0.150 * fs))
    for c, copy in enumerate(["clean"] + [f"noise {sd} mV" for sd in NOISE_SD_MV]):
        for lead in range(2):
            tp, fn, fp = intervals.match_beats(idx[c, lead][mask[c, lead]], ref, tol)
            se, ppv = tp / (tp + fn), tp / (tp + fp)
            ntp, nfn, nfp = intervals.match_beats(_nk_rpeaks(batch[c, lead], fs), ref, tol)
            nk_se, nk_ppv = ntp / (ntp + nfn), ntp / (ntp + nfp)
            msg = f"{copy} lead {lead}: se {se:.4f} ppv {ppv:.4f} (nk {nk_se:.4f} {nk_ppv:.4f})"
            assert se >= 0.998 and ppv >= 0.998, msg
            assert se >= nk_se and ppv >= nk_ppv, msg


def test_s0010_rr_qrs_match_neurokit_dwt(s0010):
    """RR and QRS of the median beat within 15 ms of neurokit2's dwt delineation (median over
    beats), on the leads where neurokit2 delineates every beat with a QRS below 160 ms."""
    import neurokit2 as nk

    ecg, ds = s0010
    fs = ecg.attrs["sampling_rate"]
    compared = 0
    for lead in ["I", "II", "aVL", "V5", "V6"]:
        x = ecg.sel(lead=lead).values
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            clean = nk.ecg_clean(x, sampling_rate=fs)
            rp = nk.ecg_peaks(clean, sampling_rate=fs)[1]["ECG_R_Peaks"]
            _, d = nk.ecg_delineate(clean, rp, sampling_rate=fs, method="dwt")
        on = np.asarray(d["ECG_R_Onsets"], float)
        off = np.asarray(d["ECG_R_Offsets"], float)
        nk_rr = np.median(np.diff(rp)) / fs * 1000
        nk_qrs = np.nanmedian(off - on) / fs * 1000
        assert np.isfinite(nk_qrs) and nk_qrs < 160, (lead, nk_qrs)
        rr = float(ds["median_rr"].sel(lead=lead))
        qrs = float(ds["median_qrs"].sel(lead=lead))
        assert abs(rr - nk_rr) <= 15, (lead, rr, nk_rr)
        assert abs(qrs - nk_qrs) <= 15, (lead, qrs, nk_qrs)
        compared += 1
    assert compared == 5


def test_s0010_qt_matches_manual_annotation(s0010, data_dir):
    """QT of the median beat against QRS onset and T end read by eye on the plotted median
    beat (tests/data/s0010_re_qt_annotation.json, figure s0010_re_median_beat.png). Inverted
    T waves in II, V5, V6. Tolerance: 20 ms per lead, 12 ms mean absolute difference (the
    differences were -10, -5, +3, +2 ms for I, II, V5, V6 when this test was written)."""
    _, ds = s0010
    ann = json.loads((data_dir / "s0010_re_qt_annotation.json").read_text())
    diffs = []
    for lead, a in ann["leads"].items():
        qt_eye = a["t_end_ms"] - a["qrs_onset_ms"]
        qt = float(ds["median_qt"].sel(lead=lead))
        diffs.append(qt - qt_eye)
        assert abs(qt - qt_eye) <= 20, (lead, qt, qt_eye)
    assert np.mean(np.abs(diffs)) <= 12, diffs
    # the T waves of II, V5, V6 are inverted: the T peak lies below the isoelectric level
    for lead in ("II", "V5", "V6"):
        mb = ds["median_beat"].sel(lead=lead)
        t_peak = float(ds["median_t_peak"].sel(lead=lead)) / 1000
        onset = float(ds["median_qrs_onset"].sel(lead=lead)) / 1000
        assert float(mb.sel(lag=t_peak, method="nearest")) < float(
            mb.sel(lag=onset - 0.02, method="nearest")
        )


LQT_T = (2.25, 0.42)  # long-QT strip: McSharry T wave angle (rad) and width at 50 bpm


@pytest.fixture(scope="module")
def synthetic():
    """McSharry ECGs (the default beat and two perturbed morphologies) at 50-110 bpm, 10 s at
    500 Hz, physiological rate scaling, scaled to [-0.4, 1.2] mV, plus white Gaussian noise of
    SD 0.03 mV and 0.1 mV baseline wander at 0.15 Hz (seeded); a fourth morphology with an
    inverted T wave; and, as the last row, a noise-free long-QT strip (T wave at LQT_T, 50 bpm:
    reference QT about 596 ms). Measured in one call per convention (two compilations)."""
    from leads_jax.physics.ecg_fiducials import reference_intervals
    from leads_jax.physics.mcsharry import McSharryECG, ecg_waveform

    fs, n = 500.0, 5000
    hrs = [50.0, 60.0, 70.0, 80.0, 90.0, 100.0, 110.0]
    rng = np.random.default_rng(1)
    base = McSharryECG.default()
    models = [base] + [
        McSharryECG(np.asarray(base.ti) * (1 + 0.05 * rng.standard_normal(5)),
                    np.asarray(base.ai) * (1 + 0.1 * rng.standard_normal(5)),
                    np.asarray(base.bi) * (1 + 0.1 * rng.standard_normal(5)))
        for _ in range(2)
    ]
    ai_inverted = np.asarray(base.ai).copy()
    ai_inverted[4] *= -1  # inverted T wave (evaluated separately)
    models.append(McSharryECG(base.ti, ai_inverted, base.bi))
    waves = jax.jit(jax.vmap(
        lambda m, hr: ecg_waveform(m, heart_rate=hr, n_samples=n, sampling_rate=fs,
                                   hr_scaling="physiological", scale="ecgsyn"),
        in_axes=(None, 0)))
    refs = jax.jit(jax.vmap(reference_intervals, in_axes=(None, 0)))
    hr = np.asarray(hrs)
    x = np.concatenate([np.asarray(waves(m, hr)) for m in models])
    ref = [jax.device_get(refs(m, hr)) for m in models]
    ref = {k: np.concatenate([r[k] for r in ref]) for k in ("RR", "PR", "QRS", "QT", "valid")}
    assert ref["valid"].all()
    t = np.arange(n) / fs
    x = x + 0.03 * rng.standard_normal(x.shape) + 0.1 * np.sin(2 * np.pi * 0.15 * t + 1.0)
    ti, bi = np.asarray(base.ti).copy(), np.asarray(base.bi).copy()
    ti[4], bi[4] = LQT_T
    lqt = McSharryECG(ti, np.asarray(base.ai), bi)
    lqt_qt = float(reference_intervals(lqt, 50.0)["QT"])
    x = np.concatenate([x, np.asarray(waves(lqt, np.asarray([50.0])))])[:, None, :]
    out = {}
    for name, conv in (("kernel", intervals.KERNEL_CONVENTION), ("default", {})):
        cfg = intervals.IntervalConfig.for_duration(fs, n / fs, **conv)
        out[name] = jax.device_get(intervals.measure_intervals(x.astype(np.float32), cfg))
    return ref, lqt_qt, out


def test_synthetic_mcsharry_against_reference_fiducials(synthetic):
    """Median-beat intervals of the synthetic ECGs (fixture ``synthetic``) against the kernel's
    exact reference fiducials (leads_jax.physics.ecg_fiducials), measured with
    ``KERNEL_CONVENTION`` (the reference's own definitions: 5 % of the peak slope, tangent T
    end). Mean absolute error: QT <= 10 ms, PR and QRS <= 8 ms (3-4 ms each when written);
    inverted T waves QT <= 12 ms (10.7). The default (LUDB cardiologists') convention:
    test_synthetic_default_convention_offsets."""
    ref, _, out = synthetic
    res = out["kernel"]
    err = {k: getattr(res.median, k)[:-1, 0] - ref[k.upper()] for k in ("rr", "pr", "qrs", "qt")}
    upright = slice(0, 21)
    mae = {k: float(np.mean(np.abs(v[upright]))) for k, v in err.items()}
    assert mae["qt"] <= 10 and mae["pr"] <= 8 and mae["qrs"] <= 8 and mae["rr"] <= 2, mae
    # inverted T waves: T end by the ascending limb
    inverted = slice(21, 28)
    assert np.mean(np.abs(err["qt"][inverted])) <= 12, err["qt"][inverted]
    assert np.mean(np.abs(err["qrs"][inverted])) <= 8, err["qrs"][inverted]
    # per beat too (noisier than the median beat, checked loosely)
    qt_beats = np.nanmedian(np.where(res.beat_mask[:-1, 0], res.qt[:-1, 0], np.nan), axis=1)
    assert np.mean(np.abs(qt_beats - ref["QT"])[upright]) <= 15


def test_synthetic_default_convention_offsets(synthetic):
    """The default settings follow LUDB's cardiologists, who mark onsets and ends differently
    from the kernel's 5 %-slope / tangent definitions (benchmarks/delineation_ludb.md). On the
    same synthetic ECGs: QT of the median beat within 12 ms on average of the kernel's
    reference (9.6 ms when written: the area T end lies a little after the tangent's), the
    inverted-T QT within 20 ms (17), and PR/QRS offset as the conventions differ on Gaussian
    waves (PR about 40 ms shorter, QRS about 27 ms longer), but tracking the reference: the
    errors' SD over rates and morphologies stays below 25 ms (19 and 17 when written)."""
    ref, _, out = synthetic
    res = out["default"]
    err = {k: getattr(res.median, k)[:-1, 0] - ref[k.upper()] for k in ("pr", "qrs", "qt")}
    up, inv = slice(0, 21), slice(21, 28)
    assert np.mean(np.abs(err["qt"][up])) <= 12, err["qt"]
    assert np.mean(np.abs(err["qt"][inv])) <= 20, err["qt"]
    assert -60 <= np.mean(err["pr"][up]) <= -20 and np.std(err["pr"][up]) <= 25, err["pr"]
    assert 10 <= np.mean(err["qrs"][up]) <= 40 and np.std(err["qrs"][up]) <= 25, err["qrs"]


def test_long_qt_strip_at_50_bpm(synthetic):
    """The long-QT McSharry strip (last row of ``synthetic``: T wave moved to 2.25 rad and
    widened, 50 bpm): reference QT about 596 ms, T end about 0.56 s after R (the old fixed
    0.5-s T window and 0.8-s beat window could not reach it). Measured with the kernel's
    convention within 10 ms (2 ms when written), median beat and every beat; with the default
    convention within 25 ms (the area T end lies later than the tangent's on a broad
    Gaussian T wave)."""
    _, ref_qt, out = synthetic
    assert 580 <= ref_qt <= 620
    for name, tol in (("kernel", 10.0), ("default", 25.0)):
        res = out[name]
        qt = res.qt[-1, 0][res.beat_mask[-1, 0]]
        assert np.isfinite(qt).sum() >= 6, qt
        assert abs(float(res.median.qt[-1, 0]) - ref_qt) <= tol, (name, res.median.qt, ref_qt)
        assert np.nanmax(np.abs(qt - ref_qt)) <= tol, (name, qt, ref_qt)


def test_mitbih_100_mlii_qt_near_the_cardiologists(record_100):
    """MIT-BIH 100, MLII, first minute: a cardiologist annotated QT about 400 ms on this patient
    (the issue; the T wave is inverted and followed by a small positive hump, which the old
    terminal-lobe rule took for the T wave: QT 597 ms). Median beat and per-beat median QT
    between 360 and 440 ms (378 / 389 ms on the first minute when written)."""
    ecg, _ = record_100
    ds = intervals.measure_record(records.select_leads(ecg.isel(time=slice(0, 60 * 360)), "II"))
    d = ds.sel(lead="II")
    assert 360 <= float(d["median_qt"]) <= 440, float(d["median_qt"])
    per_beat = np.nanmedian(d["qt"].values[d["beat_mask"].values])
    assert 360 <= per_beat <= 440, per_beat


def test_short_record_is_flagged(record_100, s0010):
    """A record of two beats (1.75 s of MIT-BIH 100): flagged per lead, described in attrs and
    warned about; s0010_re (38 s) is not; shorter than one beat window: ValueError naming the
    length needed."""
    ecg, _ = record_100
    short = ecg.isel(time=slice(100, 100 + int(1.75 * 360)))
    with pytest.warns(RuntimeWarning, match="fewer than 3 beats"):
        ds = intervals.measure_record(short)
    assert ds["few_beats"].all() and "unreliable" in ds.attrs["warnings"]
    _, ok = s0010
    assert not ok["few_beats"].any() and ok.attrs["warnings"] == ""
    with pytest.raises(ValueError, match="at least"):
        intervals.measure_record(ecg.isel(time=slice(0, 360)))


def _spike_trains():
    """(batch 3, lead 2, time 2500) at 250 Hz: Gaussian "QRS" spikes at 75 bpm (12 beats),
    lead 1 inverted; batch 1 at 200 bpm (33 beats, more than max_beats=20); batch 2 with a
    NaN sample."""
    fs, n = 250.0, 2500
    t = np.arange(n) / fs

    def train(period):
        return sum(np.exp(-0.5 * ((t - c) / 0.012) ** 2) for c in np.arange(0.4, 10, period))

    x = np.stack([np.stack([train(0.8), -train(0.8)]), np.stack([train(0.3)] * 2),
                  np.stack([train(0.8), -train(0.8)])]).astype(np.float32)
    x[2, :, 1000] = np.nan
    return x, intervals.IntervalConfig(sampling_rate=fs, max_beats=20)


def test_batched_shapes_masks_and_one_compilation():
    x, cfg = _spike_trains()
    res = intervals.measure_intervals(x, cfg)
    assert res.r_peak.shape == (3, 2, 20) and res.median.qt.shape == (3, 2)
    assert res.median_beat.shape == (3, 2, cfg.samples(cfg.before) + cfg.samples(cfg.after))
    assert (res.n_beats[0] == 12).all() and not res.truncated[0].any()
    assert np.isnan(np.asarray(res.r_peak)[~np.asarray(res.beat_mask)]).all()
    np.testing.assert_allclose(np.asarray(res.median.rr[0]), 800.0, atol=1)
    r_peak = np.asarray(res.r_peak[0, 0, :12])
    np.testing.assert_allclose(r_peak, np.arange(0.4, 10, 0.8), atol=0.01)
    # the inverted lead finds the same peaks
    np.testing.assert_allclose(res.r_peak[0, 0], res.r_peak[0, 1], atol=1 / cfg.sampling_rate)
    # more beats than max_beats: the first 20 are kept, and flagged
    assert res.truncated[1].all() and (res.n_beats[1] == 20).all()
    assert np.asarray(res.beat_mask[1]).all()
    # inside jit a non-finite input gives NaN results, never an exception
    assert not np.isfinite(np.asarray(res.median.rr[2])).any()
    # a second call with the same shape and config does not compile again
    before = intervals._measure_batch._cache_size()
    intervals.measure_intervals(x + 0.01, cfg)
    assert intervals._measure_batch._cache_size() == before


def test_bad_input(s0010):
    ecg, _ = s0010
    cfg = intervals.IntervalConfig(sampling_rate=1000.0, max_beats=4)
    with pytest.raises(ValueError, match="at least"):
        intervals.measure_intervals(np.zeros((1, 100), np.float32), cfg)
    # (jaxtyping's runtime check, on in the tests, raises a TypeError first; both name the shape)
    with pytest.raises((ValueError, TypeError), match=r"lead,? time"):
        intervals.measure_intervals(np.zeros(5000, np.float32), cfg)
    with pytest.raises(ValueError, match="sampling_rate"):
        intervals.IntervalConfig(sampling_rate=0.0, max_beats=4)
    with pytest.raises(ValueError, match="max_beats"):
        intervals.IntervalConfig(sampling_rate=250.0, max_beats=0)
    with pytest.raises(ValueError, match="t_peak_method"):
        intervals.IntervalConfig(sampling_rate=250.0, max_beats=4, t_peak_method="largest")
    with pytest.raises(ValueError, match="t_prominence_window"):
        intervals.IntervalConfig(sampling_rate=250.0, max_beats=4, t_prominence_window=0.0)
    bad = ecg.isel(time=slice(0, 4000)).copy()
    bad.values[0, 10] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        intervals.measure_record(bad)


def test_cli_intervals(data_dir, capsys, s0010):
    from ecg_world import cli

    rc = cli.main(["intervals", str(data_dir / "wfdb" / "s0010_re"), "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["units"] == "ms" and set(out["median_beat"]) >= {"I", "II", "V6"}
    _, ds = s0010
    assert out["median_beat"]["II"]["qt"] == pytest.approx(float(ds["median_qt"].sel(lead="II")))
    assert cli.main(["intervals", str(data_dir / "wfdb" / "does_not_exist")]) == 2
    assert "no WFDB record" in capsys.readouterr().err
    assert cli.main(["intervals", str(data_dir / "wfdb" / "s0010_re"), "--leads", "V9"]) == 2


def test_premature_beats_are_kept_under_noise():
    """Premature beats (60-70% of the RR, then a compensatory pause) in a 60-s McSharry ECG at
    360 Hz are all detected, clean and with 0.2 mV white noise: the rule that drops a small
    detection splitting a normal RR in two does not touch them."""
    import jax.numpy as jnp

    from leads_jax.physics.mcsharry import McSharryECG, ecg_waveform

    fs, dur = 360.0, 60.0
    rng = np.random.default_rng(5)
    rr = []
    while sum(rr) < dur + 2:
        if rng.random() < 0.15:
            c = rng.uniform(0.55, 0.7)
            rr += [0.85 * c, 0.85 * (2 - c)]
        else:
            rr.append(0.85 * rng.uniform(0.97, 1.03))
    rr = np.asarray(rr)
    n = int(dur * fs)
    x = np.asarray(ecg_waveform(McSharryECG.default(), jnp.asarray(rr), n_samples=n,
                                sampling_rate=fs, scale="ecgsyn"))
    # beat k starts with its R wave (theta = 0) at sum(rr[:k])
    r_true = np.cumsum(np.concatenate([[0.0], rr]))
    keep = (r_true > 0.3) & (r_true < dur - 0.3)
    assert (rr[keep[1:]] < 0.8 * 0.85).sum() >= 5  # premature beats inside the record
    r_true = r_true[keep]
    batch = np.stack([x, x + 0.2 * rng.standard_normal(n)]).astype(np.float32)[:, None]
    cfg = intervals.IntervalConfig.for_duration(fs, dur)
    idx, mask = jax.device_get(intervals.detect_r_peaks(batch, cfg))
    for c in range(2):
        det = idx[c, 0][mask[c, 0]] / fs
        dist = np.abs(r_true[:, None] - det[None, :]).min(axis=1)
        assert (dist <= 0.05).all(), (c, r_true[dist > 0.05])
        inner = det[(det > 0.3) & (det < dur - 0.3)]
        assert inner.size == r_true.size, (c, inner.size, r_true.size)
