"""Subject-level cross-validation of the ECG world model's calibration (SCR-002 table).

k = 4 seeded folds of subjects: each fold is calibrated on the other three (PK, placebo
course, shared map, regression-to-the-mean slope) and predicts its own subjects; the pooled
out-of-fold predictions are compared with the 90% confidence band of all subjects
(:func:`ecg_world.calibration.cross_validate`). Printed and written next to the in-sample
coverage of the committed calibration (effect space, same prediction code), which is
in-sample and labelled so.

Usage:
    python benchmarks/calibration_cv.py [--table CSV] [--k 4] [--seed 0] [--max-nfev 200]

Outputs in ``benchmarks/results/calibration_ecgrdvq/``: ``cross_validation.md``,
``cross_validation.json`` (coverage rows, folds, provenance) and ``cross_validation.nc``
(pooled and per-fold predictions).
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


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              cwd=ROOT, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv=None) -> int:
    from ecg_world.calibrated import default_calibration
    from ecg_world.calibration import coverage_table, cross_validate, predicted_time_courses
    from ecg_world.ecgrdvq import compute_targets

    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--table", type=pathlib.Path,
                   default=ROOT / "tests/data/ecgrdvq/SCR-002.Clinical.Data.dev.csv")
    p.add_argument("--out", type=pathlib.Path,
                   default=ROOT / "benchmarks/results/calibration_ecgrdvq")
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-nfev", type=int, default=200)
    p.add_argument("--n-virtual", type=int, default=64)
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    pooled, cov, folds = cross_validate(args.table, k=args.k, seed=args.seed,
                                        max_nfev=args.max_nfev, n_virtual=args.n_virtual)
    secs = time.perf_counter() - t0
    targets = compute_targets(args.table)
    insample = coverage_table(predicted_time_courses(default_calibration(), targets).sim_mean,
                              targets)
    table = cov.rename(columns={"inside_band": "cv_inside_band", "rmse": "cv_rmse"})
    table["insample_inside_band"] = insample["inside_band"].to_numpy()
    table["insample_rmse"] = insample["rmse"].to_numpy()
    args.out.mkdir(parents=True, exist_ok=True)
    prov = {"created_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "git_commit": _git_commit(), "table": str(args.table.relative_to(ROOT)
                                                     if args.table.is_relative_to(ROOT)
                                                     else args.table),
            "command": "python benchmarks/calibration_cv.py " + " ".join(argv or sys.argv[1:]),
            "k": args.k, "seed": args.seed, "max_nfev": args.max_nfev,
            "n_virtual": args.n_virtual, "seconds": round(secs, 1),
            "subjects": targets.attrs["subjects"]}
    pooled.attrs["provenance"] = json.dumps(prov)
    pooled.to_netcdf(args.out / "cross_validation.nc", engine="h5netcdf")
    (args.out / "cross_validation.json").write_text(json.dumps(
        {"provenance": prov, "folds": folds, "rows": table.to_dict(orient="records")},
        indent=1) + "\n")
    cols = ["drug", "endpoint", "cv_inside_band", "insample_inside_band", "cv_rmse",
            "insample_rmse", "n_times"]
    lines = ["# Subject-level cross-validation of the calibration (SCR-002 dev table)", "",
             f"k = {args.k} seeded folds of subjects (seed {args.seed}): {folds}. Each fold is "
             "calibrated on the other folds' subjects (PK, placebo course, shared map, "
             "regression-to-the-mean slope) and predicts its own subjects; the pooled "
             "out-of-fold means (weighted by subjects per fold) are compared with the 90% "
             "confidence band of all subjects. `insample_*`: the committed calibration on "
             "the same table (in-sample), same prediction code (effect space, 512 virtual "
             "subjects).", "",
             f"Command: `{prov['command'].strip()}` ({secs:.0f} s; commit {prov['git_commit']})",
             "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in table[cols].iterrows():
        lines.append("| " + " | ".join(f"{v:.3g}" if isinstance(v, float) else str(v)
                                         for v in r.values) + " |")
    (args.out / "cross_validation.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
