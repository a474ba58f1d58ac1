"""The end-to-end demo behind ``make demo``: offline, built-in defaults, minutes on a CPU.

Four stages, each writing netCDF (h5netcdf) and figures:

1. **McSharry ECG cohort** -- 16 synthetic ECGs over 50-110 bpm with physiological
   heart-rate scaling, and their reference intervals (RR, PR, QRS, QT, QTcF).
2. **LEADS discovery** -- a small Aliev-Panfilov dataset (32-node cable, parameters
   away from the catalog defaults), then offline agent-driven discovery
   (:func:`leads_jax.agent.discover`): rounds of proposals from the diagnostic-guided
   beam search, fitted in parallel, observed, reflected on; the simplest model within
   noise of the best is selected and scored on held-out pacing sites. Prints the
   discovered structure and where the report is (``leads_run/report.md``).
3. **ECG world cohort** -- virtual patients from the calibrated drug-response model
   (placebo, dofetilide, quinidine, ranolazine, verapamil at several times after the
   dose), with exact intervals and risk labels.
4. **ECG world model** -- the world model that ships with the package
   (:func:`ecg_world.world.pretrained.load_shipped`, no training) imagines a virtual
   patient's ECG at 1, 2.5 and 6 h after dofetilide 500 ug (``ecg-world simulate --model
   quick``): rollouts as netCDF, a figure with the mean rollout, its 90% band and the intervals.
   The patient is from stage 3's cohort, which the shipped model never saw.

Usage: ``python -m leads_jax.demo [--out DIR] [--seed N] [--quick]``.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("MPLBACKEND", "Agg")




def ecg_cohort(out: pathlib.Path, seed: int) -> list[pathlib.Path]:
    import jax
    import matplotlib.pyplot as plt
    import numpy as np

    from leads_jax.physics.ecg_fiducials import reference_intervals_table
    from leads_jax.physics.mcsharry import McSharryECG, simulate_ecg_batch

    heart_rates = np.linspace(50.0, 110.0, 16)
    ecg = simulate_ecg_batch(
        duration=10, sampling_rate=500, heart_rate=heart_rates, heart_rate_std=1.0,
        key=jax.random.key(seed), noise=0.01, hr_scaling="physiological",
    )
    intervals = reference_intervals_table(McSharryECG.default(), heart_rates)
    ds = ecg.to_dataset(name="signal")
    for name in intervals.data_vars:
        ds[f"ref_{name}"] = ("ecg", np.asarray(intervals[name].values))
        ds[f"ref_{name}"].attrs.update(intervals[name].attrs)
    ds.attrs["description"] = "McSharry (ECGSYN) ECG cohort, physiological heart-rate scaling"
    path = out / "ecg_cohort.nc"
    ds.to_netcdf(path, engine="h5netcdf")

    fig, axes = plt.subplots(4, 1, figsize=(10, 7), sharex=True)
    for ax, i in zip(axes, (0, 5, 10, 15), strict=True):
        ax.plot(ds.time, ds.signal[i], lw=0.8)
        ax.set_ylabel("mV")
        ax.set_title(f"{heart_rates[i]:.0f} bpm", fontsize=9, loc="left")
    axes[-1].set_xlabel("time (s)")
    axes[-1].set_xlim(0, 4)
    fig.suptitle("McSharry ECG cohort (leads_jax.physics.mcsharry)")
    fig.tight_layout()
    png = out / "ecg_cohort.png"
    fig.savefig(png, dpi=110)
    plt.close(fig)
    qtcf = intervals["QTc_fridericia"].values
    print(f"  16 ECGs, 10 s at 500 Hz; reference QTcF {qtcf.min():.0f}-{qtcf.max():.0f} ms "
          f"over 50-110 bpm")
    return [path, png]


def leads_discover(out: pathlib.Path, seed: int, quick: bool) -> list[pathlib.Path]:
    import jax

    from leads_jax.agent import Budget, discover
    from leads_jax.agent._report import compile_wall_seconds
    from leads_jax.datasets import make_dataset, save_dataset
    from leads_jax.fit import FitConfig
    from leads_jax.geometry import Geometry
    from leads_jax.structure import Catalog

    # Aliev-Panfilov ground truth away from the catalog defaults (the search starts there).
    truth = {"a": 0.13, "k": 9.0}
    data = make_dataset("aliev-panfilov", Geometry.cable(32), t_train=40.0 if quick else 60.0,
                        save_every=2.0, noise=0.01, seed=seed, dt=0.25, parameters=truth)
    data_path = out / "leads_ground_truth.nc"
    save_dataset(data, data_path)
    # Three cell models keep the demo within minutes on a CPU (Fenton-Karma and
    # Bueno-Orovio need 5x smaller steps); `leads discover` uses the full catalog.
    catalog = Catalog.default().only("aliev-panfilov", "fitzhugh-nagumo", "mitchell-schaeffer")
    budget = Budget(rounds=2 if quick else 3, candidates=7 if quick else 9, k=3)
    config = FitConfig(steps=30 if quick else 80, learning_rate=0.03, eval_every=10,
                       patience=None if quick else 4, dt=0.25)
    run = out / "leads_run"
    res = discover(data, budget=budget, key=jax.random.key(seed), out=run, catalog=catalog,
                   config=config, resume=(run / "run.json").exists())
    print(f"  truth: aliev-panfilov with {truth}; candidates fitted: {len(res.history)} in "
          f"{res.rounds} round(s); stopped: {res.stop_reason}")
    if res.observation is not None:
        o = res.observation
        print(f"  discovered (candidate #{o.id}, val RMSE {o.val_rmse:.3g} mV, held-out test "
              f"RMSE {res.test_rmse:.3g} mV):")
        print("    " + o.formula.replace("\n", "\n    "))
        print("  fitted: " + ", ".join(f"{k} {v:.4g}" for k, v in sorted(o.params.items())))
    comp = sum(compile_wall_seconds(t) for t in res.timings)
    train = sum(t["train_seconds"] for t in res.timings)
    print(f"  compile {comp:.0f} s, train {train:.0f} s; report: {res.report['report']}")
    return [data_path, run / "results.nc", res.report["report"]]


def world_cohort(out: pathlib.Path, seed: int, quick: bool) -> list[pathlib.Path]:
    from ecg_world.cohort import synthesize, write_cohort

    cohort = synthesize(n_patients=4 if quick else 8, seed=seed)
    path = out / "ecg_world_cohort.nc"
    write_cohort(cohort, path)
    risk = cohort["torsade_risk"] if "torsade_risk" in cohort else None
    if risk is not None:
        share = risk.astype(float).mean(dim=[d for d in risk.dims if d != "action"])
        print("  share of (patient, time) cells at torsade risk, by action:")
        for a, v in zip(share.action.values, share.values, strict=True):
            print(f"    {a!s:<24} {100 * float(v):5.1f}%")
    return [path]


def world_rollouts(out: pathlib.Path, seed: int, quick: bool) -> list[pathlib.Path]:
    from ecg_world.cli import main as ecg_world_main

    dest = out / "world_rollouts"
    args = ["simulate", "--model", "quick", "--record", f"{out / 'ecg_world_cohort.nc'}:0",
            "--drug", "dofetilide", "--dose", "500", "--unit", "ug", "--hours", "1", "2.5", "6",
            "-k", "16" if quick else "64", "--seed", str(seed), "--out", str(dest)]
    if ecg_world_main(args) != 0:
        raise RuntimeError("ecg-world simulate failed (see the message above)")
    return [dest / "rollouts.nc", dest / "rollouts.png"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m leads_jax.demo", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", default="outputs/demo", help="output folder (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default %(default)s)")
    parser.add_argument("--quick", action="store_true", help="smaller problems (for tests)")
    args = parser.parse_args(argv)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    stages = (
        ("1/4 McSharry ECG cohort", lambda: ecg_cohort(out, args.seed)),
        ("2/4 LEADS: offline agent-driven discovery",
         lambda: leads_discover(out, args.seed, args.quick)),
        ("3/4 ECG world: drug-response cohort", lambda: world_cohort(out, args.seed, args.quick)),
        ("4/4 ECG world model: imagined post-dose ECGs (shipped weights)",
         lambda: world_rollouts(out, args.seed, args.quick)),
    )
    written: list[pathlib.Path] = []
    for title, run in stages:
        print(f"\n== {title} ==", flush=True)
        t0 = time.perf_counter()
        written += run()
        print(f"   ({time.perf_counter() - t0:.0f} s)", flush=True)
    print("\nOutputs:")
    for p in written:
        print(f"  {p.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
