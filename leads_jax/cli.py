"""The ``leads`` command line (argparse sub-commands; later issues add more).

    leads simulate --model aliev-panfilov --geometry ventricle --out data.nc
    leads info data.nc
    leads measure data.nc
    leads catalog
    leads import traces.csv --pacing-period 300 --out data.nc
    leads discover --data data.nc --out runs/NAME [--policy llm --llm-model ...]
    leads report runs/NAME

The same from Python: :func:`leads_jax.datasets.make_dataset` and
:func:`leads_jax.datasets.save_dataset`. Errors in the input (unknown model, geometry,
pacing site, malformed parameters) print ``leads: error: ...`` and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from ._cache import cacheable_runtime_checks, enable_compilation_cache

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


def _floats(text: str, what: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"{what}: {text!r} is not a comma-separated list of numbers") from None


def _import_geometry(text: str | None):
    if text is None or text == "single-cell":
        return None
    kind, _, rest = text.partition(":")
    if kind == "cable":
        return {"spacing": float(rest)}
    if kind == "sheet":
        shape, _, dx = rest.partition(":")
        nx, _, ny = shape.partition("x")
        return {"spacing": float(dx), "shape": (int(nx), int(ny))}
    if "," in text:
        return tuple(x.strip() for x in text.split(",", 1))
    return text


def _cmd_import(args) -> int:
    import numpy as np

    from .recording import from_recording, save_recording

    pacing = None
    if args.pacing_times or args.pacing_period:
        pacing = {"duration": args.duration, "amplitude": args.amplitude}
        if args.pacing_times:
            pacing["times"] = _floats(args.pacing_times, "--pacing-times")
        else:
            pacing.update(period=args.pacing_period, start=args.pacing_start)
            if args.pacing_count:
                pacing["count"] = args.pacing_count
        if args.pacing_sites:
            parts = [p.strip() for p in args.pacing_sites.split(",") if p.strip()]
            pacing["sites"] = (parts[0] if len(parts) == 1 and not parts[0].isdigit()
                               else [int(p) for p in parts])
        if pacing["duration"] is None:
            del pacing["duration"]
    elif args.pacing_sites:
        raise ValueError("--pacing-sites needs --pacing-times or --pacing-period")
    split = None
    if args.split_beats:
        split = {"beats": tuple(int(x) for x in _floats(args.split_beats, "--split-beats"))}
    elif args.split_times:
        split = {"times": tuple(_floats(args.split_times, "--split-times"))}
    regions = None
    if args.regions:
        regions = (np.load(args.regions, allow_pickle=False) if args.regions.endswith(".npy")
                   else np.loadtxt(args.regions, dtype=str, delimiter=","))
    data = from_recording(
        args.traces, time=args.sampling_interval, time_unit=args.time_unit,
        voltage_unit=args.voltage_unit, geometry=_import_geometry(args.geometry),
        pacing=pacing, regions=regions, split=split,
        allow_disconnected=args.allow_disconnected,
    )
    path = save_recording(data, args.out)
    if not args.quiet:
        print(data.provenance["description"])
        for name, sp in data.splits.items():
            start = "start" if sp.t_start is None else f"{sp.t_start:g} ms"
            print(f"  {name}: samples {list(sp.samples)}, ({start}, {sp.t_end:g} ms]")
        for w in data.warnings:
            print(f"  warning: {w}")
        print(f"wrote {path}")
    return 0


def _cmd_discover(args) -> int:
    import jax

    from .agent import METHODS, Budget, discover
    from .fit import FitConfig
    from .structure import Catalog

    if args.policy not in ("offline", "llm"):
        raise ValueError(f"unknown policy {args.policy!r}; use offline or llm")
    if args.method not in METHODS:
        raise ValueError(f"unknown method {args.method!r}; valid methods are {METHODS}")
    llm = None
    if args.policy == "llm":
        if not args.llm_model:
            raise ValueError("--policy llm needs --llm-model PROVIDER/MODEL "
                             "(e.g. openai/gpt-4o-mini)")
        llm = {"model": args.llm_model, "api_base": args.api_base,
               "timeout_s": args.llm_timeout}
    budget = Budget(rounds=args.budget_rounds, candidates=args.budget_candidates,
                    seconds=args.budget_seconds, k=args.per_round, patience=args.patience,
                    max_cost=args.max_cost, max_tokens=args.max_tokens)
    catalog = Catalog.default()
    if args.without:
        catalog = catalog.without(*[x.strip() for x in args.without.split(",") if x.strip()])
    config = FitConfig(steps=args.steps, learning_rate=args.learning_rate,
                       restarts=args.restarts)
    gain = {"auto": None, "on": True, "off": False}[args.observation_gain]
    res = discover(args.data, policy=args.policy, method=args.method, budget=budget,
                   key=jax.random.key(args.seed), out=args.out, resume=args.resume,
                   catalog=catalog, config=config, llm=llm, progress=not args.quiet,
                   observation_gain=gain)
    if res.best is None:
        print("no stable candidate")
    else:
        print(f"selected candidate #{res.best_id} (val RMSE {res.observation.val_rmse:.4g} mV, "
              f"held-out test RMSE {res.test_rmse:.4g} mV):")
        print(res.observation.formula)
    print(f"stopped: {res.stop_reason}")
    if res.report:
        print(f"report: {res.report['report']}")
    return 0


def _cmd_report(args) -> int:
    import pathlib

    from .agent import write_report

    folder = pathlib.Path(args.run)
    if not (folder / "run.json").exists():
        raise FileNotFoundError(f"{folder} is not a discovery run folder (no run.json)")
    paths = write_report(folder)
    print(f"report: {paths['report']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="leads", description="LEADS: hybrid cardiac EP models in JAX")
    p.add_argument("--compile-cache", metavar="DIR", default=None,
                   help="JAX persistent compilation cache folder, so repeated or resumed runs do "
                        "not recompile (default: $LEADS_JAX_CACHE_DIR, else off)")
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

    im = sub.add_parser(
        "import",
        help="import a user's voltage recording into a dataset",
        description="Build a dataset from recorded voltage traces (CSV, .npy, .npz or netCDF), "
        "a geometry and the pacing protocol (leads_jax.recording.from_recording); no "
        "ground-truth variables needed. Splits the record by beat (or time) into train, "
        "val and test windows.",
    )
    im.add_argument("traces", help="traces file: .csv (time column + one column per node), "
                    ".npy, .npz (voltage[, time]) or .nc")
    im.add_argument("--out", required=True, help="output dataset (.nc)")
    im.add_argument("--time-unit", default="ms", choices=("ms", "s", "us"))
    im.add_argument("--voltage-unit", default="mV", choices=("mV", "V"))
    im.add_argument("--sampling-interval", type=float, default=None,
                    help="sampling interval (time units) when the file has no time axis")
    im.add_argument("--geometry", default=None,
                    help="single-cell (default), cable:DX_CM, sheet:NXxNY:DX_CM, a mesh .npz "
                    "(vertices, faces[, regions]) or VERTS.csv,FACES.csv")
    im.add_argument("--regions", default=None, help="region label per node (.npy or .csv)")
    im.add_argument("--pacing-sites", default=None,
                    help="paced node indices (comma-separated) or a site name")
    im.add_argument("--pacing-times", default=None, help="comma-separated pulse onsets "
                    "(time units, the record's clock)")
    im.add_argument("--pacing-period", type=float, default=None, help="pacing cycle length")
    im.add_argument("--pacing-count", type=int, default=None, help="number of pulses")
    im.add_argument("--pacing-start", type=float, default=0.0, help="first onset")
    im.add_argument("--duration", type=float, default=None, help="pulse duration (time units)")
    im.add_argument("--amplitude", type=float, default=None,
                    help="pulse amplitude (model state units per ms; default 0.5)")
    im.add_argument("--split-beats", default=None, help="N_TRAIN,N_VAL beats (rest: test)")
    im.add_argument("--split-times", default=None, help="T_TRAIN,T_VAL window ends")
    im.add_argument("--allow-disconnected", action="store_true",
                    help="accept a disconnected mesh (recorded as a warning)")
    im.add_argument("--quiet", action="store_true")
    im.set_defaults(func=_cmd_import)

    d = sub.add_parser(
        "discover",
        help="agent-driven discovery of a model structure for a dataset",
        description="Rounds of propose -> fit in parallel -> observe -> reflect "
        "(leads_jax.agent.discover). Every round is written atomically under --out; "
        "--resume continues from the last finished round.",
    )
    d.add_argument("--data", required=True, help="dataset (.nc, leads_jax.datasets format)")
    d.add_argument("--policy", default="offline", help="offline (default) or llm")
    d.add_argument("--llm-model", default=None, help="litellm provider/model, e.g. "
                   "openai/gpt-4o-mini (API key from the environment)")
    d.add_argument("--api-base", default=None, help="endpoint of a local/self-hosted server")
    d.add_argument("--llm-timeout", type=float, default=30.0, help="seconds per LLM request")
    d.add_argument("--method", default="leads", help="leads (default), hand-hybrid, "
                   "unstructured, random, neural, no-structure, one-round, no-memory, "
                   "no-reflection")
    d.add_argument("--budget-rounds", type=int, default=4)
    d.add_argument("--budget-candidates", type=int, default=16)
    d.add_argument("--budget-seconds", type=float, default=None)
    d.add_argument("--per-round", type=int, default=5, help="candidates proposed per round")
    d.add_argument("--patience", type=int, default=2, help="rounds without improvement")
    d.add_argument("--max-cost", type=float, default=None, help="LLM budget, USD")
    d.add_argument("--max-tokens", type=int, default=None, help="LLM budget, tokens")
    d.add_argument("--steps", type=int, default=150, help="fitting steps per candidate")
    d.add_argument("--learning-rate", type=float, default=2e-2)
    d.add_argument("--restarts", type=int, default=1)
    d.add_argument("--without", default=None,
                   help="comma-separated catalog terms to remove (misspecified searches)")
    d.add_argument("--observation-gain", choices=("auto", "on", "off"), default="auto",
                   help="fit every candidate through a bounded gain and offset to mV; "
                   "auto (default): on for a recording from 'leads import', off for data "
                   "simulated by this package")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--out", required=True, help="run folder, e.g. runs/NAME")
    d.add_argument("--resume", action="store_true", help="continue the run in --out")
    d.add_argument("--quiet", action="store_true", help="no progress bar")
    d.add_argument("--no-compile-cache", action="store_true",
                   help="do not use JAX's persistent compilation cache")
    d.set_defaults(func=_cmd_discover)

    rp = sub.add_parser("report", help="rebuild report.md and figures of a discovery run",
                        description="Rebuild runs/NAME/report.md (and figures) from the run "
                        "folder's files only.")
    rp.add_argument("run", help="run folder (runs/NAME)")
    rp.set_defaults(func=_cmd_report)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        # --compile-cache DIR, else $LEADS_JAX_CACHE_DIR, unless a command opts out; a
        # resumed or repeated run then does not recompile
        if (not getattr(args, "no_compile_cache", False)
                and enable_compilation_cache(args.compile_cache) is not None):
            cacheable_runtime_checks()  # else the large programs never enter the cache
        return int(args.func(args) or 0)
    except (ValueError, KeyError, FileNotFoundError) as err:
        msg = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        print(f"leads: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
