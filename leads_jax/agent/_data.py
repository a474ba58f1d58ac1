"""The data a discovery run works on, read once at the boundary.

:func:`discovery_data` validates a dataset (an ``xarray.Dataset`` in the
:mod:`leads_jax.datasets` format, or a path) and splits it for the search:

- the **search set** (training + validation pacing sites) is what ``fit`` sees during
  the search, so its stability audit and every error the agent reads come from data
  selection may use;
- the **test** pacing sites are kept apart: the winner is scored on them once, over
  the whole record, after selection.

A discovery run needs a validation split (selection is by validation error). The noise
level is read from the dataset (``noise_std_mV``) when it says so, and otherwise
estimated from the data (median absolute second difference in time, Donoho &
Johnstone 1994, scaled for a second difference: ``sigma = MAD / 0.6745 / sqrt(6)``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os

import numpy as np
import xarray as xr

from ..geometry import Geometry
from ._observe import measure_traces

__all__ = ["DiscoveryData", "RolloutData", "discovery_data", "estimate_noise"]


@dataclasses.dataclass(frozen=True)
class RolloutData:
    """Samples of one split over the whole record (for forward rollouts)."""

    stimuli: object  # stacked Stimulus, leading axis = sample
    ts: np.ndarray  # (time,) ms
    observed: np.ndarray  # (sample, time, node) mV
    true_state: np.ndarray | None  # (sample, time, state, node) or None
    stim_nodes: list  # per sample: stimulated node indices


@dataclasses.dataclass(frozen=True)
class DiscoveryData:
    dataset: xr.Dataset
    search: xr.Dataset
    geometry: Geometry
    t_train: float
    noise_std: float
    noise_source: str
    state_names: tuple[str, ...]
    true_structure: str
    val: RolloutData
    test: RolloutData | None
    cv_data: float
    apd_data: float
    source: str

    def summary(self) -> str:
        ds = self.dataset
        splits = {s: int((ds["split"].values == s).sum()) for s in ("train", "val", "test")}
        return (f"{ds.sizes['node']} nodes ({self.geometry.kind}, {self.geometry.n_regions} "
                f"region(s): {', '.join(self.geometry.region_names)}); samples {splits}; "
                f"training horizon {self.t_train:g} ms, record {float(ds['time'][-1]):g} ms; "
                f"noise {self.noise_std:.3g} mV ({self.noise_source}); data CV "
                f"{self.cv_data:.3g} cm/ms, APD90 {self.apd_data:.3g} ms")


def estimate_noise(observed) -> float:
    """Noise standard deviation (mV) from the median absolute second difference in time."""
    x = np.asarray(observed, float)
    d2 = np.diff(x, n=2, axis=-2)
    mad = float(np.median(np.abs(d2 - np.median(d2))))
    return mad / 0.6745 / math.sqrt(6.0)


def _rollout_data(ds: xr.Dataset, split: str, geometry) -> RolloutData | None:
    from ..datasets import stacked_stimuli

    idx = np.flatnonzero(np.asarray(ds["split"].values) == split)
    if idx.size == 0:
        return None
    sub = ds.isel(sample=idx)
    stim = stacked_stimuli(sub, geometry)
    true_state = None
    if "true_state" in sub.variables:
        ts_ = np.asarray(sub["true_state"].values, float)
        if np.all(np.isfinite(ts_)):
            true_state = ts_
    nodes = [np.flatnonzero(np.asarray(sub["stim_sites"].values[i]) > 0).tolist()
             for i in range(sub.sizes["sample"])]
    return RolloutData(stim, np.asarray(sub["time"].values, float),
                       np.asarray(sub["observed"].values, float), true_state, nodes)


def discovery_data(data, *, require_val: bool = True) -> DiscoveryData:
    """Read and split a dataset for :func:`~leads_jax.agent.discover` (see the module
    docstring). Missing variables, NaN samples or a missing validation split raise
    ``ValueError`` naming what to fix, before any compilation."""
    from ..datasets import geometry_from_dataset, load_dataset, validate_dataset

    if isinstance(data, DiscoveryData):
        return data
    if isinstance(data, str | os.PathLike):
        ds = load_dataset(data)
        source = os.fspath(data)
    elif isinstance(data, xr.Dataset):
        ds = validate_dataset(data)
        source = str(data.attrs.get("description", "in-memory dataset"))
    else:
        raise ValueError(f"discover: data must be an xarray.Dataset or the path of one "
                         f"(leads_jax.datasets format); got {type(data).__name__}")
    splits = np.asarray(ds["split"].values)
    if require_val and not (splits == "val").any():
        raise ValueError(
            "discover: the dataset has no validation samples (split 'val'); selection is by "
            "validation error. Make the dataset with >= 3 pacing sites (make_dataset labels "
            "them train/val/test) or pass val_sites=...")
    if not (splits == "train").any():
        raise ValueError("discover: the dataset has no training samples (split 'train')")
    t_train = float(ds.attrs["t_train"])
    t = np.asarray(ds["time"].values, float)
    if not (t[0] < t_train <= t[-1]):
        raise ValueError(f"discover: t_train = {t_train} ms lies outside the record "
                         f"[{t[0]}, {t[-1]}] ms")
    geo = geometry_from_dataset(ds)
    search = ds.isel(sample=np.flatnonzero(splits != "test"))
    noise = float(ds.attrs.get("noise_std_mV", math.nan))
    if math.isfinite(noise) and noise >= 0 and "noise_std_mV" in ds.attrs:
        source_noise = "from the dataset"
    else:
        noise = estimate_noise(search["observed"].values)
        source_noise = "estimated from the data"
    val = _rollout_data(ds, "val", geo)
    test = _rollout_data(ds, "test", geo)
    cv, apd = (measure_traces(val.observed[0], val.ts, geo, val.stim_nodes[0])
               if val is not None else (math.nan, math.nan))
    states = tuple(str(s) for s in ds["state"].values) if "state" in ds.coords else ()
    true_structure = str(ds.attrs.get("structure", ""))
    try:
        json.loads(true_structure)
    except ValueError:
        true_structure = ""
    return DiscoveryData(ds, search, geo, t_train, noise, source_noise, states, true_structure,
                         val, test, cv, apd, source)
