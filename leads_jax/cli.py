"""The ``leads`` command line (argparse sub-commands; later issues add more).

    leads simulate --model aliev-panfilov --geometry ventricle --out data.nc
    leads info data.nc
    leads measure data.nc
    leads catalog

The same from Python: :func:`leads_jax.datasets.make_dataset` and
:func:`leads_jax.datasets.save_dataset`. Errors in the input (unknown model, geometry,
pacing site, malformed parameters) print ``leads: error: ...`` and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

__all__ = ["main", "build_parser"]


def _parse_param(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise ValueError(f"--param expects NAME=VALUE (or NAME=v1,v2,... per region); got {text!r}")
    name, value = text.split("=", 1)
    name = name.strip()
    try:
        parts = [float(v) for v in value.split(",")]
    except ValueError:
        raise ValueError(
            f"--param {name}: {value!r} is not a number (or comma-separated numbers)"
        ) from None
    return name, parts[0] if len(parts) == 1 else parts


def _parse_site(text: str):
    text = text.strip()
    if text.lstrip("-").isdigit():
        return int(text)
    if "+" in text and all(p.strip().lstrip("-").isdigit() for p in text.split("+")):
        return [int(p) for p in text.split("+")]
    return text


def _cmd_simulate(args) -> int:
    from .datasets import make_dataset, make_geometry, save_dataset

    gkw = {}
    if args.geometry == "cable":
        if args.n_nodes is not None:
            gkw["n_nodes"] = args.n_nodes
        if args.dx is not None:
            gkw["dx"] = args.dx
    elif args.geometry == "sheet":
        if args.nx is not None:
            gkw["nx"] = args.nx
        if args.ny is not None:
            gkw["ny"] = args.ny
        if args.dx is not None:
            gkw["dx"] = args.dx
        if args.n_nodes is not None:
            raise ValueError("--n-nodes applies to cable and ventricle; use --nx/--ny for a sheet")
    elif args.geometry == "ventricle":
        if args.n_nodes is not None:
            gkw["n_nodes"] = args.n_nodes
        if args.dx is not None:
            raise ValueError("--dx applies to cable and sheet geometries")
    geo = make_geometry(args.geometry, **gkw)
    model = args.model
    if model.startswith("@"):
        with open(model[1:]) as f:
            model = f.read()
    if args.protocol == "s1s2":
        protocol = {
            "kind": "s1s2",
            "s1_period": args.s1_period,
            "n_s1": args.n_s1,
            "s2_interval": args.s2_interval,
        }
    elif args.protocol == "train":
        protocol = {"kind": "train", "period": args.s1_period, "n": args.n_s1}
    else:
        protocol = {"kind": "single"}
    for k in ("amplitude", "duration"):
        if getattr(args, k) is not None:
            protocol[k] = getattr(args, k)
    sites = None
    if args.sites:
        sites = [_parse_site(s) for s in args.sites.split(",") if s.strip()]
    params = dict(_parse_param(p) for p in args.param or [])
    ds = make_dataset(
        model,
        geo,
        pacing_sites=sites,
        protocols=[protocol],
        t_train=args.t_train,
        horizon_factor=args.horizon_factor,
        save_every=args.save_every,
        parameters=params,
        noise=args.noise,
        seed=args.seed,
        solver=args.solver,
        dt=args.dt,
    )
    path = save_dataset(ds, args.out)
    if not args.quiet:
        pairs = zip(ds["pacing_site"].values, ds["split"].values, strict=True)
        split_text = ", ".join(f"{s}:{p}" for s, p in pairs)
        print(ds.attrs["description"])
        print(
            f"samples: {ds.sizes['sample']} ({split_text}); "
            f"time points: {ds.sizes['time']}; nodes: {ds.sizes['node']}"
        )
        print(f"wrote {path}")
    return 0


def _cmd_info(args) -> int:
    from .datasets import load_dataset

    ds = load_dataset(args.path, allow_nan=True)
    print(ds.attrs.get("description", ""))
    print(f"structure: {ds.attrs['structure']}")
    print(f"parameters: {ds.attrs['parameters']}")
    print(f"dims: {dict(ds.sizes)}")
    for i in range(ds.sizes["sample"]):
        print(
            f"  sample {i}: site {ds['pacing_site'].values[i]}, protocol "
            f"{ds['protocol'].values[i]}, split {ds['split'].values[i]}"
        )
    return 0


def _cmd_measure(args) -> int:
    import numpy as np

    from .datasets import geometry_from_dataset, load_dataset
    from .measure import activation_times, apd90, conduction_velocity

    ds = load_dataset(args.path, allow_nan=True)
    geo = geometry_from_dataset(ds)
    samples = range(ds.sizes["sample"]) if args.sample is None else [args.sample]
    rows = []
    for i in samples:
        if not 0 <= i < ds.sizes["sample"]:
            raise ValueError(f"--sample {i} is out of range (0..{ds.sizes['sample'] - 1})")
        v = ds["observed_clean" if "observed_clean" in ds else "observed"].isel(sample=i)
        act = activation_times(v)
        apd = apd90(v)
        cv = conduction_velocity(
            act,
            geo,
            exclude_nodes=geo.pacing_site(
                [int(n) for n in np.nonzero(ds["stim_sites"].values[i])[0]]
            ),
        )
        row = {
            "sample": i,
            "pacing_site": str(ds["pacing_site"].values[i]),
            "activated_fraction": float(np.isfinite(act.values).mean()),
            "last_activation_ms": float(np.nanmax(act.values))
            if np.isfinite(act.values).any()
            else None,
            "apd90_median_ms": float(np.nanmedian(apd.values))
            if np.isfinite(apd.values).any()
            else None,
            "cv_median_cm_per_ms": float(cv["cv_median"]) if np.isfinite(cv["cv_median"]) else None,
        }
        rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            print(
                ", ".join(
                    f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()
                )
            )
    return 0


def _cmd_catalog(args) -> int:
    from .physics.reactions import REACTIONS

    for name, cls in REACTIONS.items():
        print(
            f"{name:20s} states={','.join(cls.state_names):14s} stable_dt={cls.stable_dt:g} ms "
            f"params={','.join(cls.param_names())}"
        )
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="leads", description="LEADS: hybrid cardiac EP models in JAX")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    s = sub.add_parser(
        "simulate",
        help="simulate ground truth and write a netCDF dataset",
        description="Simulate a catalog model (or structure JSON) on a geometry "
        "from several pacing sites and write the dataset (leads_jax.datasets).",
    )
    s.add_argument(
        "--model",
        default="aliev-panfilov",
        help="reaction model name (aliases ok), structure JSON, or @file.json",
    )
    s.add_argument("--geometry", default="cable", choices=("cable", "sheet", "ventricle"))
    s.add_argument("--n-nodes", type=int, default=None, help="cable / ventricle node count")
    s.add_argument("--nx", type=int, default=None, help="sheet nodes along x")
    s.add_argument("--ny", type=int, default=None, help="sheet nodes along y")
    s.add_argument("--dx", type=float, default=None, help="cable/sheet spacing (cm)")
    s.add_argument("--out", required=True, help="output path (.nc)")
    s.add_argument(
        "--sites",
        default=None,
        help="comma-separated pacing sites (names or node indices; '3+4' = both)",
    )
    s.add_argument("--protocol", default="single", choices=("single", "s1s2", "train"))
    s.add_argument("--s1-period", type=float, default=400.0, help="S1 (or train) period, ms")
    s.add_argument("--n-s1", type=int, default=2, help="number of S1 (or train) pulses")
    s.add_argument("--s2-interval", type=float, default=250.0, help="S1-S2 coupling interval, ms")
    s.add_argument("--amplitude", type=float, default=None, help="stimulus amplitude per ms")
    s.add_argument("--duration", type=float, default=None, help="stimulus duration, ms")
    s.add_argument("--t-train", type=float, default=200.0, help="training horizon, ms")
    s.add_argument(
        "--horizon-factor", type=float, default=3.0, help="test horizon / training horizon"
    )
    s.add_argument("--save-every", type=float, default=1.0, help="sampling interval, ms")
    s.add_argument("--noise", type=float, default=0.0, help="noise std as a fraction of the range")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument(
        "--param",
        action="append",
        metavar="NAME=VALUE",
        help="true parameter value (repeatable; NAME=v1,v2 for per-region values)",
    )
    s.add_argument("--solver", default="rk4")
    s.add_argument("--dt", type=float, default=None, help="integration step, ms")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=_cmd_simulate)

    i = sub.add_parser("info", help="describe a dataset")
    i.add_argument("path")
    i.set_defaults(func=_cmd_info)

    m = sub.add_parser("measure", help="activation, APD90 and conduction velocity of a dataset")
    m.add_argument("path")
    m.add_argument("--sample", type=int, default=None)
    m.add_argument("--json", action="store_true")
    m.set_defaults(func=_cmd_measure)

    c = sub.add_parser("catalog", help="list the reaction models")
    c.set_defaults(func=_cmd_catalog)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, KeyError, FileNotFoundError) as err:
        msg = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        print(f"leads: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
