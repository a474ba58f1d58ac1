"""``ecg-world`` console script.

Subcommands:

- ``ecg-world synth --n-patients N --out cohort.nc``: synthetic cohort (see
  :mod:`ecg_world.cohort`);
- ``ecg-world calibrate [--table CSV] [--out JSON] [--report DIR]``: calibrate the shared
  pharmacology against an SCR-002/ECGRDVQ table (see :mod:`ecg_world.calibration`);
- ``ecg-world intervals PATH``: a WFDB record's intervals (implemented in
  :mod:`ecg_world._cli_intervals`).
"""

from __future__ import annotations

import argparse
import pathlib
import sys

from . import _cli_intervals, cohort
from .calibrated import Calibration, default_calibration
from .calibration import calibrate
from .calibration_report import write_report
from .drugs import load_drugs


def _add_synth(sub):
    p = sub.add_parser("synth", help="synthesize a virtual cohort to netCDF")
    p.add_argument("--n-patients", type=int, required=True)
    p.add_argument("--out", type=pathlib.Path, required=True, help="output .nc path")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--times", type=float, nargs="+", default=None,
                   help="hours after dose (default: 0.5 1 2 3 4 6 8 12 24)")
    p.add_argument("--drugs", nargs="+", default=None, help="default: all drugs")
    p.add_argument("--sampling-rate", type=float, default=250.0)
    p.add_argument("--duration", type=float, default=10.0, help="segment length (s)")
    p.add_argument("--leads", nargs="+", default=["I", "II", "V2"])
    p.add_argument("--long-qt-share", type=float, default=0.15)
    p.add_argument("--noise-mv", type=float, default=0.02)
    p.add_argument("--calibration", type=pathlib.Path, default=None,
                   help="calibrated.json (default: the package's)")
    p.add_argument("--drugs-file", type=pathlib.Path, nargs="+", default=None,
                   help="drug definitions (JSON, the schema of ecg_world/data/drugs.json) "
                        "added to the package's drugs; use --drugs to pick them")
    p.add_argument("--dose-range", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                   help="dose multipliers of the study dose, log-uniform (default: 0.25 1.0, "
                        "inside the calibrated exposure range)")


def _run_synth(args) -> int:
    library = load_drugs(*args.drugs_file) if args.drugs_file else None
    cal = (Calibration.from_json(args.calibration, library=library) if args.calibration
           else default_calibration())
    if library is not None and not args.calibration:
        cal = cal.with_library(library)
    ds = cohort.synthesize(
        args.n_patients, seed=args.seed, times_h=args.times or cohort.DEFAULT_TIMES_H,
        drugs=args.drugs, sampling_rate=args.sampling_rate, duration_s=args.duration,
        leads=args.leads, long_qt_share=args.long_qt_share, noise_mv=args.noise_mv,
        calibration=cal, dose_range=tuple(args.dose_range or cohort.DEFAULT_DOSE_RANGE))
    path = cohort.write_cohort(ds, args.out)
    report = path.with_suffix(".plausibility.md")
    report.write_text(cohort.plausibility_markdown(cohort.plausibility_report(ds)))
    risk = float(ds.torsade_risk.mean())
    print(f"wrote {path}: {dict(ds.sizes)}; share of cells with torsade risk label {risk:.3f}; "
          f"flagged cells {cohort.flagged_share(ds):.3f}; plausibility report {report}")
    return 0


def _add_calibrate(sub):
    p = sub.add_parser("calibrate", help="calibrate the pharmacology against the study table")
    p.add_argument("--table", type=pathlib.Path,
                   default=pathlib.Path("tests/data/ecgrdvq/SCR-002.Clinical.Data.dev.csv"),
                   help="SCR-002 clinical table (CSV, PhysioNet ECGRDVQ); default: the copy in "
                        "the repository, relative to the working directory")
    p.add_argument("--out", type=pathlib.Path, default=pathlib.Path("calibrated.json"),
                   help="calibrated JSON to write (default: ./calibrated.json; the package's "
                        "committed file is ecg_world/data/calibrated.json)")
    p.add_argument("--report", type=pathlib.Path, default=None,
                   help="write the report (tables, figure, LODO) into this folder")
    p.add_argument("--no-lodo", action="store_true", help="skip leave-one-drug-out")


def _run_calibrate(args) -> int:
    cal, targets = calibrate(args.table)
    path = cal.to_json(args.out)
    print(f"wrote {path}")
    if args.report:
        write_report(cal, targets, args.report, table=args.table, lodo=not args.no_lodo)
        print(f"report in {args.report}")
    return 0


def _add_world(sub):
    # the world model (ecg_world.world; flax is imported only when these run)
    p = sub.add_parser("train", help="train the ECG world model on a cohort netCDF")
    p.add_argument("--data", type=pathlib.Path, required=True, help="cohort .nc (ecg-world synth)")
    p.add_argument("--out", type=pathlib.Path, required=True, help="model directory to write")
    p.add_argument("--preset", choices=["quick", "full"], default="quick")
    p.add_argument("--no-anchor", action="store_true", help="switch the energy anchor term off")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint")
    p.add_argument("--steps", type=int, default=None, help="diffusion steps (preset's default)")
    p.add_argument("--ae-steps", type=int, default=None, help="autoencoder steps")
    p.add_argument("--anchor-scale", type=float, default=None,
                   help="lambda_0 of the anchor weight lambda(t) = lambda_0 alpha_t^(2p) "
                        "(preset's default)")
    p.add_argument("--anchor-power", type=float, default=None,
                   help="p of the anchor weight (preset's default)")
    p.add_argument("--guidance", type=float, default=None,
                   help="g of the sampling-time anchor guidance gamma(t) = g alpha_t^(2q) "
                        "(preset's default; 0 without the anchor)")
    p.add_argument("--guidance-spread", type=float, default=None,
                   help="rho in [0, 1]: how much the guidance shrinks the rollouts' spread "
                        "around their mean (0: moves only the mean; 1: pulls every rollout to "
                        "the anchor; preset's default)")
    # the choices are ecg_world.world.diffusion.GUIDANCE_TARGETS, written out so that the
    # CLI starts without importing flax
    p.add_argument("--guidance-target", choices=["post", "change"], default=None,
                   help="what the guidance pulls toward: the anchor's post latent, or its "
                        "predicted change (fitted post - fitted pre) added to the real pre "
                        "latent (preset's default)")
    p.add_argument("--ae-ludb", type=pathlib.Path, default=None,
                   help="LUDB folder: its tuning-split records join the autoencoder's training "
                        "strips (unlabelled; the reporting split is never read)")
    p = sub.add_parser("simulate", help="imagine post-intervention ECGs with a world model")
    p.add_argument("--model", required=True,
                   help="model directory, or the name of a shipped model (quick)")
    p.add_argument("--record", required=True,
                   help="WFDB record path, or COHORT.nc:PATIENT_INDEX (its pre-dose segment)")
    p.add_argument("--drug", required=True)
    p.add_argument("--dose", type=float, default=None, help="default: the drug's standard dose")
    p.add_argument("--unit", default=None, help="dose unit (g, mg, ug); default: the drug's")
    p.add_argument("--hours", type=float, nargs="+", default=[2.0], help="hours after dose")
    p.add_argument("-k", type=int, default=64, help="rollouts")
    p.add_argument("--steps", type=int, default=50, help="sampling steps")
    p.add_argument("--sampler", default="ddim", help="ddim or ancestral")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--start", type=float, default=0.0, help="strip start in the record (s)")
    p.add_argument("--drugs-file", type=pathlib.Path, default=None, help="extra drugs (JSON)")
    p.add_argument("--out", type=pathlib.Path, required=True, help="output folder")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ecg-world", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_synth(sub)
    _add_calibrate(sub)
    _add_world(sub)
    _cli_intervals.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "synth":
            return _run_synth(args)
        if args.command == "calibrate":
            return _run_calibrate(args)
        if args.command in ("train", "simulate"):
            from .world import commands

            return (commands.run_train if args.command == "train" else
                    commands.run_simulate)(args)
        if args.command == "intervals":
            return int(_cli_intervals.run(args))
    except (ValueError, FileNotFoundError, KeyError) as err:
        print(f"ecg-world {args.command}: error: {err}", file=sys.stderr)
        return 2
    parser.error(f"unknown command {args.command!r}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
