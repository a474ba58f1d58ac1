"""Lead gains of the synthetic cohorts from cardiologists' marks on LUDB (tuning split).

For every sinus-rhythm LUDB record of the **tuning** split (``ecg_world.ludb.ludb_split``;
the reporting split is never read), the median P, Q, R, S and T amplitudes per lead at the
marks (:func:`ecg_world.ludb.wave_amplitudes`); their median over records is the target of
each lead, and the gain of each wave is target / the kernel's unit amplitude
(:func:`ecg_world.cohort.gains_from_amplitudes`).

Usage:
    python benchmarks/lead_gains_ludb.py [--ludb DIR] [--out ecg_world/data/lead_gains.json]

Writes the gains with the targets, the unit amplitudes, the records used and provenance.
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    import xarray as xr

    from ecg_world.calibration import _git_commit
    from ecg_world.cohort import LEAD_GAINS_JSON, WAVES, gains_from_amplitudes, unit_wave_amplitudes
    from ecg_world.ludb import ludb_record_ids, read_ludb_record, wave_amplitudes

    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ludb", type=pathlib.Path, default=ROOT.parent / "shared" / "data" / "ludb")
    p.add_argument("--out", type=pathlib.Path, default=LEAD_GAINS_JSON)
    p.add_argument("--sampling-rate", type=float, default=250.0)
    args = p.parse_args(argv)
    if not args.ludb.is_dir():
        p.error(f"LUDB directory not found: {args.ludb}")
    t0 = time.perf_counter()
    used, amps = [], []
    for rid in ludb_record_ids(args.ludb):
        rec = read_ludb_record(args.ludb / rid)
        if rec.split != "tuning" or not rec.sinus_rhythm:
            continue
        used.append(rec.record_id)
        amps.append(wave_amplitudes(rec))
    if not used:
        p.error(f"no sinus-rhythm record of the tuning split in {args.ludb}")
    target = xr.concat(amps, "record").median("record")
    targets = {str(ld): [float(target.sel(lead=ld, wave=w)) for w in WAVES]
               for ld in target.lead.values}
    gains = gains_from_amplitudes(targets, args.sampling_rate)
    commit = _git_commit()
    doc = {
        "schema_version": 1,
        "waves": list(WAVES),
        "gains": gains,
        "target_amplitudes_mV": targets,
        "unit_amplitudes_mV": [round(float(x), 6) for x in
                               unit_wave_amplitudes(args.sampling_rate)],
        "provenance": {
            "source": "LUDB v1.0.1 (Kalyakulina AI et al., IEEE Access 2020;8:186181; "
                      "PhysioNet, ODC-By): cardiologists' P, QRS and T marks",
            "split": "tuning (ecg_world.ludb.ludb_split), sinus rhythm only",
            "records": used,
            "method": "median over records of each record's median wave amplitude per lead "
                      "(ecg_world.ludb.wave_amplitudes); gain = target / unit amplitude "
                      "(ecg_world.cohort.gains_from_amplitudes)",
            "sampling_rate_hz": args.sampling_rate,
            "command": "python benchmarks/lead_gains_ludb.py",
            "git_commit": commit,
            "created_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        },
    }
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"{len(used)} tuning records -> {args.out} ({time.perf_counter() - t0:.0f} s)")
    for ld, g in gains.items():
        print(f"  {ld:4s} " + " ".join(f"{w} {x:+.3f}" for w, x in zip(WAVES, g, strict=True)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
