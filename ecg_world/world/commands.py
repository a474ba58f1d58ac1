"""``ecg-world train`` and ``ecg-world simulate`` (the parsers are in :mod:`ecg_world.cli`, which
imports this module only when one of the two runs, so the other commands never load flax)."""

from __future__ import annotations

import json
import pathlib
import shlex
import sys

import numpy as np


def run_train(args) -> int:
    import dataclasses

    from .train import PRESETS, train

    cfg = dataclasses.replace(PRESETS[args.preset], seed=int(args.seed),
                              use_anchor=not args.no_anchor)
    if args.steps is not None:
        cfg = dataclasses.replace(cfg, diff_steps=int(args.steps))
    if args.ae_steps is not None:
        cfg = dataclasses.replace(cfg, ae_steps=int(args.ae_steps))
    for name, arg in (("anchor_scale", "anchor_scale"), ("anchor_power", "anchor_power"),
                      ("guidance_scale", "guidance")):
        v = getattr(args, arg, None)
        if v is not None:
            if not np.isfinite(v) or v < 0:
                raise ValueError(f"--{arg.replace('_', '-')} must be finite and >= 0 (got {v})")
            cfg = dataclasses.replace(cfg, **{name: float(v)})
    rho = getattr(args, "guidance_spread", None)
    if rho is not None:
        if not 0.0 <= rho <= 1.0:
            raise ValueError(f"--guidance-spread must be in [0, 1] (got {rho})")
        cfg = dataclasses.replace(cfg, guidance_spread=float(rho))
    if getattr(args, "guidance_target", None) is not None:
        cfg = dataclasses.replace(cfg, guidance_target=str(args.guidance_target))
    command = "ecg-world " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    prep, real = None, None
    if getattr(args, "ae_ludb", None) is not None:  # the strips need the cohort's strip spec
        from .train import ludb_tuning_strips, prepare_data

        prep = prepare_data(args.data, seed=cfg.seed, anchor_steps=cfg.anchor_steps)
        strips, ids = ludb_tuning_strips(args.ae_ludb, prep.pairs.spec)
        real = (strips, {"source": "LUDB tuning split (ecg_world.ludb.ludb_split)",
                         "records": ids})
    model, hist = train(args.data, args.out, cfg, resume=args.resume, command=command,
                        prepared=prep, real_strips=real)
    ae = hist["ae_loss"]
    dl = hist["diff_loss"]
    print(f"wrote {args.out}: autoencoder MSE {ae[-1] if ae.size else float('nan'):.3g} mV^2, "
          f"diffusion loss {dl[-1, 0] if dl.size else float('nan'):.3f} (v {dl[-1, 1]:.3f}, "
          f"anchor {dl[-1, 2]:.3f})" if dl.size else f"wrote {args.out}")
    return 0


def run_simulate(args) -> int:
    from ..actions import Action, make_action
    from ..calibrated import default_calibration
    from ..drugs import load_drugs
    from ..intervals import IntervalConfig, measure_intervals
    from .model import load_model
    from .pretrained import resolve_model
    from .sample import SAMPLERS, plot_rollouts, read_input_strip, simulate

    if args.k < 1:
        raise ValueError(f"-k (rollouts) must be >= 1 (got {args.k})")
    if args.sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {args.sampler!r}; valid: {list(SAMPLERS)}")
    hours = [float(h) for h in args.hours]
    if any(not np.isfinite(h) or h < 0 for h in hours):
        raise ValueError(f"--hours must be finite and >= 0 h since the dose (got {hours})")
    model_dir = resolve_model(args.model)
    model = load_model(model_dir)
    cal = default_calibration()
    if args.drugs_file:
        cal = cal.with_library(load_drugs(args.drugs_file))
    pharm = cal.pharmacology
    acts = [make_action(args.drug, args.dose, args.unit, h, library=pharm.library)
            for h in hours]
    action = Action(np.array([int(a.drug) for a in acts]),
                    np.array([float(a.dose_mg) for a in acts], np.float32),
                    np.array(hours, np.float32), pharm.library)
    pre, source = read_input_strip(args.record, model.spec, start_s=args.start)
    ds = simulate(model, pre, action, pharm, k=args.k, seed=args.seed, steps=args.steps,
                  sampler=args.sampler, source=source, model_dir=str(model_dir))
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    icfg = IntervalConfig.for_duration(model.spec.sampling_rate, model.spec.duration_s)
    res = measure_intervals(ds["ecg"].values[:, :, :1], icfg)  # lead II
    med = {k: np.nanmedian(np.asarray(getattr(res.median, k))[:, :, 0], axis=1)
           for k in ("qtc_fridericia", "pr", "qrs")}
    for k, v in med.items():
        ds[f"median_{k}"] = (("time_after_dose",), v.astype(np.float32),
                             {"units": "ms", "long_name": f"median over rollouts of the "
                              f"median-beat {k} (lead II, ecg_world.intervals)"})
    nc = out / "rollouts.nc"
    ds.to_netcdf(nc, engine="h5netcdf")
    fig = plot_rollouts(ds, out / "rollouts.png",
                        intervals={"QTcF": med["qtc_fridericia"], "PR": med["pr"]})
    summary = {h: {k: float(v[i]) for k, v in med.items()} for i, h in enumerate(hours)}
    print(f"wrote {nc} and {fig}: {args.k} rollouts x {len(hours)} times; median intervals "
          f"{json.dumps(summary)}")
    return 0
