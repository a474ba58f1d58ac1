"""Full calibration of the ECG world model's pharmacology against the FDA SCR-002 table.

Fits (1) per-drug PK on the plasma concentrations, (2) the placebo/diurnal course, (3) the ONE
shared channel-block -> ECG map (plus, per drug, the effect-site rate and the unbound
fraction inside its label range), then writes the report: coverage of the observed 90%
confidence bands and RMSE per drug and endpoint (effect space and re-measured on the
McSharry kernel through virtual twins of the table's subjects), the figure of simulated vs
observed time courses, and the leave-one-drug-out table.

Usage:
    python benchmarks/calibrate_ecgrdvq.py [--table CSV] [--out DIR] [--update-committed]
        [--no-lodo] [--n-rep 8] [--report-only]

``--report-only`` writes the report of the committed calibration
(``ecg_world/data/calibrated.json``) without refitting it (the leave-one-drug-out folds are
still fitted), e.g. to check that a code change leaves the committed coverage table as it is.

Outputs in ``benchmarks/results/calibration_ecgrdvq/`` (report .md, summary .json, figure,
fitted calibrated.json); ``--update-committed`` also replaces ``ecg_world/data/calibrated.json``.
"""

from __future__ import annotations

import argparse
import pathlib
import shutil
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    from ecg_world.calibrated import CALIBRATED_JSON, default_calibration
    from ecg_world.calibration import calibrate
    from ecg_world.calibration_report import write_report
    from ecg_world.ecgrdvq import compute_targets

    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--table", type=pathlib.Path,
                   default=ROOT / "tests/data/ecgrdvq/SCR-002.Clinical.Data.dev.csv")
    p.add_argument("--out", type=pathlib.Path,
                   default=ROOT / "benchmarks/results/calibration_ecgrdvq")
    p.add_argument("--update-committed", action="store_true")
    p.add_argument("--no-lodo", action="store_true")
    p.add_argument("--n-rep", type=int, default=8)
    p.add_argument("--n-virtual", type=int, default=64)
    p.add_argument("--report-only", action="store_true",
                   help="report on the committed calibration, no refit")
    args = p.parse_args(argv)
    if args.report_only and args.update_committed:
        p.error("--report-only and --update-committed exclude each other")
    t0 = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.report_only:
        cal, targets = default_calibration(), compute_targets(args.table)
        fitted = cal.to_json(args.out / "calibrated.json")
        print(f"committed calibration (not refitted) -> {fitted}")
    else:
        cal, targets = calibrate(args.table, n_virtual=args.n_virtual)
        fitted = cal.to_json(args.out / "calibrated.json")
        print(f"calibrated in {time.perf_counter() - t0:.0f} s -> {fitted}")
    if args.update_committed:
        shutil.copy(fitted, CALIBRATED_JSON)
        print(f"updated {CALIBRATED_JSON}")
    summary = write_report(cal, targets, args.out, table=args.table, lodo=not args.no_lodo,
                           n_rep=args.n_rep)
    for part in ("effect_space", "kernel", "leave_one_drug_out"):
        if part in summary:
            print(f"\n{part}:")
            for r in summary[part]:
                tag = r.get("held_out", r["drug"])
                print(f"  {tag:11s} {r['endpoint']:5s} inside band {r['inside_band']:.2f}  "
                      f"RMSE {r['rmse']:.2f}")
    print(f"\nreport: {args.out / 'calibration_report.md'} "
          f"({time.perf_counter() - t0:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
