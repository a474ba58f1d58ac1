"""Real ECG records: WFDB -> xarray, baseline-wander removal, resampling, beats, median beat.

The user-facing side of :mod:`ecg_world.intervals`. Everything here is numpy/scipy/xarray
(records are read once); the measurement core that runs on thousands of rollouts is the
pure-JAX :func:`ecg_world.intervals.measure_intervals`.

A record is an ``xarray.DataArray`` with dims ``(lead, time)``:

* ``time`` in seconds from the start of the record, ``lead`` the canonical lead name
  (``"I"``, ``"II"``, ..., ``"aVR"``, ``"V1"``...``"V6"``, ``"X"``, ``"Y"``, ``"Z"``) and
  ``lead_original`` the name written in the header. Databases spell leads differently
  (MIT-BIH ``MLII`` = modified limb lead II, PTB ``ii``); :func:`canonical_lead_name`
  maps them, so ``select_leads(ecg, ["II"])`` finds ``MLII`` and ``ii`` alike.
* ``attrs``: ``units`` ("mV"), ``sampling_rate`` (Hz), ``record_name``, ``n_repaired``
  (samples that were NaN and were interpolated, see below), ``comments``.

Missing samples. WFDB stores a sample that was not recorded as the format's invalid value;
``wfdb.rdrecord`` turns it into NaN. ``read_record(nan_policy="interpolate")`` (the default)
repairs NaN runs by linear interpolation between the neighbouring valid samples (constant
extension at the record's ends) and counts them in ``attrs["n_repaired"]``;
``nan_policy="raise"`` raises instead. A lead with no valid sample at all cannot be repaired
and raises ``ValueError`` naming the lead (read the others with ``leads=[...]``).
"""

from __future__ import annotations

import math
import os
import pathlib
import re
from collections.abc import Sequence

import numpy as np
import scipy.signal
import xarray as xr

__all__ = [
    "BEAT_SYMBOLS",
    "canonical_lead_name",
    "median_beat",
    "read_beat_annotations",
    "read_record",
    "remove_baseline",
    "repair_nan",
    "resample",
    "segment_beats",
    "select_leads",
]

# Beat annotation codes of the MIT-BIH convention (PhysioNet "Annotation codes"): normal,
# bundle-branch block, atrial/nodal/ventricular premature, escape, paced, fusion, unclassifiable.
# Rhythm changes ('+'), signal-quality and other non-beat annotations are excluded.
BEAT_SYMBOLS = frozenset("NLRBAaJSVrFejnE/fQ?")

_CANONICAL = {
    "i": "I", "ii": "II", "iii": "III", "avr": "aVR", "avl": "aVL", "avf": "aVF",
    "v1": "V1", "v2": "V2", "v3": "V3", "v4": "V4", "v5": "V5", "v6": "V6",
    "x": "X", "y": "Y", "z": "Z", "vx": "X", "vy": "Y", "vz": "Z",
    # MIT-BIH / European ST-T modified leads
    "mli": "I", "mlii": "II", "mliii": "III", "ml2": "II", "mod.v1": "V1",
}


def canonical_lead_name(name: str) -> str:
    """Canonical lead name: ``"MLII"`` and ``"ii"`` -> ``"II"``, ``"avr"`` -> ``"aVR"``,
    ``"vx"`` -> ``"X"``. Unknown names are returned stripped, otherwise unchanged."""
    key = re.sub(r"[\s_-]", "", str(name)).lower()
    return _CANONICAL.get(key, str(name).strip())


def _record_base(path: str | os.PathLike) -> pathlib.Path:
    p = pathlib.Path(path)
    if p.suffix in (".hea", ".dat", ".atr", ".xyz"):
        p = p.with_suffix("")
    if not pathlib.Path(f"{p}.hea").is_file():
        raise FileNotFoundError(
            f"no WFDB record at {str(path)!r}: expected a header file {str(p) + '.hea'!r}"
        )
    return p


# bytes per sample of the WFDB storage formats (PhysioNet "signal" file formats)
_BYTES_PER_SAMPLE = {"8": 1.0, "16": 2.0, "61": 2.0, "80": 1.0, "160": 2.0, "212": 1.5,
                     "24": 3.0, "32": 4.0, "310": 4.0 / 3.0, "311": 4.0 / 3.0}


def _check_not_truncated(base: pathlib.Path, header) -> None:
    """``ValueError`` naming the file if a signal file is shorter than its header says.

    wfdb itself fails on a truncated file with an internal numpy broadcast message (or reads
    silently fewer samples); the header gives the exact size to expect."""
    if header.sig_len is None or not header.file_name:
        return
    files: dict[str, list[int]] = {}
    for i, name in enumerate(header.file_name):
        files.setdefault(name, []).append(i)
    for name, chans in files.items():
        fmt = str(header.fmt[chans[0]])
        bps = _BYTES_PER_SAMPLE.get(fmt)
        path = base.parent / name
        if bps is None or name == "~" or not path.is_file():
            if name != "~" and not path.is_file():
                raise FileNotFoundError(
                    f"record {base.name!r}: signal file {str(path)!r} named in the header "
                    "is missing"
                )
            continue
        offset = int((header.byte_offset or [0] * len(header.file_name))[chans[0]] or 0)
        expected = offset + int(math.ceil(int(header.sig_len) * len(chans) * bps))
        size = path.stat().st_size
        if size < expected:
            have = int((size - offset) / (len(chans) * bps))
            raise ValueError(
                f"record {base.name!r}: file is truncated: {str(path)!r} has {size} bytes, "
                f"the header ({header.sig_len} samples x {len(chans)} signals, format {fmt}) "
                f"needs {expected}; about {have} of {header.sig_len} samples "
                f"({have / float(header.fs):.1f} s) are there. Download the record again "
                f"or read a part of it with stop=<seconds>"
            )


def repair_nan(
    signal: np.ndarray, lead_names: Sequence[str] | None = None
) -> tuple[np.ndarray, int]:
    """Linear interpolation over NaN runs along the last axis (constant at the ends).

    **Arguments:** ``signal`` (lead, time).
    **Returns:** (repaired copy, number of repaired samples).
    Raises ``ValueError`` naming a lead that has no finite sample at all.
    """
    sig = np.array(signal, dtype=np.float64, copy=True)
    bad = ~np.isfinite(sig)
    n_bad = int(bad.sum())
    if n_bad == 0:
        return sig, 0
    t = np.arange(sig.shape[-1])
    for i in range(sig.shape[0]):
        if bad[i].all():
            name = lead_names[i] if lead_names is not None else str(i)
            raise ValueError(
                f"lead {name!r} has no valid sample (all NaN): it is missing from this record; "
                "read the other leads with leads=[...]"
            )
        if bad[i].any():
            sig[i, bad[i]] = np.interp(t[bad[i]], t[~bad[i]], sig[i, ~bad[i]])
    return sig, n_bad


def read_record(
    path: str | os.PathLike,
    *,
    leads: Sequence[str] | None = None,
    nan_policy: str = "interpolate",
    start: float | int = 0.0,
    stop: float | int | None = None,
) -> xr.DataArray:
    """Read a WFDB record (``path`` without extension, or with ``.hea``/``.dat``) into xarray.

    **Arguments:**

    - ``leads``: lead names to keep, in this order (aliases allowed: ``"II"`` finds ``MLII``);
      a lead the record does not have raises ``KeyError`` listing the ones it has.
    - ``nan_policy``: ``"interpolate"`` (repair NaN runs, counted in ``attrs["n_repaired"]``)
      or ``"raise"``.
    - ``start``, ``stop``: seconds, to read part of a long record.

    **Returns:** ``DataArray`` (lead, time) in mV, see the module docstring.
    """
    import wfdb  # lazy: wfdb pulls in pandas/requests

    if nan_policy not in ("interpolate", "raise"):
        raise ValueError(f"nan_policy must be 'interpolate' or 'raise', got {nan_policy!r}")
    base = _record_base(path)
    header = wfdb.rdheader(str(base))
    fs = float(header.fs)
    sampfrom = int(round(start * fs))
    sampto = None if stop is None else min(int(round(stop * fs)), int(header.sig_len))
    original = list(header.sig_name)
    canonical = [canonical_lead_name(n) for n in original]
    if leads is not None:
        wanted = [canonical_lead_name(n) for n in leads]
        missing = [n for n, c in zip(leads, wanted, strict=True) if c not in canonical]
        if missing:
            raise KeyError(
                f"record {base.name!r} has no lead {missing}; it has {original} "
                f"(canonical {canonical})"
            )
        channels = [canonical.index(c) for c in wanted]
    else:
        channels = list(range(len(original)))
    if stop is None:
        _check_not_truncated(base, header)
    try:
        rec = wfdb.rdrecord(str(base), sampfrom=sampfrom, sampto=sampto, channels=channels)
    except ValueError as err:  # wfdb's message on a short file is numpy's broadcast error
        if "broadcast" in str(err):
            raise ValueError(
                f"record {base.name!r}: file is truncated (wfdb could not read "
                f"{sampto if sampto is not None else header.sig_len} samples: {err})"
            ) from err
        raise
    units = {u.lower() for u in rec.units}
    sig = np.asarray(rec.p_signal, dtype=np.float64).T
    scale = np.array([_to_mv(u) for u in rec.units])[:, None]
    sig = sig * scale
    names = [original[c] for c in channels]
    if nan_policy == "raise" and not np.isfinite(sig).all():
        bad = [names[i] for i in range(len(names)) if not np.isfinite(sig[i]).all()]
        raise ValueError(f"record {base.name!r} has NaN samples in leads {bad}")
    sig, n_rep = repair_nan(sig, names)
    time = (sampfrom + np.arange(sig.shape[1])) / fs
    return xr.DataArray(
        sig,
        dims=("lead", "time"),
        coords={
            "lead": [canonical_lead_name(n) for n in names],
            "lead_original": ("lead", names),
            "time": ("time", time, {"units": "s"}),
        },
        name="ecg",
        attrs={
            "units": "mV",
            "sampling_rate": fs,
            "record_name": base.name,
            "n_repaired": n_rep,
            "original_units": ",".join(sorted(units)),
            "comments": "\n".join(header.comments or []),
        },
    )


def _to_mv(unit: str) -> float:
    u = unit.strip().lower()
    if u in ("mv", ""):
        return 1.0
    if u in ("uv", "µv", "microvolt"):
        return 1e-3
    if u == "v":
        return 1e3
    raise ValueError(f"unsupported signal unit {unit!r} (expected mV, uV or V)")


def read_beat_annotations(
    path: str | os.PathLike, extension: str = "atr"
) -> tuple[np.ndarray, np.ndarray]:
    """Beat annotations of a record: (sample indices, symbols), non-beat codes (rhythm '+',
    noise, comments...) excluded (see :data:`BEAT_SYMBOLS`)."""
    import wfdb

    base = _record_base(path)
    if not pathlib.Path(f"{base}.{extension}").is_file():
        raise FileNotFoundError(f"no annotation file {str(base)}.{extension}")
    ann = wfdb.rdann(str(base), extension)
    keep = np.array([s in BEAT_SYMBOLS for s in ann.symbol], dtype=bool)
    return np.asarray(ann.sample)[keep], np.asarray(ann.symbol)[keep]


def select_leads(ecg: xr.DataArray, leads: Sequence[str] | str) -> xr.DataArray:
    """Leads by name or alias (``"II"`` finds ``MLII``/``ii``); unknown -> ``KeyError``."""
    if isinstance(leads, str):
        leads = [leads]
    have = [str(x) for x in ecg["lead"].values]
    wanted = [canonical_lead_name(n) for n in leads]
    missing = [n for n, c in zip(leads, wanted, strict=True) if c not in have]
    if missing:
        raise KeyError(f"no lead {missing} in this ECG; it has {have}")
    return ecg.sel(lead=wanted)


def remove_baseline(
    ecg: xr.DataArray, cutoff_hz: float | int = 0.5, order: int = 2
) -> xr.DataArray:
    """Baseline-wander removal: zero-phase Butterworth high-pass (``scipy.signal.sosfiltfilt``,
    effective order ``2*order``) at ``cutoff_hz`` along ``time``."""
    fs = float(ecg.attrs["sampling_rate"])
    if not 0.0 < cutoff_hz < fs / 2:
        raise ValueError(f"cutoff_hz must be in (0, {fs / 2}), got {cutoff_hz}")
    sos = scipy.signal.butter(order, cutoff_hz, btype="highpass", fs=fs, output="sos")
    axis = ecg.get_axis_num("time")
    out = ecg.copy(data=scipy.signal.sosfiltfilt(sos, ecg.values, axis=axis))
    out.attrs["baseline_removed"] = f"Butterworth high-pass {cutoff_hz} Hz, zero phase"
    return out


def resample(ecg: xr.DataArray, sampling_rate: float | int) -> xr.DataArray:
    """Polyphase resampling (``scipy.signal.resample_poly``, anti-aliased) to ``sampling_rate``."""
    from fractions import Fraction

    fs = float(ecg.attrs["sampling_rate"])
    if not sampling_rate > 0:
        raise ValueError(f"sampling_rate must be > 0, got {sampling_rate}")
    frac = Fraction(sampling_rate / fs).limit_denominator(1000)
    axis = ecg.get_axis_num("time")
    data = scipy.signal.resample_poly(ecg.values, frac.numerator, frac.denominator, axis=axis)
    t0 = float(ecg["time"].values[0])
    new_fs = fs * frac.numerator / frac.denominator
    time = t0 + np.arange(data.shape[axis]) / new_fs
    dims = ecg.dims
    coords = {k: v for k, v in ecg.coords.items() if "time" not in v.dims}
    coords["time"] = ("time", time, {"units": "s"})
    return xr.DataArray(data, dims=dims, coords=coords, name=ecg.name,
                        attrs={**ecg.attrs, "sampling_rate": new_fs})


def segment_beats(
    ecg: xr.DataArray,
    r_peaks: np.ndarray,
    *,
    before: float | int = 0.4,
    after: float | int = 0.6,
) -> xr.DataArray:
    """Cut windows ``[R - before, R + after)`` (seconds) around R peaks (sample indices).

    **Returns:** ``DataArray`` (beat, lead, time) with ``time`` relative to the R peak (s);
    samples outside the record are NaN.
    """
    fs = float(ecg.attrs["sampling_rate"])
    r = np.asarray(r_peaks, dtype=np.int64).ravel()
    pre, post = int(round(before * fs)), int(round(after * fs))
    offs = np.arange(-pre, post)
    idx = r[:, None] + offs[None, :]
    valid = (idx >= 0) & (idx < ecg.sizes["time"])
    data = ecg.transpose("lead", "time").values[:, np.clip(idx, 0, ecg.sizes["time"] - 1)]
    data = np.where(valid[None], data, np.nan).transpose(1, 0, 2)
    return xr.DataArray(
        data,
        dims=("beat", "lead", "time"),
        coords={
            "beat": np.arange(len(r)),
            "r_peak": ("beat", r),
            "lead": ecg["lead"].values,
            "time": ("time", offs / fs, {"units": "s", "long_name": "time from R peak"}),
        },
        attrs={**ecg.attrs},
    )


def median_beat(beats: xr.DataArray) -> xr.DataArray:
    """Sample-wise median over ``beat`` (NaN ignored): the representative beat (lead, time)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns stay NaN
        return beats.median("beat", skipna=True).assign_attrs(
            beats.attrs, n_beats=int(beats.sizes["beat"])
        )
