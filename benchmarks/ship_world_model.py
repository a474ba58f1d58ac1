"""Rebuild the world model that ships in the package (``ecg_world/data/models/quick``).

Runs the user-facing commands, in order, in a work folder::

    ecg-world synth --n-patients 96 --seed 1 --duration 4.2 --out WORK/cohort.nc
    ecg-world train --data WORK/cohort.nc --out WORK/model --preset quick --seed 0 \
        --ae-ludb ../shared/data/ludb

(``--ae-ludb``: the unlabelled strips of the LUDB records of the tuning split join the
autoencoder's training; only when that folder exists, and the config says which records), then
copies the model directory (``config.json`` + ``weights/``; not the training checkpoint)
into the package, atomically (a temporary folder renamed into place), and adds to its
``config.json`` the commands above (``"reproduce"``), the git commit and the size. The weights'
SHA-256 in ``config.json`` is the one ``load_model`` checks.

``--update-sampling`` instead rewrites only the sampling-time settings of the shipped model
(the anchor guidance ``guidance_scale, guidance_power, guidance_spread, guidance_target``) from
the preset, leaving the weights as they are (the guidance does not enter training), and records
the commit and the command that chose them (``benchmarks/world_model_guidance.py``) under
``reproduce.sampling``.

The same cohort and model are the "world model" row of ``benchmarks/ecg_world_model.py``::

    python benchmarks/ship_world_model.py --work /tmp/wm
    ecg-world train --data /tmp/wm/cohort.nc --out /tmp/wm/model_noanchor --preset quick \\
        --no-anchor --seed 0 --ae-ludb ../shared/data/ludb
    python benchmarks/ecg_world_model.py --data /tmp/wm/cohort.nc \\
        --model ecg_world/data/models/quick --model-no-anchor /tmp/wm/model_noanchor
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEST = ROOT / "ecg_world" / "data" / "models"
MAX_BYTES = 5 * 1024 * 1024


def _run(args: list[str]) -> None:
    print("+ ecg-world " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "ecg_world.cli", *args], check=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=pathlib.Path, default=None,
                    help="work folder for the cohort and the training run (default: a "
                         "temporary folder, removed afterwards)")
    ap.add_argument("--name", default="quick", help="shipped model name (default quick)")
    ap.add_argument("--ludb", type=pathlib.Path, default=ROOT.parent / "shared" / "data" / "ludb",
                    help="LUDB folder whose tuning split joins the autoencoder (default "
                         "../shared/data/ludb; skipped when absent)")
    ap.add_argument("--update-sampling", action="store_true",
                    help="only rewrite the shipped model's sampling-time guidance settings "
                         "from the preset (no training)")
    args = ap.parse_args(argv)
    from ecg_world.calibration import _git_commit
    from ecg_world.world.model import replace_dir

    if args.update_sampling:
        return update_sampling(args.name)

    work = args.work or pathlib.Path(tempfile.mkdtemp(prefix="ship_world_model."))
    work.mkdir(parents=True, exist_ok=True)
    cohort, model = work / "cohort.nc", work / "model"
    if model.exists():
        raise SystemExit(f"{model} exists; remove it or choose another --work")
    synth = ["synth", "--n-patients", "96", "--seed", "1", "--duration", "4.2",
             "--out", str(cohort)]
    train = ["train", "--data", str(cohort), "--out", str(model), "--preset", args.name,
             "--seed", "0"]
    if args.ludb.is_dir():
        train += ["--ae-ludb", str(args.ludb)]
    else:
        print(f"{args.ludb} not found: the autoencoder trains on synthetic strips only")
    t0 = time.perf_counter()
    _run(synth)
    t1 = time.perf_counter()
    _run(train)
    t2 = time.perf_counter()
    size = sum(f.stat().st_size for f in (model / "weights").rglob("*") if f.is_file())
    if size > MAX_BYTES:
        raise SystemExit(f"the weights are {size / 2**20:.1f} MiB, over the 5 MiB limit")
    cfg = json.loads((model / "config.json").read_text())
    def rel(a):
        out = []
        for x in a:
            if x.startswith(str(work)):
                x = pathlib.Path(x).name
            elif x == str(args.ludb):
                x = "../shared/data/ludb"
            out.append(x)
        return out

    cfg["reproduce"] = {"commands": ["ecg-world " + " ".join(rel(synth)),
                                     "ecg-world " + " ".join(rel(train)),
                                     "or: python benchmarks/ship_world_model.py"],
                        "git_commit": _git_commit(), "weights_bytes": size,
                        "synth_seconds": round(t1 - t0, 1), "train_seconds": round(t2 - t1, 1)}
    cfg["data"]["path"] = "cohort.nc (not shipped: made by the synth command above)"
    DEST.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{args.name}.", dir=DEST))
    tmp.chmod(0o755)  # mkdtemp's 0700 would hide the model from other users of an install
    try:
        shutil.copytree(model / "weights", tmp / "weights")
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        replace_dir(tmp, DEST / args.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    print(f"shipped {DEST / args.name}: {size / 2**20:.2f} MiB of weights; synth "
          f"{t1 - t0:.0f} s, train {t2 - t1:.0f} s")
    return 0


SAMPLING_FIELDS = ("guidance_scale", "guidance_power", "guidance_spread", "guidance_target")


def update_sampling(name: str) -> int:
    """Rewrite the shipped model's sampling-time settings from the preset (module docstring)."""
    from ecg_world.calibration import _git_commit
    from ecg_world.world.diffusion import GUIDANCE_RULE
    from ecg_world.world.model import load_model, replace_dir
    from ecg_world.world.train import PRESETS

    src = DEST / name
    cfg = json.loads((src / "config.json").read_text())
    preset = PRESETS[name]
    for f in SAMPLING_FIELDS:
        v = getattr(preset, f)
        cfg["diffusion"][f] = v
        cfg["training"][f] = v
        cfg["anchor"][f] = v
    cfg["anchor"]["guidance"] = GUIDANCE_RULE
    cfg["reproduce"]["sampling"] = {
        "fields": {f: getattr(preset, f) for f in SAMPLING_FIELDS},
        "chosen_by": "python benchmarks/world_model_guidance.py --data cohort.nc --model "
                     f"ecg_world/data/models/{name} (validation patients; "
                     "benchmarks/results/world_model_guidance.md)",
        "git_commit": _git_commit(),
        "note": "sampling-time settings only; the weights are those of reproduce.git_commit"}
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{name}.", dir=DEST))
    tmp.chmod(0o755)
    try:
        shutil.copytree(src / "weights", tmp / "weights")
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        load_model(tmp)  # the rewritten directory still loads (hash, config)
        replace_dir(tmp, src)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"updated {src}: " + ", ".join(f"{f} {getattr(preset, f)}" for f in SAMPLING_FIELDS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
