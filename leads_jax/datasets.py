r"""Ground-truth datasets: simulate a catalog model on a geometry under several pacing
sites and protocols, add optional noise, split by pacing site and time horizon, and
store as netCDF.

Format (``xarray.Dataset``, written with ``engine="h5netcdf"``; ``FORMAT_VERSION`` 1)
====================================================================================

Dimensions: ``sample`` (one simulation: a pacing site x a protocol), ``time`` (save
times, ms), ``node``, ``state`` (the reaction model's state variables), ``parameter``,
``pulse`` (stimulus pulses, NaN-padded), ``xyz`` (3), ``edge``, ``end`` (2), and, on
meshes, ``face`` and ``corner`` (3).

Data variables:

- ``observed (sample, time, node)`` float, mV -- the observed transmembrane
  potential **with noise** (what a fitting engine sees).
- ``observed_clean (sample, time, node)`` float, mV -- the same without noise.
- ``true_state (sample, time, state, node)`` float -- every true state variable (model
  units; the coordinate ``state`` holds their names).
- ``true_parameters (parameter, node)`` float -- physical value of each parameter at
  each node (units in the attribute ``parameter_units``, JSON).
- ``stim_sites (sample, node)`` -- stimulus weight per node (0..1);
  ``stim_onsets (sample, pulse)`` ms (NaN-padded); ``stim_amplitude (sample)`` per ms;
  ``stim_duration (sample)`` ms; ``activated_fraction (sample)`` share of nodes that
  activated over the record (a warning is raised below 0.5).
- geometry: ``geom_vertices (node, xyz)`` cm, ``geom_edges (edge, end)``,
  ``geom_edge_weights (edge)``, ``geom_mass (node)``, ``geom_regions (node)``, and
  ``geom_faces (face, corner)`` when the geometry has faces.

Coordinates: ``time`` (ms), ``sample`` (0..), ``node``, ``state`` (names),
``parameter`` (names), ``pacing_site (sample)`` (site name), ``protocol (sample)``
(protocol name), ``split (sample)`` in ``"train"``, ``"val"``, ``"test"`` (split by
pacing site), ``in_train_horizon (time)`` (bool: ``time <= t_train``).

Attributes (JSON strings where structured): ``format`` = "leads-jax ground truth",
``format_version``, ``structure`` (the true :class:`~leads_jax.structure.Structure`
JSON, with scalar parameter values filled in), ``reaction``, ``parameters`` (JSON
``{name: scalar or per-node list}``), ``parameter_units`` (JSON), ``t_train`` (ms,
the training horizon), ``t_test`` (ms, = ``horizon_factor * t_train``, the test
horizon: the whole record), ``horizon_factor``, ``noise`` (relative),
``noise_std_mV``, ``seed``, ``solver``, ``dt`` (ms), ``geometry_kind``,
``geometry_name``, ``region_names`` (JSON), ``pacing_sites`` (JSON ``{name: nodes}``),
``protocols`` (JSON list, one per sample), ``description``.

Splits: ``split_dataset(ds, "train")`` gives the training samples cut to the training
horizon (``time <= t_train``); ``split_dataset(ds, "test", horizon="test")`` the held-out
pacing sites over the full 3x horizon; ``split_dataset(ds, "train", horizon="test")``
the training sites over the full horizon (extrapolation in time).

Python: ``make_dataset(...)`` (tiny preset: ``make_dataset("aliev-panfilov",
Geometry.cable(64), t_train=100)``), ``save_dataset``, ``load_dataset`` (validates),
``geometry_from_dataset``, ``stimulus_from_dataset``, ``stacked_stimuli`` (all samples'
stimuli stacked for ``vmap``), ``split_dataset``. CLI: ``leads simulate``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
import typing
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from .compile import (
    compile_structure,
    diffusion_stable_dt,
    parameter_specs_of,
    physical_parameters,
    replace_parameters,
)
from .geometry import Geometry
from .measure import activation_times
from .physics.reactions import get_reaction
from .simulate import simulate
from .stimulus import _FAR, Stimulus, describe_protocol, site_label
from .structure import Structure

__all__ = [
    "DataSplit",
    "FIT_VARIABLES",
    "FitData",
    "FORMAT_VERSION",
    "make_geometry",
    "make_stimulus",
    "make_dataset",
    "save_dataset",
    "load_dataset",
    "validate_dataset",
    "geometry_from_dataset",
    "stimulus_from_dataset",
    "stacked_stimuli",
    "split_dataset",
    "default_conductivity",
    "REQUIRED_VARIABLES",
]

FORMAT = "leads-jax ground truth"
FORMAT_VERSION = 1
#: Variables a dataset needs for fitting (no ground truth: ``true_state``,
#: ``true_parameters`` and ``observed_clean`` are optional).
FIT_VARIABLES = (
    "observed",
    "stim_sites",
    "stim_onsets",
    "stim_amplitude",
    "stim_duration",
    "geom_vertices",
    "geom_edges",
    "geom_edge_weights",
    "geom_mass",
    "geom_regions",
)
#: Variables of a ground-truth dataset (:func:`make_dataset`): the fitting ones plus the
#: truth (noise-free observation, true states and parameters).
REQUIRED_VARIABLES = FIT_VARIABLES + ("observed_clean", "true_state", "true_parameters")
REQUIRED_ATTRS = (
    "structure",
    "t_train",
    "t_test",
    "reaction",
    "parameters",
    "region_names",
    "pacing_sites",
    "geometry_kind",
)
GEOMETRIES = ("cable", "sheet", "ventricle")
PROTOCOLS = ("single", "s1s2", "train")


# ----------------------------------------------------------------------------------
# building blocks
# ----------------------------------------------------------------------------------
def make_geometry(name: str | Geometry, **kwargs) -> Geometry:
    """A geometry by name (``"cable"``, ``"sheet"``, ``"ventricle"``) with constructor
    keyword arguments, or a :class:`Geometry` passed through."""
    if isinstance(name, Geometry):
        return name
    if not isinstance(name, str) or name.lower() not in GEOMETRIES:
        raise ValueError(
            f"unknown geometry {name!r}; valid names are {list(GEOMETRIES)} "
            "(or pass a Geometry, e.g. Geometry.from_mesh(...))"
        )
    return getattr(Geometry, name.lower())(**kwargs)


def _protocol_kind_kwargs(protocol) -> tuple[str, dict]:
    if isinstance(protocol, str):
        kind, kw = protocol, {}
    elif isinstance(protocol, Mapping):
        kw = dict(protocol)
        kind = kw.pop("kind", "single")
    else:
        raise ValueError(f"protocol must be a name or a dict; got {protocol!r}")
    if kind not in PROTOCOLS:
        raise ValueError(f"unknown protocol {kind!r}; valid protocols are {list(PROTOCOLS)}")
    if kind == "train":
        kw.setdefault("period", 300.0)
        kw.setdefault("n", 2)
    return kind, kw


def make_stimulus(geometry: Geometry, site, protocol: str | Mapping = "single") -> Stimulus:
    """A stimulus at ``site`` for a protocol name or dict ``{"kind": ..., **kwargs}``
    (kinds: ``single``, ``s1s2``, ``train``; kwargs of the matching Stimulus constructor)."""
    kind, kw = _protocol_kind_kwargs(protocol)
    return {"single": Stimulus.single, "s1s2": Stimulus.s1s2, "train": Stimulus.train}[kind](
        geometry, site, **kw
    )


def default_conductivity(geometry: Geometry) -> float:
    """A conductivity (cm^2/ms) suited to the geometry's node spacing h (mean edge
    length): ``1e-3 * (h / 0.025 cm)^2`` on cables and graphs (1e-3 on the default
    cable) and a 16th of that on surfaces (sheet, mesh: about 6e-3 on the default
    ventricle). Scaling with h^2 keeps the wave front a similar number of nodes wide;
    the smaller surface value keeps the critical nucleus (~ D / speed) below the
    pacing patch, so every catalog model (FitzHugh-Nagumo included) propagates from
    the built-in pacing sites with the default stimulus."""
    h = float(np.mean(np.asarray(geometry.edge_lengths())))
    d = 1e-3 * (h / 0.025) ** 2
    if geometry.kind in ("sheet", "mesh"):
        d /= 16.0
    return float(f"{min(max(d, 1e-6), 0.5):.3g}")


def _resolve_structure(model):
    if isinstance(model, Structure):
        return model
    if isinstance(model, str):
        text = model.strip()
        if text.startswith("{"):
            return Structure.from_json(text)
        try:
            cls = get_reaction(text)
        except KeyError as err:
            raise ValueError(str(err.args[0]) if err.args else str(err)) from None
        return Structure.make(cls.name)
    raise ValueError(f"model must be a catalog name, a Structure or its JSON; got {model!r}")


def _json_value(v):
    a = np.asarray(v, dtype=np.float64)
    if a.ndim == 0:
        return float(a)
    return [float(x) for x in a.ravel()]


def _site_key(s) -> str:
    return s if isinstance(s, str) else site_label(s)


def _assign_splits(sites, train_sites, val_sites, test_sites):
    names = [_site_key(s) for s in sites]
    given = any(x is not None for x in (train_sites, val_sites, test_sites))
    if given:
        split = {}
        for lab, lst in (("train", train_sites), ("val", val_sites), ("test", test_sites)):
            for s in lst or ():
                key = _site_key(s)
                if key not in names:
                    raise ValueError(f"{lab}_sites: {s!r} is not among pacing_sites {names}")
                if key in split:
                    raise ValueError(f"pacing site {s!r} is in two splits")
                split[key] = lab
        rest = [n for n in names if n not in split]
        for n in rest:
            split[n] = "train"
        return names, [split[n] for n in names]
    k = len(names)
    if k == 1:
        labels = ["train"]
    elif k == 2:
        labels = ["train", "test"]
    elif k == 3:
        labels = ["train", "val", "test"]
    else:
        labels = ["train"] * (k - 2) + ["val", "test"]
    return names, labels


# ----------------------------------------------------------------------------------
# generation
# ----------------------------------------------------------------------------------
def make_dataset(
    model="aliev-panfilov",
    geometry: Geometry | str = "cable",
    *,
    pacing_sites: Sequence | None = None,
    protocols: Sequence = ("single",),
    t_train: float = 200.0,
    horizon_factor: float = 3.0,
    save_every: float = 1.0,
    parameters: Mapping[str, Any] | None = None,
    noise: float = 0.0,
    seed: int = 0,
    solver: str = "rk4",
    dt: float | None = None,
    train_sites: Sequence | None = None,
    val_sites: Sequence | None = None,
    test_sites: Sequence | None = None,
    geometry_kwargs: Mapping[str, Any] | None = None,
) -> xr.Dataset:
    """Simulate ground truth and return it in the documented format (module docstring).

    **Arguments:**

    - `model`: a catalog reaction name (aliases accepted; plain model with Laplacian
      diffusion), a :class:`~leads_jax.structure.Structure`, or its JSON.
    - `geometry`: a :class:`Geometry` or a name (``cable``/``sheet``/``ventricle``, built
      with `geometry_kwargs`).
    - `pacing_sites`: site names or node-index lists (default: up to three of the
      geometry's named sites); one sample per site and protocol.
    - `protocols`: ``"single"``, ``"s1s2"``, ``"train"`` or dicts ``{"kind": ..., **kw}``.
    - `t_train` (ms): training horizon; the record runs to ``horizon_factor * t_train``.
    - `save_every` (ms): sampling interval of the saved record.
    - `parameters`: true values ``{name: scalar | (n_regions,) | (n_nodes,)}``; the
      conductivity ``D`` defaults to :func:`default_conductivity`.
    - `noise`: Gaussian noise std as a fraction of the clean signal's range (0.01 = 1%).
    - `seed`: noise and neural-term initialisation seed.
    - `solver`, `dt`: integration (default: fixed-step RK4 at the smaller of the
      model's stable step and half the diffusion stability bound).
    - `train_sites`/`val_sites`/`test_sites`: explicit split by pacing site (default:
      1 site -> train; 2 -> train, test; 3 -> train, val, test; more -> the last two are
      val and test).

    Raises ``ValueError`` for unknown models, geometries, sites or protocols, and when a
    ground-truth simulation diverges (with the sample, the reason and the time).
    """

    structure = _resolve_structure(model)
    geo = make_geometry(geometry, **dict(geometry_kwargs or {}))
    t_train = float(t_train)
    if not (t_train > 0 and math.isfinite(t_train)):
        raise ValueError(f"t_train must be a positive number of ms; got {t_train}")
    if not (horizon_factor >= 1):
        raise ValueError(f"horizon_factor must be >= 1; got {horizon_factor}")
    if not (save_every > 0):
        raise ValueError(f"save_every must be > 0 ms; got {save_every}")
    if not (noise >= 0 and math.isfinite(noise)):
        raise ValueError(f"noise must be a non-negative fraction; got {noise}")
    if pacing_sites is None:
        pacing_sites = list(geo.pacing_site_names[:3]) or [0]
    pacing_sites = list(pacing_sites)
    if not pacing_sites:
        raise ValueError("pacing_sites is empty")
    if isinstance(protocols, (str, Mapping)):
        protocols = [protocols]
    protocols = list(protocols)
    if not protocols:
        raise ValueError("protocols is empty")
    # check sites and protocols before any compilation
    stims = [[make_stimulus(geo, s, p) for p in protocols] for s in pacing_sites]
    site_names, site_split = _assign_splits(pacing_sites, train_sites, val_sites, test_sites)

    hm = compile_structure(structure, geo, key=jax.random.PRNGKey(seed))
    values = dict(parameters or {})
    names = tuple(hm.params.names)
    unknown = set(values) - set(names)
    if unknown:
        raise ValueError(
            f"unknown parameter(s) {sorted(unknown)} for {structure.reaction}; "
            f"valid names are {names}"
        )
    explicit = {p.name for p in structure.parameters if p.value is not None}
    if "D" in names and "D" not in values and "D" not in explicit:
        values["D"] = default_conductivity(geo)
    if values:
        hm = replace_parameters(hm, **values)
    true = {k: np.asarray(v, dtype=np.float64) for k, v in physical_parameters(hm).items()}

    cls = hm.reaction_cls
    if dt is None:
        dt = float(getattr(cls, "stable_dt", 0.0) or 0.05)
        dt = min(dt, 0.5 * diffusion_stable_dt(hm, geo))
    dt = float(dt)
    t_end = horizon_factor * t_train
    n_t = int(round(t_end / save_every)) + 1
    ts = np.linspace(0.0, (n_t - 1) * save_every, n_t)

    flat = [(si, pi, st) for si in range(len(pacing_sites)) for pi, st in enumerate(stims[si])]
    n_pulse = max([st.n_pulses for _, _, st in flat] + [1])
    stacked = jax.tree.map(lambda *x: jnp.stack(x), *[st.padded(n_pulse) for _, _, st in flat])
    run = eqx.filter_jit(
        eqx.filter_vmap(lambda st: simulate(hm, geo, st, ts, solver=solver, dt=dt), in_axes=(0,))
    )
    tr = run(stacked)
    diverged = np.asarray(tr.diverged)
    if diverged.any():
        i = int(np.argmax(diverged))
        si, pi, st = flat[i]
        raise ValueError(
            f"ground truth diverged for pacing site {site_names[si]!r}, protocol "
            f"{describe_protocol(*_protocol_kind_kwargs(protocols[pi]))}: "
            f"{tr.reason_text()[i]} at t = {float(tr.t_diverged[i]):.3g} ms (dt = {dt} ms); "
            "lower dt or change the parameters"
        )
    obs = list(np.asarray(tr.observed, dtype=np.float32))
    activated = np.isfinite(activation_times(np.stack(obs), ts).values).mean(axis=-1)
    for i, frac in enumerate(activated):
        if frac < 0.5:
            si, pi, _ = flat[i]
            warnings.warn(
                f"ground truth sample {i} (site {site_names[si]!r}): only {frac:.0%} of the nodes "
                "activated; raise the stimulus amplitude/duration, lower D, or lengthen t_train",
                stacklevel=2,
            )
    states = list(np.asarray(tr.state, dtype=np.float32))
    labels, prot_names, prot_json, split, stim_list = [], [], [], [], []
    for si, pi, st in flat:
        kind, kw = _protocol_kind_kwargs(protocols[pi])
        labels.append(site_names[si])
        prot_names.append(describe_protocol(kind, **kw))
        prot_json.append(st.to_dict(site_label=site_names[si], protocol=prot_names[-1]))
        split.append(site_split[si])
        stim_list.append(st)
    clean = np.stack(obs)
    states = np.stack(states)
    rng = np.random.default_rng([int(seed), 7919])
    span = float(np.nanmax(clean) - np.nanmin(clean))
    noise_std = float(noise) * span
    noisy = clean + (
        rng.normal(0.0, noise_std, clean.shape).astype(np.float32) if noise_std > 0 else 0.0
    )

    true_struct = _true_structure(structure, true, geo)
    onsets = np.full((len(stim_list), n_pulse), np.nan)
    for i, s in enumerate(stim_list):
        onsets[i, : s.n_pulses] = np.asarray(s.onsets)
    specs_units = _parameter_units(hm)
    ds = xr.Dataset(
        {
            "observed": (
                ("sample", "time", "node"),
                noisy.astype(np.float32),
                {"units": "mV", "long_name": "observed transmembrane potential (noisy)"},
            ),
            "observed_clean": (
                ("sample", "time", "node"),
                clean,
                {"units": "mV", "long_name": "observed potential without noise"},
            ),
            "true_state": (
                ("sample", "time", "state", "node"),
                states,
                {"long_name": "true state variables (model units)"},
            ),
            "true_parameters": (
                ("parameter", "node"),
                np.stack([np.broadcast_to(true[n], (geo.n_nodes,)) for n in names]),
                {"long_name": "true physical parameter values per node"},
            ),
            "stim_sites": (
                ("sample", "node"),
                np.stack([np.asarray(s.sites) for s in stim_list]),
                {"long_name": "stimulus weight per node (0..1)"},
            ),
            "stim_onsets": (("sample", "pulse"), onsets, {"units": "ms"}),
            "stim_amplitude": (
                ("sample",),
                np.array([float(s.amplitude) for s in stim_list]),
                {"units": "state units per ms"},
            ),
            "stim_duration": (
                ("sample",),
                np.array([float(s.duration) for s in stim_list]),
                {"units": "ms"},
            ),
            "activated_fraction": (
                ("sample",),
                activated,
                {"long_name": "share of nodes activated (50% upstroke) in the whole record"},
            ),
            **_geometry_variables(geo),
        },
        coords={
            "sample": np.arange(len(stim_list)),
            "time": ("time", ts, {"units": "ms"}),
            "node": np.arange(geo.n_nodes),
            "state": list(cls.state_names),
            "parameter": list(names),
            "xyz": ["x", "y", "z"],
            "pacing_site": ("sample", labels),
            "protocol": ("sample", prot_names),
            "split": ("sample", split),
            "in_train_horizon": (
                "time",
                (ts <= t_train + 1e-9).astype(np.int8),
                {"long_name": "1 inside the training horizon, 0 beyond"},
            ),
        },
        attrs={
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "structure": true_struct.to_json(),
            "reaction": cls.name,
            "parameters": json.dumps({n: _uniform_or_list(true[n]) for n in names}),
            "parameter_units": json.dumps(specs_units),
            "t_train": t_train,
            "t_test": float(ts[-1]),
            "horizon_factor": float(horizon_factor),
            "noise": float(noise),
            "noise_std_mV": noise_std,
            "seed": int(seed),
            "solver": solver,
            "dt": dt,
            "geometry_kind": geo.kind,
            "geometry_name": geo.name,
            "region_names": json.dumps(list(geo.region_names)),
            "pacing_sites": json.dumps({n: list(v) for n, v in geo.pacing_sites}),
            "protocols": json.dumps(prot_json),
            "description": (
                f"ground truth of {cls.name} ({true_struct.diffusion.kind} diffusion) on "
                f"{geo.name} ({geo.n_nodes} nodes); samples = pacing sites x protocols; "
                f"train horizon {t_train:g} ms, test horizon {ts[-1]:g} ms; "
                f"noise {noise:g} of the signal range ({noise_std:.3g} mV)"
            ),
        },
    )
    return ds


def _clean(x) -> float:
    """A float32-derived value as its shortest decimal (0.15, not 0.15000000596...)."""
    return float(f"{float(np.float32(x)):.6g}")


def _uniform_or_list(v):
    v = np.asarray(v, dtype=np.float64)
    if v.ndim == 0 or np.allclose(v, v.ravel()[0], rtol=1e-6, atol=0):
        return _clean(v.ravel()[0])
    return [_clean(x) for x in v]


def _parameter_units(hm) -> dict[str, str]:
    return {n: s.units for n, s in parameter_specs_of(hm).items()}


def _true_structure(structure, true: dict, geo: Geometry):
    """The structure with each uniform parameter fixed at its true value; heterogeneous
    ones marked per-region (constant within regions) or per-node."""
    s = structure.canonical()
    reg = np.asarray(geo.regions)
    for name, v in true.items():
        v = np.asarray(v, dtype=np.float64)
        u = _uniform_or_list(v)
        if isinstance(u, float):
            s = s.with_parameter(name, "fixed", u)
            continue
        per_region = all(np.allclose(v[reg == r], v[reg == r][0]) for r in np.unique(reg))
        s = s.with_parameter(name, "per-region" if per_region else "per-node", None)
    return s.canonical()


def _geometry_variables(geo: Geometry) -> dict[str, tuple]:
    a = geo.to_arrays()
    out = {
        "geom_vertices": (("node", "xyz"), a["vertices"], {"units": "cm"}),
        "geom_edges": (("edge", "end"), a["edges"].astype(np.int32)),
        "geom_edge_weights": (
            ("edge",),
            a["edge_weights"],
            {"long_name": "stiffness weight w_ij (L = M^-1 C)"},
        ),
        "geom_mass": (("node",), a["mass"], {"long_name": "lumped mass / control volume"}),
        "geom_regions": (("node",), a["regions"].astype(np.int32)),
    }
    if a["faces"] is not None:
        out["geom_faces"] = (("face", "corner"), a["faces"].astype(np.int32))
    return out


# ----------------------------------------------------------------------------------
# I/O and validation
# ----------------------------------------------------------------------------------
def save_dataset(ds: xr.Dataset, path: str | os.PathLike) -> str:
    """Write atomically with h5netcdf (temporary file in the same folder, then
    ``os.replace``). Returns the path."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".nc", dir=folder)
    os.close(fd)
    try:
        ds.to_netcdf(tmp, engine="h5netcdf")
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)  # mkstemp creates 0600; use the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def validate_dataset(ds: xr.Dataset, *, allow_nan: bool = False) -> xr.Dataset:
    """Check a ground-truth dataset: required variables/attrs and dims, consistent
    geometry, and no NaN/inf in ``observed`` (names the bad samples). Returns ``ds``."""
    missing = [v for v in REQUIRED_VARIABLES if v not in ds.variables]
    if missing:
        raise ValueError(
            f"dataset is missing variable(s) {missing}; expected {list(REQUIRED_VARIABLES)}"
        )
    missing = [a for a in REQUIRED_ATTRS if a not in ds.attrs]
    if missing:
        raise ValueError(f"dataset is missing attribute(s) {missing}")
    if ds["observed"].dims != ("sample", "time", "node"):
        raise ValueError(f"observed must have dims (sample, time, node); got {ds['observed'].dims}")
    if ds["true_state"].dims != ("sample", "time", "state", "node"):
        raise ValueError(
            f"true_state must have dims (sample, time, state, node); got {ds['true_state'].dims}"
        )
    for c in ("split", "pacing_site", "time"):
        if c not in ds.coords:
            raise ValueError(f"dataset is missing coordinate {c!r}")
    bad_split = set(np.asarray(ds["split"].values).tolist()) - {"train", "val", "test"}
    if bad_split:
        raise ValueError(f"split labels must be train/val/test; found {sorted(bad_split)}")
    t = np.asarray(ds["time"].values)
    if t.size < 2 or np.any(np.diff(t) <= 0):
        raise ValueError("time must be strictly increasing with at least 2 samples")
    if ds.sizes["node"] != ds["geom_vertices"].shape[0]:
        raise ValueError("geometry node count differs from the data's node dimension")
    if not allow_nan:
        obs = np.asarray(ds["observed"].values)
        bad = np.where(~np.all(np.isfinite(obs.reshape(obs.shape[0], -1)), axis=1))[0]
        if bad.size:
            raise ValueError(
                f"observed has NaN/inf values in sample(s) {bad.tolist()} "
                f"(pacing sites {[str(x) for x in np.asarray(ds['pacing_site'].values)[bad]]})"
            )
    for a in ("structure", "parameters", "region_names", "pacing_sites"):
        try:
            json.loads(ds.attrs[a])
        except (TypeError, ValueError):
            raise ValueError(f"attribute {a!r} is not valid JSON") from None
    return ds


def load_dataset(path: str | os.PathLike, *, allow_nan: bool = False) -> xr.Dataset:
    """Read a ground-truth dataset (into memory) and validate it (:func:`validate_dataset`)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no dataset at {path!r}")
    with xr.open_dataset(path, engine="h5netcdf") as f:
        ds = f.load()
    return validate_dataset(ds, allow_nan=allow_nan)


def geometry_from_dataset(ds: xr.Dataset) -> Geometry:
    """Rebuild the :class:`Geometry` stored in a dataset (identical arrays and metadata)."""
    faces = ds["geom_faces"].values if "geom_faces" in ds.variables else None
    sites = json.loads(ds.attrs["pacing_sites"])
    return Geometry.from_arrays(
        ds["geom_vertices"].values,
        ds["geom_edges"].values,
        ds["geom_edge_weights"].values,
        ds["geom_mass"].values,
        ds["geom_regions"].values.astype(np.int64),
        faces,
        kind=str(ds.attrs.get("geometry_kind", "graph")),
        region_names=json.loads(ds.attrs["region_names"]),
        pacing_sites={k: np.asarray(v, dtype=np.int64) for k, v in sites.items()},
        name=str(ds.attrs.get("geometry_name", "geometry")),
    )


def stimulus_from_dataset(
    ds: xr.Dataset, sample: int, geometry: Geometry | None = None
) -> Stimulus:
    """The :class:`Stimulus` of one sample."""
    geo = geometry_from_dataset(ds) if geometry is None else geometry
    on = np.asarray(ds["stim_onsets"].values[sample])
    return Stimulus.custom(
        geo,
        np.asarray(ds["stim_sites"].values[sample]),
        onsets=on[np.isfinite(on)],
        amplitude=float(ds["stim_amplitude"].values[sample]),
        duration=float(ds["stim_duration"].values[sample]),
    )


def stacked_stimuli(ds: xr.Dataset, geometry: Geometry | None = None) -> Stimulus:
    """Every sample's :class:`Stimulus`, padded to one pulse count and stacked along a
    leading ``sample`` axis (for ``vmap`` over samples, e.g. with
    ``eqx.filter_vmap(lambda st: simulate(model, geo, st, ts))(stacked)``)."""
    geo = geometry_from_dataset(ds) if geometry is None else geometry
    stims = [stimulus_from_dataset(ds, i, geo) for i in range(ds.sizes["sample"])]
    n = max([s.n_pulses for s in stims] + [1])
    return jax.tree.map(lambda *x: jnp.stack(x), *[s.padded(n) for s in stims])


def split_dataset(ds: xr.Dataset, split: str = "train", *, horizon: str = "train") -> xr.Dataset:
    """Samples of one split (``train``/``val``/``test``/``all``), cut to the training
    horizon (``horizon="train"``: ``time <= t_train``) or the full test horizon
    (``horizon="test"``: 3x)."""
    if split not in ("train", "val", "test", "all"):
        raise ValueError(f"split must be train, val, test or all; got {split!r}")
    if horizon not in ("train", "test"):
        raise ValueError(f"horizon must be 'train' or 'test'; got {horizon!r}")
    out = ds if split == "all" else ds.isel(sample=np.where(ds["split"].values == split)[0])
    if out.sizes["sample"] == 0:
        raise ValueError(
            f"the dataset has no {split!r} samples (splits: "
            f"{sorted(set(ds['split'].values.tolist()))})"
        )
    if horizon == "train":
        out = out.isel(time=np.where(ds["in_train_horizon"].values.astype(bool))[0])
    return out


# ----------------------------------------------------------------------------------
# the typed hand-off to the fitting engine
# ----------------------------------------------------------------------------------
#: Standard split names. ``train`` is fitted; ``val`` drives early stopping and model
#: selection; every other split is an audit split (held out); ``test`` gives ``test_rmse``.
TRAIN, VAL, TEST = "train", "val", "test"
EXTRAPOLATION = "train sites, test horizon"


@dataclasses.dataclass(frozen=True)
class DataSplit:
    """Which samples a split scores, and over which time window.

    - `samples`: indices into the ``sample`` axis of :class:`FitData` (non-empty).
    - `t_end` (ms): the last scored time; a rollout of this split runs from ``time[0]``
      to the last save time ``<= t_end``.
    - `t_start` (ms) or ``None``: scored times are those ``> t_start`` (``None``: from
      ``time[0]``, inclusive). Earlier times are simulated but weigh zero in the loss,
      so one recording can give a training window and later validation and held-out
      windows (splits by time or beat).
    """

    samples: tuple[int, ...]
    t_end: float
    t_start: float | None = None

    def __post_init__(self):
        object.__setattr__(self, "samples", tuple(int(i) for i in self.samples))
        object.__setattr__(self, "t_end", _float_field("DataSplit.t_end", self.t_end))
        if self.t_start is not None:
            object.__setattr__(self, "t_start",
                               _float_field("DataSplit.t_start", self.t_start))
            if not self.t_start < self.t_end:
                raise ValueError(
                    f"DataSplit: t_start={self.t_start} ms must be before t_end={self.t_end} ms"
                )
        if not self.samples:
            raise ValueError("DataSplit.samples is empty; a split needs at least one sample")


def _float_field(what, x) -> float:
    """A real scalar (Python, NumPy or JAX) as a float, or a clear error."""
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a real number; got {x!r}") from None
    if a.shape != () or isinstance(x, bool) or not math.isfinite(float(a)):
        raise ValueError(f"{what} must be a finite real scalar; got {x!r}")
    return float(a)


@dataclasses.dataclass(frozen=True, eq=False)
class FitData:
    """Observations as the fitting engine reads them: built and checked once, at the
    boundary (:meth:`from_dataset` for this package's netCDF format; the recording
    importer ``from_recording`` builds the same object from a user's traces).

    **Fields** (units fixed: time in ms, potentials in mV):

    - `geometry`: the :class:`~leads_jax.geometry.Geometry` the observations live on
      (its ``n_nodes`` is the ``node`` axis of `observed`).
    - `time` ``[time]`` (ms): strictly increasing save times, shared by every sample.
    - `observed` ``[sample, time, node]`` (mV): the observed potential; finite.
    - `stimuli`: one :class:`~leads_jax.stimulus.Stimulus` per sample, stacked on a
      leading ``sample`` axis (pulse counts padded, see :meth:`Stimulus.padded`).
    - `splits`: ``{name: DataSplit}``. ``"train"`` is required (it is fitted); ``"val"``
      (optional) drives early stopping and selection; every other split is held out
      and scored by the stability audit (``"test"`` gives ``test_rmse``; datasets of
      this package also have ``"train sites, test horizon"``). Order is kept.
    - `t_train` (ms): the training horizon (end of the ``train`` window).
    - `dt` (ms) or ``None``: the integration step the data were made with, the
      default step of a fit (``None``: each model's own default).
    - `pacing_site` ``[sample]``: a label per sample (site name, beat...).
    - `provenance`: free text metadata kept in fit results (``description``,
      ``true_structure`` JSON when known, ``source``...).
    - `warnings`: problems found while reading that are not errors (e.g. a sample
      without any stimulus); ``fit`` records them in its results.
    """

    geometry: Geometry
    time: np.ndarray
    observed: np.ndarray
    stimuli: Any
    splits: Mapping[str, DataSplit]
    t_train: float
    dt: float | None = None
    pacing_site: tuple[str, ...] = ()
    provenance: Mapping[str, str] = dataclasses.field(default_factory=dict)
    warnings: tuple[str, ...] = ()

    time_units: typing.ClassVar[str] = "ms"
    observed_units: typing.ClassVar[str] = "mV"

    def __post_init__(self):
        t = np.asarray(self.time, dtype=np.float64)
        if t.ndim != 1 or t.size < 2 or not np.all(np.isfinite(t)) or np.any(np.diff(t) <= 0):
            raise ValueError("FitData.time must be finite and strictly increasing (ms), with "
                             f"at least 2 samples; got shape {t.shape}")
        obs = np.asarray(self.observed, dtype=np.float32)
        n_nodes = int(self.geometry.n_nodes)
        if obs.ndim != 3 or obs.shape[1:] != (t.size, n_nodes):
            raise ValueError(
                f"FitData.observed must have shape (sample, time={t.size}, node={n_nodes}); "
                f"got {obs.shape}"
            )
        bad = np.where(~np.all(np.isfinite(obs.reshape(obs.shape[0], -1)), axis=1))[0]
        if bad.size:
            raise ValueError(f"observed has NaN/inf values in sample(s) {bad.tolist()}")
        n_samples = obs.shape[0]
        sites = np.asarray(self.stimuli.sites)
        if sites.shape != (n_samples, n_nodes):
            raise ValueError(
                f"FitData.stimuli must be stacked over the {n_samples} samples, with sites of "
                f"shape ({n_samples}, {n_nodes}); got {sites.shape}"
            )
        splits = dict(self.splits)
        if TRAIN not in splits:
            raise ValueError(f"FitData.splits needs a {TRAIN!r} split; got {list(splits)}")
        for name, sp in splits.items():
            if not isinstance(sp, DataSplit):
                raise ValueError(f"FitData.splits[{name!r}] must be a DataSplit")
            out = [i for i in sp.samples if not 0 <= i < n_samples]
            if out:
                raise ValueError(
                    f"split {name!r}: sample(s) {out} outside 0..{n_samples - 1}"
                )
            if sp.t_end > t[-1] + 1e-6 * (t[-1] - t[0]):
                raise ValueError(
                    f"split {name!r} ends at t={sp.t_end:g} ms, after the record's end "
                    f"({t[-1]:g} ms)"
                )
            if np.sum(self._scored(t, sp)) == 0:
                raise ValueError(f"split {name!r} scores no save time")
        t_train = _float_field("FitData.t_train", self.t_train)
        if not t[0] < t_train <= t[-1] + 1e-6 * (t[-1] - t[0]):
            raise ValueError(
                f"t_train = {t_train:g} ms must lie inside the record ({t[0]:g}, {t[-1]:g}] ms"
            )
        dt = None if self.dt is None else _float_field("FitData.dt", self.dt)
        if dt is not None and not dt > 0:
            raise ValueError(f"FitData.dt must be > 0 ms or None; got {dt}")
        labels = tuple(str(x) for x in self.pacing_site) or tuple(
            f"sample {i}" for i in range(n_samples))
        if len(labels) != n_samples:
            raise ValueError(f"FitData.pacing_site needs {n_samples} labels; got {len(labels)}")
        notes = list(self.warnings)
        amp = np.asarray(self.stimuli.amplitude).reshape(n_samples)
        for i in range(n_samples):
            if not np.any(sites[i] > 0) or amp[i] == 0:
                notes.append(f"sample {i} ({labels[i]}): the stimulus is zero everywhere "
                             "(all-zero pacing sites or amplitude)")
        for k, v in (("time", t), ("observed", obs), ("t_train", t_train), ("dt", dt),
                     ("splits", splits), ("pacing_site", labels),
                     ("provenance", {str(a): str(b) for a, b in dict(self.provenance).items()}),
                     ("warnings", tuple(dict.fromkeys(notes)))):
            object.__setattr__(self, k, v)

    # -- views -------------------------------------------------------------------------
    @property
    def n_samples(self) -> int:
        return int(self.observed.shape[0])

    @property
    def n_nodes(self) -> int:
        return int(self.geometry.n_nodes)

    @property
    def audit_splits(self) -> tuple[str, ...]:
        """The held-out splits (every split but ``train`` and ``val``), in order."""
        return tuple(n for n in self.splits if n not in (TRAIN, VAL))

    @staticmethod
    def _scored(t, sp: DataSplit) -> np.ndarray:
        end = t <= sp.t_end + 1e-9
        return end if sp.t_start is None else end & (t > sp.t_start + 1e-9)

    def split_arrays(self, name: str):
        """``(stimuli, targets [sample time node], ts [time], weights [time])`` of one
        split as host/device arrays (no XLA computation), or ``None`` when absent."""
        sp = self.splits.get(name)
        if sp is None:
            return None
        idx = np.asarray(sp.samples)
        keep = self.time <= sp.t_end + 1e-9
        w = self._scored(self.time, sp)[keep].astype(np.float32)
        stim = jax.tree.map(lambda x: jax.device_put(np.asarray(x)[idx]), self.stimuli)
        targets = self.observed[idx][:, keep]
        return stim, targets, self.time[keep].astype(np.float32), w

    # -- constructors ---------------------------------------------------------------------
    @classmethod
    def from_dataset(cls, ds: xr.Dataset | str | os.PathLike, *,
                     geometry: Geometry | None = None) -> FitData:
        """Read a dataset in this package's format (module docstring), or the path of one.

        Needs the :data:`FIT_VARIABLES`, the ``time``/``split``/``pacing_site``
        coordinates and the ``t_train`` attribute (ground-truth variables are optional).
        Splits: the ``splits`` attribute when the dataset has one (JSON ``{name:
        {"samples": [...], "t_end": ms, "t_start": ms or null}}``, what
        :func:`~leads_jax.recording.save_recording` writes: a recording's windows in
        time), else from the ``split`` labels: ``train`` and ``val`` samples over the
        training horizon, ``test`` samples over the whole record, and ``"train sites,
        test horizon"``. Provenance: the ``provenance_*`` attributes when present (else
        ``description`` and ``structure``); ``warnings``: the JSON attribute of that name.
        `geometry`, when given, must equal the stored one (it is checked, never silently
        replaced).
        """
        if isinstance(ds, (str, os.PathLike)):
            path = os.fspath(ds)
            if not os.path.exists(path):
                raise FileNotFoundError(f"no dataset at {path!r}")
            with xr.open_dataset(path, engine="h5netcdf") as f:
                ds = f.load()
        if not isinstance(ds, xr.Dataset):
            raise ValueError(
                f"FitData.from_dataset needs an xarray.Dataset or a path; got {type(ds).__name__}"
            )
        _validate_fit_variables(ds)
        stored = geometry_from_dataset(ds)
        geo = stored if geometry is None else _same_geometry(geometry, stored)
        t = np.asarray(ds["time"].values, dtype=np.float64)
        t_train = _float_field("attribute t_train", ds.attrs["t_train"])
        if "splits" in ds.attrs:
            splits = _stored_splits(ds.attrs["splits"])
        else:
            labels = np.asarray(ds["split"].values).astype(str)
            splits = {}
            for name, horizon in ((TRAIN, t_train), (VAL, t_train), (TEST, float(t[-1])),
                                  (EXTRAPOLATION, float(t[-1]))):
                lab = TRAIN if name == EXTRAPOLATION else name
                idx = np.flatnonzero(labels == lab)
                if idx.size:
                    splits[name] = DataSplit(tuple(idx.tolist()), horizon)
            if TRAIN not in splits:
                raise ValueError("the dataset has no 'train' samples")
        dt = float(ds.attrs.get("dt", 0.0) or 0.0)
        provenance = {k[len("provenance_"):]: str(v) for k, v in ds.attrs.items()
                      if k.startswith("provenance_")} or {
            "description": str(ds.attrs.get("description", "")),
            "true_structure": str(ds.attrs.get("structure", "")),
        }
        try:
            notes = tuple(str(w) for w in json.loads(ds.attrs.get("warnings", "[]")))
        except (TypeError, ValueError):
            raise ValueError("attribute 'warnings' is not a JSON list of strings") from None
        return cls(
            geometry=geo,
            time=t,
            observed=np.asarray(ds["observed"].values, dtype=np.float32),
            stimuli=_stacked_stimuli_np(ds, geo),
            splits=splits,
            t_train=t_train,
            dt=dt if dt > 0 else None,
            pacing_site=tuple(str(x) for x in np.asarray(ds["pacing_site"].values)),
            provenance=provenance,
            warnings=notes,
        )


def _stored_splits(text) -> dict[str, DataSplit]:
    """The ``splits`` attribute (JSON) as DataSplits, or a clear error."""
    try:
        raw = json.loads(text)
        if not isinstance(raw, dict):
            raise TypeError("not an object")
        return {str(k): DataSplit(tuple(v["samples"]), v["t_end"], v.get("t_start"))
                for k, v in raw.items()}
    except (TypeError, ValueError, KeyError, AttributeError) as e:
        raise ValueError(
            "attribute 'splits' is not valid split JSON ({name: {'samples': [...], 't_end': "
            f"ms, 't_start': ms or null}}): {e}") from None


def _validate_fit_variables(ds: xr.Dataset) -> None:
    """What fitting needs from a dataset (a subset of :func:`validate_dataset`)."""
    missing = [v for v in FIT_VARIABLES if v not in ds.variables]
    if missing:
        raise ValueError(
            f"dataset is missing variable(s) {missing}; fitting needs {list(FIT_VARIABLES)}"
        )
    for c in ("split", "pacing_site", "time"):
        if c not in ds.coords:
            raise ValueError(f"dataset is missing coordinate {c!r}")
    for a in ("t_train", "region_names", "pacing_sites"):
        if a not in ds.attrs:
            raise ValueError(f"dataset is missing attribute {a!r}")
    if ds["observed"].dims != ("sample", "time", "node"):
        raise ValueError(f"observed must have dims (sample, time, node); got {ds['observed'].dims}")
    bad_split = set(np.asarray(ds["split"].values).tolist()) - {"train", "val", "test"}
    if bad_split:
        raise ValueError(f"split labels must be train/val/test; found {sorted(bad_split)}")
    t = np.asarray(ds["time"].values)
    if t.size < 2 or np.any(np.diff(t) <= 0):
        raise ValueError("time must be strictly increasing with at least 2 samples")
    if ds.sizes["node"] != ds["geom_vertices"].shape[0]:
        raise ValueError("geometry node count differs from the data's node dimension")
    obs = np.asarray(ds["observed"].values)
    bad = np.where(~np.all(np.isfinite(obs.reshape(obs.shape[0], -1)), axis=1))[0]
    if bad.size:
        raise ValueError(
            f"observed has NaN/inf values in sample(s) {bad.tolist()} "
            f"(pacing sites {[str(x) for x in np.asarray(ds['pacing_site'].values)[bad]]})"
        )
    for a in ("region_names", "pacing_sites"):
        try:
            json.loads(ds.attrs[a])
        except (TypeError, ValueError):
            raise ValueError(f"attribute {a!r} is not valid JSON") from None


def _same_geometry(geometry: Geometry, stored: Geometry) -> Geometry:
    if geometry.n_nodes != stored.n_nodes:
        raise ValueError(
            f"geometry mismatch: the geometry has {geometry.n_nodes} nodes, the dataset "
            f"{stored.n_nodes}"
        )
    same = (
        np.allclose(np.asarray(geometry.vertices), np.asarray(stored.vertices), atol=1e-6)
        and np.asarray(geometry.edges).shape == np.asarray(stored.edges).shape
        and np.array_equal(np.asarray(geometry.edges), np.asarray(stored.edges))
        and np.allclose(np.asarray(geometry.edge_weights), np.asarray(stored.edge_weights),
                        rtol=1e-5)
    )
    if not same:
        raise ValueError(
            "geometry mismatch: the given geometry's vertices/edges/weights differ from the "
            "dataset's (geom_* variables); fit on geometry_from_dataset(ds) or pass none"
        )
    return geometry


def _stacked_stimuli_np(ds: xr.Dataset, geometry: Geometry) -> Stimulus:
    """:func:`stacked_stimuli` built on the host (no XLA computation): each sample's
    stimulus is checked by :meth:`Stimulus.custom`, then padded like
    :meth:`Stimulus.padded` and stacked with NumPy."""
    stims = [stimulus_from_dataset(ds, i, geometry) for i in range(ds.sizes["sample"])]
    n = max([s.n_pulses for s in stims] + [1])
    onsets = []
    for s in stims:
        on = np.asarray(s.onsets, dtype=np.float32)
        extra = (np.float32(_FAR) + np.float32(float(s.duration) + 1.0)
                 * np.arange(n - on.size, dtype=np.float32))
        onsets.append(np.concatenate([on, extra.astype(np.float32)]))
    stacked = (
        jax.device_put(np.stack([np.asarray(s.sites) for s in stims])),
        jax.device_put(np.stack([np.asarray(s.amplitude) for s in stims])),
        jax.device_put(np.stack([np.asarray(s.duration) for s in stims])),
        jax.device_put(np.stack(onsets)),
    )
    # tree_at, not the constructor: the fields carry a leading sample axis here
    return eqx.tree_at(lambda s: (s.sites, s.amplitude, s.duration, s.onsets), stims[0], stacked)
