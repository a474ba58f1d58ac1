"""``ecg-world intervals PATH``: print a WFDB record's intervals (median beat, per lead).

Wired into :mod:`ecg_world.cli` (``add_parser(subparsers)``, ``run(args) -> int``).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings

import numpy as np

from .intervals import measure_record
from .records import read_record

_LABEL = {"rr": "RR", "pr": "PR", "qrs": "QRS", "qt": "QT", "qtc_fridericia": "QTcF"}
_COLUMNS = ("n_beats", "rr", "pr", "qrs", "qt", "qtc_bazett", "qtc_fridericia")


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "intervals",
        help="measure RR, PR, QRS, QT, QTc of a WFDB record",
        description=(
            "Measure a WFDB record's intervals (ms) on its median beat, per lead: R peaks by a "
            "derivative-energy detector, QRS onset/offset at a fraction of the peak slope, "
            "T end by the tangent method (see ecg_world.intervals). NaN samples are repaired by "
            "linear interpolation (reported)."
        ),
    )
    p.add_argument("path", help="record path without extension (e.g. data/100) or its .hea")
    p.add_argument("--leads", nargs="+", default=None,
                   help="leads to measure (aliases allowed: II finds MLII/ii); default all")
    p.add_argument("--start", type=float, default=0.0, help="start time in s")
    p.add_argument("--stop", type=float, default=None, help="stop time in s")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--per-beat", action="store_true",
                   help="also print the per-beat median and IQR of each interval")
    return p


def _fmt(v) -> str:
    return "   nan" if v != v else f"{v:6.0f}"


def run(args) -> int:
    try:
        ecg = read_record(args.path, leads=args.leads, start=args.start, stop=args.stop)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # reported below, once
            ds = measure_record(ecg)
    except (FileNotFoundError, KeyError, ValueError) as err:
        msg = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"ecg-world intervals: error: {msg}", file=sys.stderr)
        return 2

    rows = {}
    for lead in ds["lead"].values:
        d = ds.sel(lead=lead)
        row = {"n_beats": int(d["n_beats"])}
        for c in _COLUMNS[1:]:
            row[c] = float(d[f"median_{c}"])
        if args.per_beat:
            mask = d["beat_mask"].values
            for c in ("rr", "pr", "qrs", "qt", "qtc_fridericia"):
                v = d[c].values[mask]
                v = v[np.isfinite(v)]
                q = np.percentile(v, [25, 50, 75]) if v.size else [np.nan] * 3
                row[f"beat_{c}"] = [float(x) for x in q]
        rows[str(lead)] = row

    header = {
        "record": ecg.attrs.get("record_name", ""),
        "sampling_rate_hz": ecg.attrs["sampling_rate"],
        "duration_s": ecg.sizes["time"] / ecg.attrs["sampling_rate"],
        "nan_samples_repaired": int(ecg.attrs.get("n_repaired", 0)),
        "warnings": [w for w in ds.attrs.get("warnings", "").split("\n") if w],
    }
    for w in header["warnings"]:
        print(f"ecg-world intervals: warning: {w}", file=sys.stderr)
    if args.json:
        print(json.dumps({**header, "units": "ms", "median_beat": rows}, indent=2))
        return 0
    print(
        f"record {header['record']}: {header['duration_s']:.1f} s at "
        f"{header['sampling_rate_hz']:g} Hz, {len(rows)} leads"
        + (f", {header['nan_samples_repaired']} NaN samples repaired"
           if header["nan_samples_repaired"] else "")
    )
    print("intervals on the median beat, ms (NaN: not measurable)")
    print(f"{'lead':6s} {'beats':>6s} " + " ".join(f"{c:>6s}" for c in
          ("RR", "PR", "QRS", "QT", "QTcB", "QTcF")))
    for lead, row in rows.items():
        print(f"{lead:6s} {row['n_beats']:6d} " + " ".join(_fmt(row[c]) for c in _COLUMNS[1:]))
    if args.per_beat:
        print("\nper beat: median [IQR], ms")
        for lead, row in rows.items():
            parts = [
                f"{_LABEL[c]} {row['beat_' + c][1]:.0f} [{row['beat_' + c][0]:.0f}-"
                f"{row['beat_' + c][2]:.0f}]"
                for c in ("rr", "pr", "qrs", "qt", "qtc_fridericia")
            ]
            print(f"{lead:6s} " + "  ".join(parts))
    return 0
