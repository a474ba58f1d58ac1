"""Do the per-drug ECG-informed knobs carry the calibration? Leave-one-drug-out and in-sample
coverage with and without them (SCR-002 dev table).

The shared map has no per-drug ECG parameter, but two per-drug PK properties are informed by
the ECG endpoints in the fit: the effect-site rate ``ke0`` and the unbound fraction (inside
its label range). ``without knobs`` keeps both at their drugs.json values in every fit.

Usage:
    python benchmarks/calibration_knobs.py [--table CSV] [--max-nfev 150]

Outputs ``benchmarks/results/calibration_ecgrdvq/knobs_ablation.{md,json}``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    from ecg_world.calibration import (
        calibrate,
        coverage_table,
        leave_one_drug_out,
        predicted_time_courses,
    )
    from ecg_world.ecgrdvq import compute_targets

    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--table", type=pathlib.Path,
                   default=ROOT / "tests/data/ecgrdvq/SCR-002.Clinical.Data.dev.csv")
    p.add_argument("--out", type=pathlib.Path,
                   default=ROOT / "benchmarks/results/calibration_ecgrdvq")
    p.add_argument("--max-nfev", type=int, default=150)
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    targets = compute_targets(args.table)
    rows = []
    for knobs in (True, False):
        lodo, _ = leave_one_drug_out(args.table, max_nfev=args.max_nfev, fit_drug_pk=knobs)
        cal, _ = calibrate(args.table, max_nfev=args.max_nfev, fit_drug_pk=knobs)
        ins = coverage_table(predicted_time_courses(cal, targets).sim_mean, targets)
        for (_, lr), (_, ir) in zip(lodo.iterrows(), ins.iterrows(), strict=True):
            assert lr["held_out"] == ir["drug"] and lr["endpoint"] == ir["endpoint"]
            rows.append({"knobs": "with" if knobs else "without", "drug": ir["drug"],
                         "endpoint": ir["endpoint"], "lodo_inside_band": lr["inside_band"],
                         "lodo_rmse": lr["rmse"], "insample_inside_band": ir["inside_band"],
                         "insample_rmse": ir["rmse"]})
    secs = time.perf_counter() - t0
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                            cwd=ROOT).stdout.strip()
    prov = {"created_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "git_commit": commit, "max_nfev": args.max_nfev, "seconds": round(secs, 1),
            "command": "python benchmarks/calibration_knobs.py " + " ".join(argv or sys.argv[1:])}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "knobs_ablation.json").write_text(json.dumps({"provenance": prov,
                                                              "rows": rows}, indent=1) + "\n")
    cols = list(rows[0])
    lines = ["# Per-drug ECG-informed knobs (ke0, unbound fraction): with vs without", "",
             "Leave-one-drug-out (the held-out drug's own knobs stay at drugs.json values in "
             "both) and in-sample (effect space, 512 virtual subjects). "
             f"Command: `{prov['command'].strip()}` ({secs:.0f} s; commit {commit}).", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(f"{v:.3g}" if isinstance(v, float) else str(v)
                                         for v in r.values()) + " |")
    (args.out / "knobs_ablation.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
