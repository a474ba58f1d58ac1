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

**Observation map.** Data simulated by this package are observed through each catalog
model's fixed map to mV (e.g. ``-80 + 100 u``). A user's recording
(:func:`leads_jax.recording.from_recording`, ``leads import``) has no such mapping: its
candidates are fitted through the bounded gain and offset of
:func:`leads_jax.recording.with_observation_gain` (``observation_gain``; ``None``:
decided from the data, on for recordings).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from ..datasets import TEST, VAL, FitData
from ..geometry import Geometry, disconnected_message
from ..recording import RECORDING_FORMAT, load_recording
from ._observe import measure_traces

__all__ = ["DiscoveryData", "RolloutData", "discovery_data", "estimate_noise", "fit_dt",
           "is_recording"]


@dataclasses.dataclass(frozen=True)
class RolloutData:
    """Samples of one split, rolled out from the record's start to `ts[-1]`."""

    stimuli: object  # stacked Stimulus, leading axis = sample
    ts: np.ndarray  # (time,) ms
    observed: np.ndarray  # (sample, time, node) mV
    scored: np.ndarray  # (time,) bool: the split's own window
    t_split: float  # end of the split's window (ms); later times are "held out"
    held_out_window: bool  # the split's own window lies after the training horizon
    true_state: np.ndarray | None  # (sample, time, state, node) or None
    stim_nodes: list  # per sample: stimulated node indices


@dataclasses.dataclass(frozen=True)
class DiscoveryData:
    fit_data: object  # leads_jax.datasets.FitData (everything)
    search: object  # FitData without the test split (what fit sees during the search)
    geometry: Geometry
    t_train: float
    dt: float | None
    noise_std: float
    noise_source: str
    state_names: tuple[str, ...]
    true_structure: str
    val: RolloutData
    test: RolloutData | None
    cv_data: float
    apd_data: float
    source: str
    observation_gain: bool = False  # candidates fitted through a gain/offset map to mV
    warnings: tuple[str, ...] = ()  # accepted but suspicious (recorded in the run's notes)

    def summary(self) -> str:
        fd = self.fit_data
        splits = {n: len(sp.samples) for n, sp in fd.splits.items()}
        return (f"{fd.n_nodes} nodes ({self.geometry.kind}, {self.geometry.n_regions} "
                f"region(s): {', '.join(self.geometry.region_names)}); samples per split "
                f"{splits}; training horizon {self.t_train:g} ms, record "
                f"{float(fd.time[-1]):g} ms; noise {self.noise_std:.3g} mV "
                f"({self.noise_source}); data CV {self.cv_data:.3g} cm/ms, APD90 "
                f"{self.apd_data:.3g} ms" + ("; a recording: every model is observed "
                                            "through a fitted gain and offset to mV"
                                            if self.observation_gain else ""))


def estimate_noise(observed) -> float:
    """Noise standard deviation (mV) from the median absolute second difference in time."""
    x = np.asarray(observed, float)
    d2 = np.diff(x, n=2, axis=-2)
    mad = float(np.median(np.abs(d2 - np.median(d2))))
    return mad / 0.6745 / math.sqrt(6.0)


def _rollout_data(fd, name: str, true_state) -> RolloutData | None:
    sp = fd.splits.get(name)
    if sp is None:
        return None
    idx = np.asarray(sp.samples)
    t = np.asarray(fd.time, float)
    stim = jax.tree.map(lambda x: jnp.asarray(np.asarray(x)[idx]), fd.stimuli)
    scored = fd._scored(t, sp)
    ts_ = None if true_state is None else np.asarray(true_state, float)[idx]
    nodes = [np.flatnonzero(np.asarray(fd.stimuli.sites)[i] > 0).tolist() for i in idx]
    after = sp.t_start is not None and sp.t_start >= float(fd.t_train) - 1e-9
    return RolloutData(stim, t, np.asarray(fd.observed, float)[idx], scored, float(sp.t_end),
                       bool(after), ts_, nodes)


def is_recording(fit_data: FitData, attrs: dict | None = None) -> bool:
    """Whether `fit_data` is a user's recording (no fixed map to mV): a file in the
    recording format (``leads import``), or a FitData from ``from_recording`` (its
    provenance records the time offset of the record's clock)."""
    if attrs is not None and attrs.get("format") == RECORDING_FORMAT:
        return True
    return "time_offset_ms" in fit_data.provenance


def discovery_data(data, *, require_val: bool = True,
                   observation_gain: bool | None = None) -> DiscoveryData:
    """Read and split data for :func:`~leads_jax.agent.discover` (see the module
    docstring): a :class:`~leads_jax.datasets.FitData` (e.g. from ``from_recording``),
    an ``xarray.Dataset`` in the :mod:`leads_jax.datasets` format, or its path. Missing
    variables, NaN samples or a missing validation split raise ``ValueError`` naming what
    to fix, before any compilation. `observation_gain`: fit every candidate through a
    bounded gain and offset to mV (``None``: for recordings, :func:`is_recording`)."""
    if isinstance(data, DiscoveryData):
        if observation_gain is None or bool(observation_gain) == data.observation_gain:
            return data
        return dataclasses.replace(data, observation_gain=bool(observation_gain))
    if observation_gain is not None and not isinstance(observation_gain, bool | np.bool_):
        raise ValueError(f"discover: observation_gain must be True, False or None (decided "
                         f"from the data); got {observation_gain!r}")
    ds = None
    if isinstance(data, FitData):
        fd = data
        source = str(fd.provenance.get("source") or fd.provenance.get("description")
                     or "FitData")
    elif isinstance(data, str | os.PathLike):
        path = os.fspath(data)
        if not os.path.exists(path):
            raise FileNotFoundError(f"discover: no dataset at {path!r}")
        with xr.open_dataset(path, engine="h5netcdf") as f:
            ds = f.load()
        fd = load_recording(ds)  # reads split windows (leads import); else from_dataset
        source = path
    elif isinstance(data, xr.Dataset):
        ds = data
        fd = load_recording(ds)  # reads split windows (leads import); else from_dataset
        source = str(ds.attrs.get("description", "in-memory dataset"))
    else:
        raise ValueError(f"discover: data must be a FitData, an xarray.Dataset or the path "
                         f"of one (leads_jax.datasets format); got {type(data).__name__}")
    if require_val and VAL not in fd.splits:
        raise ValueError(
            "discover: the data have no validation split ('val'); selection is by validation "
            "error. Make the dataset with >= 3 pacing sites (make_dataset labels them "
            "train/val/test), pass val_sites=..., or import a recording with a validation "
            "window")
    geo = fd.geometry
    search = dataclasses.replace(fd, splits={k: v for k, v in fd.splits.items() if k != TEST})
    noise, noise_source = math.nan, ""
    attrs = {} if ds is None else dict(ds.attrs)
    for where in (attrs, fd.provenance):
        if "noise_std_mV" in where:
            try:
                noise = float(where["noise_std_mV"])
            except (TypeError, ValueError):
                continue
            if math.isfinite(noise) and noise >= 0:
                noise_source = "from the dataset"
                break
    if not noise_source:
        tr = fd.splits["train"]
        noise = estimate_noise(np.asarray(fd.observed)[np.asarray(tr.samples)])
        noise_source = "estimated from the data"
    true_state, states = None, ()
    if ds is not None and "true_state" in ds.variables and "state" in ds.coords:
        st = np.asarray(ds["true_state"].values, float)
        if np.all(np.isfinite(st)):
            true_state = st
            states = tuple(str(x) for x in ds["state"].values)
    val = _rollout_data(fd, VAL, true_state)
    test = _rollout_data(fd, TEST, true_state)
    cv = apd = math.nan
    if val is not None:
        cv, apd = measure_traces(val.observed[0], val.ts, geo, val.stim_nodes[0])
    true_structure = str(fd.provenance.get("true_structure", "") or attrs.get("structure", ""))
    try:
        json.loads(true_structure)
    except ValueError:
        true_structure = ""
    gain = is_recording(fd, attrs) if observation_gain is None else bool(observation_gain)
    return DiscoveryData(fd, search, geo, float(fd.t_train), fd.dt, noise, noise_source, states,
                         true_structure, val, test, cv, apd, source, gain, data_warnings(fd))


def data_warnings(fd: FitData) -> tuple[str, ...]:
    """What the data's reader accepted but looks wrong (``FitData.warnings``: e.g. a
    sample whose pacing sites are all zero), plus a disconnected geometry (parts no wave
    can reach from another), which only ``from_recording`` checks itself."""
    notes = list(fd.warnings)
    k = fd.geometry.n_components
    if k > 1 and not any("disconnected" in w for w in notes):
        notes.append(disconnected_message(k))
    return tuple(f"data: {w}" for w in dict.fromkeys(notes))


def fit_dt(config, data: DiscoveryData, model) -> float:
    """The integration step of fits and rollouts: the config's, else the data's, else
    the model's own."""
    dt = config.dt if config.dt is not None else data.dt
    return float(dt) if dt and dt > 0 else float(model.default_dt)
