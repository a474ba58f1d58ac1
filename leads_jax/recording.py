r"""A user's own recordings: voltage traces + geometry + pacing -> :class:`FitData`.

What an experimenter has is a set of voltage traces (one cell, or many electrodes or
mesh nodes), the times they were sampled at, perhaps a geometry, and the pacing
protocol. :func:`from_recording` turns that into the
:class:`~leads_jax.datasets.FitData` the fitting engine and the agent read: no
ground-truth state variables, no invented geometry. :func:`save_recording` writes it
in this package's netCDF format (``leads import`` on the command line) and
:func:`load_recording` reads it back with its splits.

Traces
------
- a NumPy array: ``(time,)`` one cell, ``(time, node)``, or ``(sample, time, node)``
  (a sample is one recording run, e.g. one pacing site); time is the first axis of
  each run;
- ``.npy`` (the array; pass `time`), ``.npz`` (arrays ``voltage`` -- or ``traces``,
  ``observed``, ``v`` -- and optionally ``time``/``t``);
- ``.csv``: one column per node, plus a time column named ``time``/``t``/``time_ms``/
  ``time_s`` (or, without a header row, the first column), commas or whitespace;
- ``.nc`` (netCDF) or an ``xarray.DataArray``/``Dataset``: a variable ``voltage`` (or
  ``observed``, ``v``, ``traces``, or the only variable) with a ``time`` dimension and
  optionally ``node`` and ``sample``; the ``units`` attributes of ``time`` and of the
  variable are checked against `time_unit` and `voltage_unit`.

`time` is an array of sample times, or one number (the sampling interval), in
`time_unit` (``"ms"``, ``"s"`` or ``"us"``); it is converted to ms and shifted so the
record starts at 0 (the offset is kept in the provenance). Start the record at rest,
before the first stimulus: every model starts from its resting state at ``time[0]``.
Voltages are in `voltage_unit` (``"mV"`` or ``"V"``) and stored in mV; values outside
-150..+100 mV are flagged (a warning in ``FitData.warnings``), never clipped.

Geometry
--------
``None`` or ``"single-cell"`` (:meth:`Geometry.single_cell`, one node); a
:class:`~leads_jax.geometry.Geometry`; ``{"spacing": dx}`` (a cable of the traces'
nodes, dx in cm, node k at x = k dx) or ``{"spacing": dx, "shape": (nx, ny)}`` (a
sheet, node ``iy * nx + ix``); a mesh: a ``.npz`` file with ``vertices`` (cm) and
``faces`` (and optionally ``regions``, ``region_names``), a pair of CSV files
``(vertices.csv, faces.csv)``, or ``{"vertices": ..., "faces": ...}``. A disconnected
mesh (nodes no wave can reach from another part) is an error unless
``allow_disconnected=True`` (then it is a recorded warning). `regions` (one integer or
name per node) labels mesh regions for per-region parameters.

Pacing
------
``{"sites": ..., "times": [...], "duration": 2, "amplitude": 0.5}``: `sites` are integer
node indices, a per-node weight mask in [0, 1] (floats or booleans), or a site name of
the geometry (a single cell is paced at its node by default); `times` the pulse onsets
in `time_unit` on the record's clock (or ``"period"``, ``"count"`` and ``"start"``);
`duration` in `time_unit` (default 2 ms); `amplitude` in model state units per ms
(default 0.5, the catalog's default stimulus; it is a property of the model, not of the
recording). A list of such dicts gives one per sample. All-zero sites are an error; ``pacing=None``
(no stimulus) is allowed and recorded as a warning.

Splits
------
One recording gives training, validation and held-out scores by splitting it in time:
every sample is simulated from ``time[0]``, and each split scores a window of it.
``split=None``: with at least 3 beats, by beat (the last ~20% of beats held out as
``test``, the ~20% before them ``val``, window edges at pacing onsets), otherwise by
time (60% / 20% / 20%). ``{"beats": (n_train, n_val)}``, ``{"times": (t_train,
t_val)}`` (window ends, in `time_unit` on the record's clock) or ``{"samples":
{"train": [...], "val": [...], "test": [...]}}`` (whole runs) choose explicitly. A
training window past the record's end is an error.

Observation gain
----------------
A catalog model's map to mV is fixed (e.g. ``-80 + 100 u``) and may not reach the
recording's range (+33 mV overshoot). :func:`with_observation_gain` wraps any compiled
model with a fitted, bounded affine map ``V = offset + gain * V_model``.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from typing import SupportsFloat

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import xarray as xr

from ._custom_types import Array, Float, PRNGKeyArray
from .compile import AbstractBoundModel, AbstractCompiledModel
from .datasets import (
    FORMAT_VERSION,
    TEST,
    TRAIN,
    VAL,
    DataSplit,
    FitData,
    _geometry_variables,
    save_dataset,
)
from .geometry import Geometry, disconnected_message
from .stimulus import _FAR, DEFAULT_AMPLITUDE, Stimulus

__all__ = [
    "ObservedModel",
    "from_recording",
    "load_recording",
    "recording_dataset",
    "save_recording",
    "with_observation_gain",
]

RECORDING_FORMAT = "leads-jax recording"
TIME_UNITS = {"ms": 1.0, "s": 1000.0, "us": 1e-3}
VOLTAGE_UNITS = {"mV": 1.0, "V": 1000.0}
_VOLTAGE_NAMES = ("voltage", "observed", "traces", "v", "vm", "V")
_TIME_NAMES = ("time", "t", "time_ms", "time_s", "times")
#: Physiological range (mV) outside which traces are flagged.
PLAUSIBLE_MV = (-150.0, 100.0)


# ---------------------------------------------------------------------------------------
# traces
# ---------------------------------------------------------------------------------------
def _unit_factor(unit, table, what) -> float:
    if unit not in table:
        raise ValueError(f"unknown {what} unit {unit!r}; valid units are {list(table)}")
    return table[unit]


def _read_csv(path):
    with open(path) as f:
        head = f.readline()
    sep = "," if "," in head else r"\s+"
    first = [x.strip().strip('"') for x in (head.split(",") if sep == "," else head.split())]
    numeric = True
    for x in first:
        try:
            float(x)
        except ValueError:
            numeric = False
    try:
        df = pd.read_csv(path, sep=sep, header=None if numeric else 0, engine="python")
    except (ValueError, pd.errors.ParserError) as e:
        raise ValueError(f"{path}: not a readable CSV table ({e})") from None
    if numeric:
        arr = df.to_numpy(dtype=np.float64)
        return arr[:, 1:], arr[:, 0]
    cols = [str(c).strip() for c in df.columns]
    tcol = [c for c in cols if c.lower() in _TIME_NAMES]
    if not tcol:
        raise ValueError(f"{path}: no time column; name one of {list(_TIME_NAMES)} or drop "
                         "the header so the first column is time")
    df.columns = cols
    try:
        t = df[tcol[0]].to_numpy(dtype=np.float64)
        v = df[[c for c in cols if c != tcol[0]]].to_numpy(dtype=np.float64)
    except ValueError as e:
        raise ValueError(f"{path}: non-numeric values in the table ({e})") from None
    return v, t


def _pick_variable(ds: xr.Dataset, where: str) -> xr.DataArray:
    for n in _VOLTAGE_NAMES:
        if n in ds.data_vars:
            return ds[n]
    if len(ds.data_vars) == 1:
        return next(iter(ds.data_vars.values()))
    raise ValueError(f"{where}: no voltage variable; name it one of {list(_VOLTAGE_NAMES)} "
                     f"(found {list(ds.data_vars)})")


def _from_xarray(da: xr.DataArray, where, time_unit, voltage_unit):
    if "time" not in da.dims:
        raise ValueError(f"{where}: the voltage variable needs a 'time' dimension; dims are "
                         f"{da.dims}")
    extra = set(da.dims) - {"sample", "time", "node"}
    if extra:
        raise ValueError(f"{where}: unexpected dimension(s) {sorted(extra)}; use sample, time, "
                         "node")
    for name, unit, attrs in (("time", time_unit, da["time"].attrs if "time" in da.coords
                               else {}), ("voltage", voltage_unit, da.attrs)):
        u = attrs.get("units")
        if u is not None and str(u) != unit:
            raise ValueError(f"{where}: the file gives {name} units {u!r} but "
                             f"{name}_unit={unit!r}; pass {name}_unit={str(u)!r}")
    order = [d for d in ("sample", "time", "node") if d in da.dims]
    v = np.asarray(da.transpose(*order).values, dtype=np.float64)
    if "node" not in da.dims:
        v = v[..., None]
    if "sample" not in da.dims:
        v = v[None]
    t = np.asarray(da["time"].values, dtype=np.float64) if "time" in da.coords else None
    return v, t


def _read_traces(traces, time, time_unit, voltage_unit):
    """-> (voltage [sample, time, node] in voltage_unit, time or None, source label)."""
    source = "array"
    t_file = None
    if isinstance(traces, (str, os.PathLike)):
        path = os.fspath(traces)
        source = path
        if not os.path.exists(path):
            raise FileNotFoundError(f"no traces file at {path!r}")
        ext = os.path.splitext(path)[1].lower()
        if ext == ".npy":
            v = np.load(path, allow_pickle=False)
        elif ext == ".npz":
            with np.load(path, allow_pickle=False) as z:
                keys = list(z.keys())
                vk = [k for k in _VOLTAGE_NAMES if k in keys]
                if not vk:
                    raise ValueError(f"{path}: no voltage array; name it one of "
                                     f"{list(_VOLTAGE_NAMES)} (found {keys})")
                v = z[vk[0]]
                tk = [k for k in _TIME_NAMES if k in keys]
                t_file = z[tk[0]] if tk else None
        elif ext in (".csv", ".txt", ".tsv"):
            v, t_file = _read_csv(path)
        elif ext in (".nc", ".netcdf", ".h5", ".nc4"):
            with xr.open_dataset(path, engine="h5netcdf") as f:
                ds = f.load()
            v, t_file = _from_xarray(_pick_variable(ds, path), path, time_unit, voltage_unit)
        else:
            raise ValueError(f"{path}: unknown traces format {ext!r}; use .csv, .npy, .npz or "
                             ".nc")
    elif isinstance(traces, xr.Dataset):
        v, t_file = _from_xarray(_pick_variable(traces, "dataset"), "dataset", time_unit,
                                 voltage_unit)
    elif isinstance(traces, xr.DataArray):
        v, t_file = _from_xarray(traces, "DataArray", time_unit, voltage_unit)
    else:
        try:
            v = np.asarray(traces, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError("traces must be an array, an xarray object or the path of a "
                             f".csv/.npy/.npz/.nc file; got {type(traces).__name__}") from None
    v = np.asarray(v)
    if not np.issubdtype(v.dtype, np.number) or np.issubdtype(v.dtype, np.complexfloating):
        raise ValueError(f"traces must be real numbers; got dtype {v.dtype}")
    v = v.astype(np.float64)
    if v.ndim == 1:
        v = v[None, :, None]
    elif v.ndim == 2:
        v = v[None]
    elif v.ndim != 3:
        raise ValueError(f"traces must have shape (time,), (time, node) or (sample, time, node); "
                         f"got {v.shape}")
    if time is not None and t_file is not None:
        raise ValueError(f"{source} holds its own time axis; do not pass time= as well")
    return v, (t_file if time is None else time), source


def _time_axis(time, n_time, factor, source) -> np.ndarray:
    if time is None:
        raise ValueError(f"{source}: no time axis; pass time= (an array of sample times, or the "
                         "sampling interval)")
    t = np.asarray(time, dtype=np.float64)
    if t.ndim == 0:
        dt = float(t)
        if not (dt > 0 and math.isfinite(dt)):
            raise ValueError(f"the sampling interval must be > 0; got {time!r}")
        t = np.arange(n_time) * dt
    if t.ndim != 1 or t.size != n_time:
        raise ValueError(f"time has {t.size} values but the traces have {n_time} time points "
                         "(time must be the first axis of each trace: (time, node))")
    if not np.all(np.isfinite(t)) or np.any(np.diff(t) <= 0):
        raise ValueError("time must be finite and strictly increasing")
    return t * factor


# ---------------------------------------------------------------------------------------
# geometry
# ---------------------------------------------------------------------------------------
def _read_mesh(spec):
    if isinstance(spec, Mapping):
        return (np.asarray(spec["vertices"], np.float64), np.asarray(spec["faces"]),
                spec.get("regions"), spec.get("region_names"))
    if isinstance(spec, (tuple, list)) and len(spec) == 2:
        vp, fp = (os.fspath(p) for p in spec)
        for p in (vp, fp):
            if not os.path.exists(p):
                raise FileNotFoundError(f"no mesh file at {p!r}")
        verts = np.loadtxt(vp, delimiter="," if "," in open(vp).readline() else None, ndmin=2)
        faces = np.loadtxt(fp, delimiter="," if "," in open(fp).readline() else None, ndmin=2)
        return verts, faces, None, None
    path = os.fspath(spec)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no mesh file at {path!r}")
    if not path.lower().endswith(".npz"):
        raise ValueError(f"{path}: a mesh file is a .npz with 'vertices' and 'faces' (or pass "
                         "a pair of CSV files (vertices.csv, faces.csv))")
    with np.load(path, allow_pickle=False) as z:
        missing = [k for k in ("vertices", "faces") if k not in z]
        if missing:
            raise ValueError(f"{path}: missing array(s) {missing}")
        regions = z["regions"] if "regions" in z else None
        names = [str(x) for x in z["region_names"]] if "region_names" in z else None
        return z["vertices"], z["faces"], regions, names


def _region_labels(regions, n_nodes):
    r = np.asarray(regions)
    if r.shape != (n_nodes,):
        raise ValueError(f"regions must give one label per node ({n_nodes}); got shape {r.shape}")
    if np.issubdtype(r.dtype, np.integer):
        return r.astype(np.int64), None
    names = list(dict.fromkeys(str(x) for x in r))
    return np.asarray([names.index(str(x)) for x in r], np.int64), names


def _build_geometry(geometry, n_nodes, regions, allow_disconnected, notes):
    region_names = None
    if geometry is None or (isinstance(geometry, str) and geometry == "single-cell"):
        if n_nodes != 1:
            raise ValueError(
                f"the traces have {n_nodes} nodes; a single-cell recording has one. Give a "
                "geometry: {'spacing': dx_cm} (cable), {'spacing': dx, 'shape': (nx, ny)} "
                "(sheet) or a mesh file")
        geo = Geometry.single_cell()
    elif isinstance(geometry, Geometry):
        geo = geometry
    elif isinstance(geometry, Mapping) and "spacing" in geometry:
        unknown = set(geometry) - {"spacing", "shape", "name"}
        if unknown:
            raise ValueError(f"geometry: unknown key(s) {sorted(unknown)}; use spacing, shape")
        dx = float(geometry["spacing"])
        if not (dx > 0 and math.isfinite(dx)):
            raise ValueError(f"geometry spacing must be > 0 cm; got {geometry['spacing']!r}")
        shape = geometry.get("shape")
        if shape is None:
            geo = Geometry.cable(n_nodes, dx, n_regions=1, name=geometry.get("name"))
        else:
            nx, ny = (int(s) for s in shape)
            if nx * ny != n_nodes:
                raise ValueError(f"geometry shape {nx}x{ny} = {nx * ny} nodes, the traces have "
                                 f"{n_nodes}")
            geo = Geometry.sheet(nx, ny, dx, n_regions=1, name=geometry.get("name"))
    else:
        verts, faces, mesh_regions, region_names = _read_mesh(geometry)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            geo = Geometry.from_mesh(verts, faces, name="recording mesh")
        # a disconnected mesh is this function's own check below (an error by default)
        notes.extend(str(w.message) for w in caught if "disconnected" not in str(w.message))
        if regions is None and mesh_regions is not None:
            regions = mesh_regions
    if geo.n_nodes != n_nodes:
        raise ValueError(f"the geometry has {geo.n_nodes} nodes, the traces {n_nodes}")
    if regions is not None:
        labels, names = _region_labels(regions, n_nodes)
        geo = geo.with_regions(labels, names or region_names)
    k = geo.n_components
    if k > 1:
        msg = disconnected_message(k)
        if not allow_disconnected:
            raise ValueError(msg + "; fix the mesh or pass allow_disconnected=True")
        notes.append(msg)
    return geo


# ---------------------------------------------------------------------------------------
# pacing
# ---------------------------------------------------------------------------------------
def _site_weights(geo: Geometry, sites) -> np.ndarray:
    if sites is None:
        if geo.n_nodes == 1:
            return np.ones(1)
        raise ValueError("pacing: give the stimulated 'sites' (node indices, a weight mask or "
                         f"a site name {list(geo.pacing_site_names)})")
    if isinstance(sites, str):
        w = np.zeros(geo.n_nodes)
        w[list(geo.pacing_site(sites))] = 1.0
        return w
    a = np.asarray(sites)
    if a.dtype == bool or np.issubdtype(a.dtype, np.floating):  # a per-node weight mask
        w = a.astype(np.float64)
        if w.shape != (geo.n_nodes,) or np.any(w < 0) or np.any(w > 1) or not np.all(
                np.isfinite(w)):
            raise ValueError(f"pacing sites as a mask need {geo.n_nodes} weights in [0, 1]")
    else:
        if a.size == 0:
            raise ValueError("pacing sites are empty: no node is stimulated")
        w = np.zeros(geo.n_nodes)
        w[list(geo.pacing_site([int(i) for i in np.atleast_1d(a)]))] = 1.0
    if not np.any(w > 0):
        raise ValueError("pacing sites are all zero: no node is stimulated (give the paced "
                         "nodes, or pacing=None for a record without stimulus)")
    return w


def _onsets(p: Mapping, factor, t0_ms, t_end_ms) -> np.ndarray:
    if "times" in p:
        on = np.atleast_1d(np.asarray(p["times"], dtype=np.float64)) * factor
    elif "period" in p:
        period = float(p["period"]) * factor
        if not (period > 0 and math.isfinite(period)):
            raise ValueError(f"pacing period must be > 0; got {p['period']!r}")
        count = int(p.get("count", 0)) or int((t_end_ms + t0_ms - float(p.get("start", 0.0))
                                               * factor) // period) + 1
        on = float(p.get("start", 0.0)) * factor + period * np.arange(count)
    else:
        raise ValueError("pacing needs 'times' (pulse onsets) or 'period' (with 'count'/'start')")
    if on.ndim != 1 or not np.all(np.isfinite(on)):
        raise ValueError("pacing times must be a finite 1-D list")
    on = on - t0_ms
    if np.any(on < 0):
        raise ValueError(f"a pacing onset ({(on.min() + t0_ms) / factor:g}) precedes the record's "
                         "start; start the record at rest, before the first stimulus")
    return on


def _build_stimuli(pacing, geo, n_samples, factor, t0_ms, t_end_ms, notes):
    if pacing is None:
        per = [None] * n_samples
    elif isinstance(pacing, Mapping):
        per = [pacing] * n_samples
    else:
        per = list(pacing)
        if len(per) != n_samples:
            raise ValueError(f"pacing: {len(per)} protocols for {n_samples} samples")
    stims = []
    for i, p in enumerate(per):
        if p is None:
            stims.append(Stimulus.none(geo))
            continue
        unknown = set(p) - {"sites", "times", "period", "count", "start", "duration",
                            "amplitude"}
        if unknown:
            raise ValueError(f"pacing: unknown key(s) {sorted(unknown)}; use sites, times (or "
                             "period, count, start), duration, amplitude")
        w = _site_weights(geo, p.get("sites"))
        on = _onsets(p, factor, t0_ms, t_end_ms)
        late = on[on > t_end_ms]
        if late.size:
            notes.append(f"sample {i}: {late.size} pacing onset(s) after the record's end are "
                         "ignored")
            on = on[on <= t_end_ms]
        duration = float(p.get("duration", 2.0 / factor)) * factor
        amp = p.get("amplitude")
        amp = DEFAULT_AMPLITUDE if amp is None else float(amp)
        stims.append(Stimulus.custom(geo, w, onsets=on, amplitude=amp, duration=duration))
    n = max([s.n_pulses for s in stims] + [1])
    # stacked on a leading sample axis (tree.map rebuilds the pytree without __init__,
    # whose shape annotations are per stimulus)
    stacked = jax.tree.map(lambda *x: jnp.asarray(np.stack([np.asarray(a) for a in x])),
                           *[s.padded(n) for s in stims])
    beats = sorted({float(x) for s in stims for x in np.asarray(s.onsets)})
    return stacked, beats


# ---------------------------------------------------------------------------------------
# splits
# ---------------------------------------------------------------------------------------
def _windows(t, edges):
    """Train/val/test windows (t0, e1], (e1, e2], (e2, end]; each must score a time."""
    e1, e2 = edges
    end = float(t[-1])
    if e1 > end + 1e-9:
        raise ValueError(f"t_train = {e1:g} ms is past the record's end ({end:g} ms)")
    if not (t[0] < e1 < e2 < end):
        raise ValueError(f"split windows need {t[0]:g} < t_train ({e1:g}) < t_val ({e2:g}) < "
                         f"end ({end:g}) ms")
    for lo, hi, name in ((e1, e2, VAL), (e2, end, TEST)):
        if not np.any((t > lo + 1e-9) & (t <= hi + 1e-9)):
            raise ValueError(f"the {name} window ({lo:g}, {hi:g}] ms holds no sample time")
    return e1, e2


def _build_splits(split, t, beats, n_samples, factor, t0_ms):
    everyone = tuple(range(n_samples))
    if isinstance(split, Mapping) and "samples" in split:
        groups = dict(split["samples"])
        unknown = set(groups) - {TRAIN, VAL, TEST}
        if unknown or TRAIN not in groups:
            raise ValueError(f"split samples need 'train' (and optionally 'val', 'test'); got "
                             f"{sorted(groups)}")
        seen = [i for g in groups.values() for i in g]
        if len(seen) != len(set(seen)):
            raise ValueError("split samples: a sample is in two splits")
        end = float(t[-1])
        splits = {k: DataSplit(tuple(int(i) for i in groups[k]), end)
                  for k in (TRAIN, VAL, TEST) if groups.get(k)}
        return splits, end, "by sample"
    # beat k runs from pacing onset k to onset k + 1 (the last one to the record's end)
    starts = [b for b in beats if b < t[-1]]
    if split is None:
        if len(starts) >= 3:
            n = len(starts)
            n_test = n_val = max(1, round(0.2 * n))
            split = {"beats": (n - n_test - n_val, n_val)}
        else:
            span = float(t[-1] - t[0])
            split = {"_ms": (t[0] + 0.6 * span, t[0] + 0.8 * span)}
    if not isinstance(split, Mapping) or len(split) != 1 or not (
            {"beats", "times", "_ms"} & set(split)):
        raise ValueError("split must be None, {'beats': (n_train, n_val)}, {'times': (t_train, "
                         "t_val)} or {'samples': {'train': [...], 'val': [...], 'test': [...]}}")
    if "beats" in split:
        n_train, n_val = (int(x) for x in split["beats"])
        if n_train < 1 or n_val < 1 or len(starts) <= n_train + n_val:
            raise ValueError(f"split by beats ({n_train} train, {n_val} val, >= 1 test) needs "
                             f"at least {n_train + n_val + 1} beats (pacing onsets) in the "
                             f"record; it has {len(starts)}")
        edges = (starts[n_train], starts[n_train + n_val])
        how = f"by beat: {n_train} train, {n_val} val, {len(starts) - n_train - n_val} test"
    elif "times" in split:
        e1, e2 = (float(x) * factor - t0_ms for x in split["times"])
        edges = (e1, e2)
        how = "by time"
    else:
        edges = split["_ms"]
        how = "by time (60% / 20% / 20%)"
    e1, e2 = _windows(t, edges)
    splits = {TRAIN: DataSplit(everyone, e1), VAL: DataSplit(everyone, e2, e1),
              TEST: DataSplit(everyone, float(t[-1]), e2)}
    return splits, e1, how


# ---------------------------------------------------------------------------------------
# the importer
# ---------------------------------------------------------------------------------------
def from_recording(
    traces,
    *,
    time=None,
    time_unit: str = "ms",
    voltage_unit: str = "mV",
    geometry=None,
    pacing: Mapping | Sequence[Mapping] | None = None,
    regions=None,
    split: Mapping | None = None,
    allow_disconnected: bool = False,
    name: str | None = None,
) -> FitData:
    """Build the :class:`~leads_jax.datasets.FitData` of a user's recording.

    **Arguments** (formats in the module docstring):

    - `traces`: array ``(time,)``/``(time, node)``/``(sample, time, node)``, xarray
      object, or a ``.csv``/``.npy``/``.npz``/``.nc`` path.
    - `time`: sample times or the sampling interval, in `time_unit` (not needed when
      the file has a time axis).
    - `time_unit`: ``"ms"``, ``"s"`` or ``"us"``; `voltage_unit`: ``"mV"`` or ``"V"``.
    - `geometry`: ``None``/``"single-cell"``, a Geometry, ``{"spacing": cm[,
      "shape": (nx, ny)]}``, or a mesh (``.npz`` path, ``(vertices.csv, faces.csv)``,
      ``{"vertices", "faces"}``).
    - `pacing`: ``{"sites", "times" | "period"[, "count", "start"], "duration",
      "amplitude"}`` (times in `time_unit`), a list of them (one per sample), or None.
    - `regions`: region label (int or name) per node.
    - `split`: ``None`` (by beat, else by time), ``{"beats": (n_train, n_val)}``,
      ``{"times": (t_train, t_val)}`` or ``{"samples": {...}}``.
    - `allow_disconnected`: accept a disconnected mesh (recorded as a warning).
    - `name`: a label for the provenance.

    **Returns:** a :class:`FitData` (train / val / test splits; ``warnings`` lists
    what was accepted but looks wrong). Raises ``ValueError`` naming what to fix.
    """
    tf = _unit_factor(time_unit, TIME_UNITS, "time")
    vf = _unit_factor(voltage_unit, VOLTAGE_UNITS, "voltage")
    v, t_in, source = _read_traces(traces, time, time_unit, voltage_unit)
    n_samples, n_time, n_nodes = v.shape
    if n_time < 2:
        raise ValueError(f"traces need at least 2 time points; got {n_time}")
    t_abs = _time_axis(t_in, n_time, tf, source)
    t0 = float(t_abs[0])
    t = t_abs - t0
    v = v * vf
    notes: list[str] = []
    bad = np.where(~np.all(np.isfinite(v.reshape(n_samples, -1)), axis=1))[0]
    if bad.size:
        nan_t = np.where(~np.all(np.isfinite(v[bad[0]]), axis=-1))[0]
        raise ValueError(f"traces have NaN/inf values in sample(s) {bad.tolist()} (first at "
                         f"t = {t[nan_t[0]] / tf + t0 / tf:g} {time_unit}); remove or "
                         "interpolate them")
    lo, hi = float(v.min()), float(v.max())
    if lo < PLAUSIBLE_MV[0] or hi > PLAUSIBLE_MV[1]:
        notes.append(f"traces span {lo:.4g}..{hi:.4g} mV, outside the physiological "
                     f"{PLAUSIBLE_MV[0]:g}..{PLAUSIBLE_MV[1]:g} mV: check voltage_unit")
    geo = _build_geometry(geometry, n_nodes, regions, allow_disconnected, notes)
    stimuli, beats = _build_stimuli(pacing, geo, n_samples, tf, t0, float(t[-1]), notes)
    splits, t_train, how = _build_splits(split, t, beats, n_samples, tf, t0)
    label = name or (os.path.basename(source) if source != "array" else "recording")
    desc = (f"user recording {label}: {n_samples} sample(s) x {n_time} times x {n_nodes} "
            f"node(s) on {geo.kind} geometry, {t[-1]:g} ms; splits {how} "
            f"(train to {t_train:g} ms)")
    return FitData(
        geometry=geo,
        time=t,
        observed=v.astype(np.float32),
        stimuli=stimuli,
        splits=splits,
        t_train=t_train,
        dt=None,
        pacing_site=tuple(f"{label}[{i}]" for i in range(n_samples)) if n_samples > 1
        else (label,),
        provenance={"description": desc, "true_structure": "", "source": str(source),
                    "time_offset_ms": f"{t0:g}", "splits": how},
        warnings=tuple(notes),
    )


# ---------------------------------------------------------------------------------------
# netCDF
# ---------------------------------------------------------------------------------------
def recording_dataset(data: FitData) -> xr.Dataset:
    """`data` as an ``xarray.Dataset`` in this package's format (the variables fitting
    needs; no ground truth), with its split windows in the JSON attribute ``splits``."""
    st = data.stimuli
    onsets = np.asarray(st.onsets, np.float64)
    onsets = np.where(onsets >= _FAR, np.nan, onsets)
    geo = data.geometry
    ds = xr.Dataset(
        {
            "observed": (("sample", "time", "node"), np.asarray(data.observed, np.float32),
                         {"units": "mV", "long_name": "recorded transmembrane potential"}),
            "stim_sites": (("sample", "node"), np.asarray(st.sites, np.float64),
                           {"long_name": "stimulus weight per node (0..1)"}),
            "stim_onsets": (("sample", "pulse"), onsets, {"units": "ms"}),
            "stim_amplitude": (("sample",), np.asarray(st.amplitude, np.float64).reshape(-1),
                               {"units": "state units per ms"}),
            "stim_duration": (("sample",), np.asarray(st.duration, np.float64).reshape(-1),
                              {"units": "ms"}),
            **_geometry_variables(geo),
        },
        coords={
            "sample": np.arange(data.n_samples),
            "time": ("time", np.asarray(data.time, np.float64), {"units": "ms"}),
            "node": np.arange(geo.n_nodes),
            "xyz": ["x", "y", "z"],
            "pacing_site": ("sample", list(data.pacing_site)),
            "split": ("sample", [_sample_split(data, i) for i in range(data.n_samples)]),
            "in_train_horizon": ("time", (np.asarray(data.time) <= data.t_train + 1e-9)
                                 .astype(np.int8)),
        },
        attrs={
            "format": RECORDING_FORMAT,
            "format_version": FORMAT_VERSION,
            "t_train": float(data.t_train),
            "t_test": float(data.time[-1]),
            "structure": "",
            "reaction": "",
            "parameters": "{}",
            "geometry_kind": geo.kind,
            "geometry_name": geo.name,
            "region_names": json.dumps(list(geo.region_names)),
            "pacing_sites": json.dumps({n: list(v) for n, v in geo.pacing_sites}),
            "splits": json.dumps({k: {"samples": list(s.samples), "t_end": s.t_end,
                                      "t_start": s.t_start} for k, s in data.splits.items()}),
            "warnings": json.dumps(list(data.warnings)),
            **{f"provenance_{k}": v for k, v in data.provenance.items()},
            "description": data.provenance.get("description", ""),
        },
    )
    return ds


def _sample_split(data: FitData, i: int) -> str:
    for name in (TEST, VAL, TRAIN):
        sp = data.splits.get(name)
        if sp is not None and i in sp.samples and sp.t_start is None:
            return name
    return TRAIN


def save_recording(data: FitData, path: str | os.PathLike) -> str:
    """Write `data` as netCDF (atomically); :func:`load_recording` reads it back."""
    return save_dataset(recording_dataset(data), path)


def load_recording(path_or_ds) -> FitData:
    """Read a recording written by :func:`save_recording` (or ``leads import``), with its
    split windows: :meth:`FitData.from_dataset`, which reads the stored splits of any
    dataset that has them."""
    if not isinstance(path_or_ds, xr.Dataset) and not os.path.exists(os.fspath(path_or_ds)):
        raise FileNotFoundError(f"no recording at {os.fspath(path_or_ds)!r}")
    return FitData.from_dataset(path_or_ds)


# ---------------------------------------------------------------------------------------
# the fitted observation map
# ---------------------------------------------------------------------------------------
def _logit(x, lo, hi):
    p = (x - lo) / (hi - lo)
    return math.log(p) - math.log1p(-p)


class ObservedModel(AbstractCompiledModel):
    """Any compiled model observed through a fitted, bounded affine map:
    ``V = offset + gain * V_model`` with ``gain = g_lo + (g_hi - g_lo) sigmoid(raw_gain)``
    and the offset likewise (bounds are data). Everything else delegates to `model`.
    Build with :func:`with_observation_gain`."""

    model: AbstractCompiledModel
    raw_gain: Float[Array, ""]
    raw_offset: Float[Array, ""]
    gain_bounds: Float[Array, " 2"]
    offset_bounds: Float[Array, " 2"]

    def gain(self):
        lo, hi = self.gain_bounds[0], self.gain_bounds[1]
        return lo + (hi - lo) * jax.nn.sigmoid(self.raw_gain)

    def offset(self):
        lo, hi = self.offset_bounds[0], self.offset_bounds[1]
        return lo + (hi - lo) * jax.nn.sigmoid(self.raw_offset)

    @property
    def state_names(self) -> tuple[str, ...]:
        return self.model.state_names

    @property
    def state_bounds(self):
        return self.model.state_bounds

    @property
    def default_dt(self) -> float:
        return self.model.default_dt

    @property
    def n_nodes(self) -> int | None:
        return self.model.n_nodes

    def bind(self, geometry) -> AbstractBoundModel:
        return self.model.bind(geometry)

    def observe(self, state):
        return self.offset() + self.gain() * self.model.observe(state)

    def initial_state(self, n_nodes: int):
        return self.model.initial_state(n_nodes)

    def trainable_filter(self):
        f = jax.tree.map(lambda _: False, self)
        f = eqx.tree_at(lambda m: m.model, f, self.model.trainable_filter())
        return eqx.tree_at(lambda m: (m.raw_gain, m.raw_offset), f, (True, True))

    def perturb(self, key: PRNGKeyArray, scale) -> ObservedModel:
        """The wrapped model's restart noise; the map starts where it was."""
        return eqx.tree_at(lambda m: m.model, self, self.model.perturb(key, scale))

    def fitted_values(self) -> dict[str, float | list[float]]:
        out = dict(self.model.fitted_values())
        out["obs_gain"] = float(self.gain())
        out["obs_offset_mV"] = float(self.offset())
        return out

    @property
    def n_params(self) -> int:
        return self.model.n_params + 2

    def stable_dt(self, geometry, solver: str = "rk4") -> float:
        return self.model.stable_dt(geometry, solver)

    def formula(self) -> str:
        return f"{self.model.formula()}; observed V = offset + gain * V_model"


def with_observation_gain(
    model: AbstractCompiledModel,
    *,
    gain: Sequence[SupportsFloat] = (0.5, 2.0),
    offset: Sequence[SupportsFloat] = (-40.0, 40.0),
    init_gain: SupportsFloat = 1.0,
    init_offset: SupportsFloat = 0.0,
) -> ObservedModel:
    """Wrap `model` so that its observation gets a fitted affine map to the recording.

    **Arguments:**

    - `model`: any compiled model (``compile_structure``, ``compile_vector_field``,
      expression or neural models).
    - `gain`, `offset`: open bounds ``(low, high)`` of the gain (dimensionless) and the
      offset (mV); the defaults let a catalog model with a fixed -80..+20 mV map reach a
      -85..+33 mV recording.
    - `init_gain`, `init_offset`: starting values (strictly inside the bounds).
    """
    if not isinstance(model, AbstractCompiledModel):
        raise ValueError(f"model must be a compiled model; got {type(model).__name__}")
    (glo, ghi), (olo, ohi) = ((float(a), float(b)) for a, b in (gain, offset))
    if not (0 < glo < ghi and olo < ohi):
        raise ValueError(f"need 0 < gain low < gain high and offset low < high; got {gain}, "
                         f"{offset}")
    ig, io = float(init_gain), float(init_offset)
    if not (glo < ig < ghi and olo < io < ohi):
        raise ValueError(f"init_gain {ig} / init_offset {io} must lie strictly inside "
                         f"{gain} / {offset}")
    return ObservedModel(
        model=model,
        raw_gain=jnp.asarray(_logit(ig, glo, ghi), jnp.float32),
        raw_offset=jnp.asarray(_logit(io, olo, ohi), jnp.float32),
        gain_bounds=jnp.asarray([glo, ghi], jnp.float32),
        offset_bounds=jnp.asarray([olo, ohi], jnp.float32),
    )

