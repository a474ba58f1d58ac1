"""World models that ship with the package, so that the demo, the notebooks and the risk
ranking run without training.

Shipped models live in ``ecg_world/data/models/NAME/`` as ordinary model directories
(:mod:`ecg_world.world.model`: ``config.json`` + an orbax ``weights/`` checkpoint, no pickle).
Their ``config.json`` records the commands that reproduce them under ``"reproduce"``; the
weights' SHA-256 is checked on every load.

=========  ==================================================================================
name       what it is
=========  ==================================================================================
``quick``  ``ecg-world train --preset quick --seed 0 --ae-ludb ../shared/data/ludb`` on
           ``ecg-world synth --n-patients 96 --seed 1 --duration 4.2`` (leads II and V2,
           4.1-s strips at 250 Hz; the autoencoder also saw the LUDB tuning split's
           strips); rebuilt by ``python benchmarks/ship_world_model.py``. Its held-out
           scores are the "world model" row of ``benchmarks/results/ecg_world_model.md``.
=========  ==================================================================================

:func:`resolve_model` is what ``ecg-world simulate --model`` uses: an existing directory is
taken as is, otherwise a shipped name.
"""

from __future__ import annotations

import pathlib

from .model import ModelFormatError, WorldModel, load_model

__all__ = ["SHIPPED", "shipped_model_path", "load_shipped", "resolve_model"]

_ROOT = pathlib.Path(__file__).resolve().parents[1] / "data" / "models"

#: shipped model names -> one-line description
SHIPPED: dict[str, str] = {
    "quick": "quick preset, seed 0, on a 96-patient synthetic cohort (leads II, V2)",
}


def shipped_model_path(name: str = "quick") -> pathlib.Path:
    """The directory of the shipped model ``name`` (``ValueError`` for an unknown name,
    :class:`ModelFormatError` if the package was installed without it)."""
    if name not in SHIPPED:
        raise ValueError(f"unknown shipped world model {name!r}; shipped: {sorted(SHIPPED)} "
                         "(or pass the path of a model directory)")
    path = _ROOT / name
    if not (path / "config.json").is_file():
        raise ModelFormatError(f"the shipped model {name!r} is missing from {path}: the "
                               "package was installed without its data files; reinstall it, "
                               "or rebuild with `python benchmarks/ship_world_model.py`")
    return path


def load_shipped(name: str = "quick") -> WorldModel:
    """Load a shipped model (see the module docstring); the hash and version checks of
    :func:`ecg_world.world.model.load_model` apply."""
    return load_model(shipped_model_path(name))


def resolve_model(spec: str | pathlib.Path) -> pathlib.Path:
    """A model directory from ``spec``: an existing directory, or the name of a shipped
    model. Anything else is an error that lists both options."""
    path = pathlib.Path(spec)
    if path.is_dir():
        return path
    if str(spec) in SHIPPED:
        return shipped_model_path(str(spec))
    raise ModelFormatError(f"model {str(spec)!r} is neither a directory nor a shipped model "
                           f"(shipped: {sorted(SHIPPED)}); train one with `ecg-world train`")
