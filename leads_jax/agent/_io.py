"""Run folders that survive faults: every round is written whole, or not at all.

Layout of ``out/``::

    run.json                  the run's settings (method, policy, budget, seed, data)
    progress.json             where a running run is (round, phase), for watchers
    round_000/                one folder per FINISHED round
        structures.json       candidates: id, parent, origin, spec, memory key
        metrics.json          observations (typed form, JSON)
        metrics.nc            the fit's results Dataset of the round (xarray)
        candidates/<id>.eqx   fitted models (leads_jax.fit.save_candidate)
        transcript.jsonl      proposals, rejections, fits, reflection of the round
        timings.json          compile / train / observe seconds, compilations
        policy.json           the policy's state after the round (LLM budget used)
    transcript.jsonl          all rounds' transcripts, rebuilt after each round
    report.md, results.nc, figures/*.png

A round is first written to ``round_XXX.partial/`` and then renamed (an atomic
``os.replace`` of a folder on POSIX); a killed run leaves at most a ``.partial`` folder,
which ``resume=True`` deletes before continuing from the last finished round. Files are
written through a temporary file and ``os.replace``. No pickle: JSON, netCDF and
``eqx.tree_serialise_leaves``.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import shutil

from ..fit._io import atomic_write_bytes

__all__ = ["atomic_write_text", "finished_rounds", "read_json", "round_dir", "write_json"]


def atomic_write_text(path, text: str) -> pathlib.Path:
    """Write `text` (UTF-8) to `path` atomically (the fitting engine's writer)."""
    atomic_write_bytes(path, text.encode("utf-8"))
    return pathlib.Path(path)


def _clean(x):
    """JSON-safe: non-finite floats become strings ("inf", "nan")."""
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    return x


def _unclean(x):
    if isinstance(x, str) and x in ("inf", "-inf", "nan"):
        return float(x)
    if isinstance(x, dict):
        return {k: _unclean(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_unclean(v) for v in x]
    return x


def dumps(obj, indent: int | None = 1) -> str:
    return json.dumps(_clean(obj), indent=indent, sort_keys=True, allow_nan=False)


def write_json(path, obj) -> pathlib.Path:
    return atomic_write_text(path, dumps(obj) + "\n")


def read_json(path):
    with open(path, encoding="utf-8") as f:
        return _unclean(json.load(f))


def jsonl(records) -> str:
    return "".join(dumps(r, indent=None) + "\n" for r in records)


def read_jsonl(path) -> list:
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                out.append(_unclean(json.loads(line)))
    return out


def round_dir(out, r: int, partial: bool = False) -> pathlib.Path:
    return pathlib.Path(out) / (f"round_{r:03d}" + (".partial" if partial else ""))


def finished_rounds(out) -> list[int]:
    """Indices of the finished rounds in `out` (contiguous from 0), removing any
    leftover ``.partial`` folder of an interrupted round."""
    out = pathlib.Path(out)
    if not out.exists():
        return []
    for p in out.glob("round_*.partial"):
        shutil.rmtree(p, ignore_errors=True)
    done = sorted(int(p.name.split("_")[1]) for p in out.glob("round_[0-9][0-9][0-9]")
                  if p.is_dir())
    rounds = []
    for i, r in enumerate(done):
        if r != i:
            break
        rounds.append(r)
    return rounds


def commit_round(partial: pathlib.Path, final: pathlib.Path) -> None:
    """Rename a fully written round folder into place (atomic)."""
    if final.exists():
        shutil.rmtree(final)
    os.replace(partial, final)
    fd = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
