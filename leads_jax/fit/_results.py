"""Fit results: an xarray Dataset indexed by candidate, plus the fitted models."""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

import numpy as np
import xarray as xr

from ._io import atomic_write_bytes, save_candidate


@dataclasses.dataclass
class CandidateRecord:
    """Everything known about one fitted candidate (host values)."""

    structure_json: str
    formula: str
    topology: str
    params: dict[str, float]  # fitted free parameters, physical units (scalar summaries)
    n_params: int
    train_rmse: float
    val_rmse: float
    test_rmse: float
    train_loss: float
    stable: bool
    stability_reason: str
    fit_status: str
    diverged_reason: str
    t_diverged: float
    best_restart: int
    best_step: int
    fit_seconds: float
    train_curve: np.ndarray
    val_curve: np.ndarray
    val_steps: np.ndarray
    warning: str = ""  # e.g. dt above the candidate's stable step ("" when none)


def _pad_rows(rows, fill=np.nan):
    n = max((len(r) for r in rows), default=0)
    out = np.full((len(rows), n), fill, dtype=float)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def build_dataset(records: list[CandidateRecord], attrs: dict[str, Any]) -> xr.Dataset:
    """Assemble the results Dataset (dims: candidate, param, step, eval)."""
    n = len(records)
    names = sorted({k for r in records for k in r.params})
    pmat = np.full((n, len(names)), np.nan)
    for i, r in enumerate(records):
        for j, k in enumerate(names):
            if k in r.params:
                pmat[i, j] = r.params[k]
    longest_eval = max(records, key=lambda r: len(r.val_steps)).val_steps if records else []
    cand = np.arange(n)

    def var(values, units="", desc=""):
        attrs = {"units": units, "description": desc}
        return xr.Variable(("candidate",), np.asarray(values), attrs)

    ds = xr.Dataset(
        {
            "structure": var([r.structure_json for r in records], "", "structure JSON (grammar)"),
            "formula": var([r.formula for r in records], "", "readable formula"),
            "topology": var([r.topology for r in records], "", "topology key (compilation group)"),
            "params": xr.Variable(
                ("candidate", "param"), pmat,
                {"description": "fitted free parameters in physical units (mean over nodes for "
                                "per-node/per-region ones); NaN when not free in that candidate"},
            ),
            "n_params": var([r.n_params for r in records], "1", "number of fitted scalars"),
            "train_rmse": var([r.train_rmse for r in records], "mV", "training-split RMSE"),
            "val_rmse": var([r.val_rmse for r in records], "mV", "validation-split RMSE"),
            "test_rmse": var([r.test_rmse for r in records], "mV",
                             "test RMSE (unseen pacing sites, test horizon); inf when unstable"),
            "train_loss": var([r.train_loss for r in records], "1", "final training objective"),
            "stable": var([bool(r.stable) for r in records], "", "stability verdict of the audit"),
            "stability_reason": var([r.stability_reason for r in records], "", "why unstable"),
            "fit_status": var([r.fit_status for r in records], "", "how training ended"),
            "warning": var([r.warning for r in records], "",
                           "problem found before training, e.g. dt above the stable step"),
            "diverged_reason": var([r.diverged_reason for r in records], "",
                                   "divergence reason during training ('' when none)"),
            "t_diverged": var([r.t_diverged for r in records], "ms",
                              "time of divergence during training (inf when none)"),
            "best_restart": var([r.best_restart for r in records], "1", "restart kept"),
            "best_step": var([r.best_step for r in records], "1", "step of the kept parameters"),
            "fit_seconds": var([r.fit_seconds for r in records], "s",
                               "wall time of the candidate's group / candidates in the group"),
            "train_curve": xr.Variable(
                ("candidate", "step"), _pad_rows([r.train_curve for r in records]),
                {"description": "training loss per step (NaN once stopped)"},
            ),
            "val_curve": xr.Variable(
                ("candidate", "eval"), _pad_rows([r.val_curve for r in records]),
                {"description": "validation loss at each evaluation (eval_step)"},
            ),
        },
        coords={
            "candidate": cand,
            "param": np.asarray(names, dtype=object) if names else np.zeros(0, dtype=object),
            "eval_step": ("eval", np.asarray(longest_eval, dtype=int)),
        },
        attrs={k: (json.dumps(v) if isinstance(v, (dict, list, tuple)) else v)
               for k, v in attrs.items()},
    )
    return ds


@dataclasses.dataclass
class FitResult:
    """What :func:`fit` returns.

    - `dataset`: ``xarray.Dataset`` indexed by candidate (see :func:`build_dataset`).
    - `models`: the fitted model of each candidate (best restart), in candidate order.
    - `structures`: the candidates' structures (``None`` for candidates given as
      compiled models).
    """

    dataset: xr.Dataset
    models: list
    structures: list

    def best(self) -> int:
        """Index of the stable candidate with the lowest validation error (-1 if none)."""
        val = np.where(self.dataset["stable"].values, self.dataset["val_rmse"].values, np.inf)
        return int(np.argmin(val)) if np.isfinite(val).any() else -1

    def save(self, folder) -> pathlib.Path:
        """Write ``results.nc`` and one candidate file per candidate (atomic writes)."""
        folder = pathlib.Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for i, (model, s) in enumerate(zip(self.models, self.structures, strict=True)):
            save_candidate(folder / f"candidate_{i:04d}.eqx", model, s,
                           metadata=candidate_metadata(self.dataset, i))
        save_dataset(self.dataset, folder / "results.nc")
        return folder


def candidate_metadata(ds: xr.Dataset, i: int) -> dict:
    row = ds.isel(candidate=i)
    keys = ("train_rmse", "val_rmse", "test_rmse", "stable", "stability_reason", "fit_status",
            "n_params", "fit_seconds", "best_restart")
    meta = {k: row[k].item() for k in keys}
    pairs = zip(ds["param"].values, row["params"].values, strict=True)
    meta["params"] = {str(p): float(v) for p, v in pairs if np.isfinite(v)}
    return meta


def save_dataset(ds: xr.Dataset, path) -> None:
    """Write a results Dataset to netCDF (h5netcdf) atomically."""
    path = pathlib.Path(path)
    enc_ds = ds.copy()
    for name in list(enc_ds.variables):
        v = enc_ds[name]
        if v.dtype == object or v.dtype.kind in "U":
            enc_ds[name] = v.astype(str)
        if v.dtype == bool:
            enc_ds[name] = v.astype("int8")
            enc_ds[name].attrs["dtype"] = "bool"
    data = enc_ds.to_netcdf(engine="h5netcdf")
    atomic_write_bytes(path, bytes(data))


def load_results(path) -> xr.Dataset:
    """Read a results Dataset written by :func:`save_dataset`."""
    ds = xr.load_dataset(path, engine="h5netcdf")
    for name in list(ds.variables):
        if ds[name].attrs.get("dtype") == "bool":
            attrs = {k: v for k, v in ds[name].attrs.items() if k != "dtype"}
            ds[name] = ds[name].astype(bool)
            ds[name].attrs = attrs
    return ds
