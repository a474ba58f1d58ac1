"""The end-to-end demo behind ``make demo``: offline, built-in defaults, minutes on a CPU.

Three stages, each writing netCDF (h5netcdf) and a PNG figure:

1. **McSharry ECG cohort** -- 16 synthetic ECGs over 50-110 bpm with physiological
   heart-rate scaling, and their reference intervals (RR, PR, QRS, QT, QTcF).
2. **LEADS structure fitting** -- Aliev-Panfilov ground truth on a 1-D cable, four
   candidate structures (the true one, two misspecified reaction models and a hybrid
   with a bounded neural closure) fitted in parallel by gradient descent, with a
   stability audit over the 3x test horizon.
3. **ECG world cohort** -- virtual patients from the calibrated drug-response model
   (placebo, dofetilide, quinidine, ranolazine, verapamil at several times after the
   dose), with exact intervals and risk labels.

Usage: ``python -m leads_jax.demo [--out DIR] [--seed N] [--quick]``.
"""

from __future__ import annotations

import argparse
import json
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


def leads_fit(out: pathlib.Path, seed: int, quick: bool) -> list[pathlib.Path]:
    import jax
    import matplotlib.pyplot as plt
    import numpy as np

    from leads_jax.datasets import make_dataset, save_dataset
    from leads_jax.fit import FitConfig, fit
    from leads_jax.geometry import cable
    from leads_jax.structure import ClosureTerm, Structure

    geometry = cable(32)
    data = make_dataset("aliev-panfilov", geometry, t_train=120.0 if quick else 200.0,
                        save_every=2.0, noise=0.01, seed=seed)
    data_path = out / "leads_ground_truth.nc"
    save_dataset(data, data_path)
    # The Aliev-Panfilov candidates start 20% away from the truth (the catalog defaults
    # generated the data), so the fit has something to recover.
    truth = json.loads(data.attrs["parameters"])
    start = {"a": 1.2 * truth["a"], "k": 0.8 * truth["k"], "eps0": 1.2 * truth["eps0"],
             "D": 0.8 * truth["D"]}
    free = tuple(start)
    aliev = Structure.make("aliev-panfilov", "laplacian", free=free, values=start)
    candidates = [
        aliev,
        Structure.make("fitzhugh-nagumo", "laplacian", free=("a", "b", "c1", "D")),
        Structure.make("mitchell-schaeffer", "laplacian", free=("tau_in", "tau_out", "D")),
        aliev.with_closure(ClosureTerm("u", "additive", hidden=(8,))),
    ]
    config = FitConfig(steps=40 if quick else 120, learning_rate=2e-2, restarts=1)
    result = fit(candidates, data, config, key=jax.random.key(seed), progress=True,
                 save_dir=out / "leads_candidates")
    ds = result.dataset
    res_path = out / "leads_candidates" / "results.nc"  # written by fit(save_dir=...)
    table = ds[["formula", "val_rmse", "test_rmse", "stable"]].to_dataframe()
    table["formula"] = table["formula"].str.split("\n").str[0].str.slice(0, 60)
    print(table.to_string())
    best = result.best()
    fitted = ds.params.sel(candidate=0).to_series().dropna()
    print("  Aliev-Panfilov, fitted / true: " + ", ".join(
        f"{k} {v:.4g}/{truth[k]:.4g}" for k, v in fitted.items() if k in truth))
    print(f"  best by validation RMSE: candidate {best}:")
    print("    " + str(ds.formula.values[best]).replace("\n", "\n    "))

    fig, ax = plt.subplots(figsize=(8, 4))
    for i in range(ds.sizes["candidate"]):
        ax.semilogy(np.asarray(ds.train_curve[i]),
                    label=str(ds.formula.values[i]).split("\n")[0][:70])
    ax.set_xlabel("training step")
    ax.set_ylabel("training loss")
    ax.legend(fontsize=6)
    ax.set_title("LEADS: candidate structures fitted in parallel")
    fig.tight_layout()
    png = out / "leads_fit.png"
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return [data_path, res_path, png]


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
        ("1/3 McSharry ECG cohort", lambda: ecg_cohort(out, args.seed)),
        ("2/3 LEADS: candidate structures fitted in parallel",
         lambda: leads_fit(out, args.seed, args.quick)),
        ("3/3 ECG world: drug-response cohort", lambda: world_cohort(out, args.seed, args.quick)),
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
