r"""Measurements on simulated or recorded potentials: activation, APD, conduction
velocity, and error broken down by state, phase, time window and region.

All extractors take the observed transmembrane potential ``V`` in mV, either as an
``xarray.DataArray`` with dims ``(..., "time", "node")`` (time coordinate in ms) or
as an array with time on axis ``-2`` and node on axis ``-1`` plus ``ts`` (ms). They
return ``xarray`` objects with named dims, units and a plain-language
``description`` attribute, so a reader (human or agent) can reason over them.

Definitions (per node, per beat; all crossings linearly interpolated in time):

- **rest and peak**: ``v_rest`` = minimum of the trace, ``v_peak`` = maximum (per
  node), unless given; amplitude ``A = v_peak - v_rest``.
- **activation time** of a beat: the upward crossing of ``v_rest + activation_level * A``
  (default ``activation_level = 0.5``, i.e. half the amplitude; upstrokes are so
  steep that this equals the max-dV/dt time within a fraction of a ms).
- **APD_x** (default x = 90%): time from the activation to the first downward
  crossing of ``v_rest + (1 - x) A`` after it. A beat that has not repolarised by
  the end of the record gets NaN.
- **conduction velocity** (cm/ms; 1 cm/ms = 10 m/s): ``1 / |grad T|`` of the
  activation-time field ``T``, with the gradient at each node
  from a least-squares fit of ``T_j - T_i = g . (x_j - x_i)`` over its graph
  neighbours (exact for planar waves on any geometry; on a cable it is the
  centred difference).
- **phases** (classified on the reference trace, amplitude-normalised
  ``v = (V - v_rest)/A``): ``upstroke`` where ``dv/dt > upstroke_rate`` (default
  0.05 per ms) and ``v >= 0.05``; otherwise ``plateau`` where ``v >= 0.7``,
  ``repolarisation`` where ``0.1 <= v < 0.7``, ``rest`` where ``v < 0.1``.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import xarray as xr

__all__ = [
    "activation_times",
    "upstroke_times",
    "apd_from_activation",
    "apd90",
    "conduction_velocity",
    "phase_labels",
    "error_breakdown",
    "PHASES",
]

PHASES = ("upstroke", "plateau", "repolarisation", "rest")


# ----------------------------------------------------------------------------------
# input handling
# ----------------------------------------------------------------------------------
def _as_tn(v, ts=None) -> tuple[np.ndarray, np.ndarray, tuple[str, ...], dict]:
    """-> (array [..., time, node], ts, leading dim names, leading coords)."""
    if isinstance(v, xr.DataArray):
        if "time" not in v.dims or "node" not in v.dims:
            raise ValueError(f"expected a DataArray with dims (..., 'time', 'node'); got {v.dims}")
        lead = tuple(d for d in v.dims if d not in ("time", "node"))
        v2 = v.transpose(*lead, "time", "node")
        t = np.asarray(v2["time"].values if ts is None else ts, dtype=np.float64)
        coords = {d: v2[d].values for d in lead if d in v2.coords}
        return np.asarray(v2.values, dtype=np.float64), t, lead, coords
    arr = np.asarray(v, dtype=np.float64)
    if arr.ndim < 2:
        raise ValueError(f"expected an array (..., time, node); got shape {arr.shape}")
    if ts is None:
        raise ValueError("ts (sample times in ms) is required for plain arrays")
    t = np.asarray(ts, dtype=np.float64)
    if t.shape != (arr.shape[-2],):
        raise ValueError(
            f"ts has shape {t.shape} but the time axis (-2) has {arr.shape[-2]} samples"
        )
    if np.any(np.diff(t) <= 0):
        raise ValueError("ts must be strictly increasing")
    lead = tuple(f"dim_{k}" for k in range(arr.ndim - 2))
    return arr, t, lead, {}


def _wrap(values, lead, coords, extra_dims, extra_coords=None, name=None, attrs=None):
    dims = tuple(lead) + tuple(extra_dims)
    c = {k: v for k, v in coords.items()}
    if extra_coords:
        c.update(extra_coords)
    return xr.DataArray(values, dims=dims, coords=c, name=name, attrs=attrs or {})


def _crossings(x: np.ndarray, t: np.ndarray, level: np.ndarray, upward: bool):
    """Crossing times of a series set x [series, time] through level [series]:
    returns a list (per series) of interpolated times."""
    lv = level[:, None]
    a, b = x[:, :-1] - lv, x[:, 1:] - lv
    hit = (a < 0) & (b >= 0) if upward else (a > 0) & (b <= 0)
    out = []
    for s in range(x.shape[0]):
        idx = np.nonzero(hit[s])[0]
        if idx.size == 0:
            out.append(np.zeros(0))
            continue
        aa, bb = a[s, idx], b[s, idx]
        frac = aa / (aa - bb)
        out.append(t[idx] + frac * (t[idx + 1] - t[idx]))
    return out


def _rest_peak(x, v_rest, v_peak):
    r = (
        np.nanmin(x, axis=-2)
        if v_rest is None
        else np.broadcast_to(np.asarray(v_rest, dtype=np.float64), x.shape[:-2] + x.shape[-1:])
    )
    p = (
        np.nanmax(x, axis=-2)
        if v_peak is None
        else np.broadcast_to(np.asarray(v_peak, dtype=np.float64), x.shape[:-2] + x.shape[-1:])
    )
    return r, p


# ----------------------------------------------------------------------------------
# activation and APD
# ----------------------------------------------------------------------------------
def upstroke_times(
    v,
    ts=None,
    *,
    activation_level: float = 0.5,
    v_rest=None,
    v_peak=None,
    min_amplitude: float = 10.0,
    max_beats: int | None = None,
) -> xr.DataArray:
    """Every activation (upward crossing of ``v_rest + activation_level * A``) per node,
    dims ``(..., beat, node)`` padded with NaN; nodes with amplitude below
    ``min_amplitude`` mV (never excited) have none."""
    x, t, lead, coords = _as_tn(v, ts)
    rest, peak = _rest_peak(x, v_rest, v_peak)
    amp = peak - rest
    level = rest + activation_level * amp
    xs = np.moveaxis(x, -2, -1).reshape(-1, x.shape[-2])  # [series, time]
    cr = _crossings(np.nan_to_num(xs, nan=-np.inf), t, level.reshape(-1), upward=True)
    ok = amp.reshape(-1) >= min_amplitude
    cr = [c if o else np.zeros(0) for c, o in zip(cr, ok, strict=True)]
    nb = max([len(c) for c in cr] + [1])
    if max_beats is not None:
        nb = max_beats
    out = np.full((len(cr), nb), np.nan)
    for s, c in enumerate(cr):
        out[s, : min(nb, len(c))] = c[:nb]
    out = np.moveaxis(out.reshape(x.shape[:-2] + (x.shape[-1], nb)), -1, -2)
    return _wrap(
        out,
        lead,
        coords,
        ("beat", "node"),
        {"beat": np.arange(nb)},
        "activation_time",
        {
            "units": "ms",
            "description": f"times the potential crossed {activation_level:.0%} of its "
            "amplitude upward "
            "(one per beat; NaN: no such beat / node never excited)",
        },
    )


def activation_times(
    v,
    ts=None,
    *,
    after: float = -np.inf,
    activation_level: float = 0.5,
    v_rest=None,
    v_peak=None,
    min_amplitude: float = 10.0,
) -> xr.DataArray:
    """First activation time (ms) per node at or after ``after`` ms; NaN if none.
    Dims ``(..., node)``."""
    up = upstroke_times(
        v,
        ts,
        activation_level=activation_level,
        v_rest=v_rest,
        v_peak=v_peak,
        min_amplitude=min_amplitude,
    )
    vals = up.values
    masked = np.where(vals >= after, vals, np.nan)
    first = np.full(masked.shape[:-2] + masked.shape[-1:], np.nan)
    anyv = ~np.all(np.isnan(masked), axis=-2)
    first[anyv] = np.nanmin(np.moveaxis(masked, -2, -1)[anyv], axis=-1)
    res = up.isel(beat=0, drop=True).copy(data=first)
    res.name = "activation_time"
    res.attrs = {
        "units": "ms",
        "description": f"first time (at or after {after} ms) the potential crossed "
        f"{activation_level:.0%} of its amplitude upward; NaN: never activated",
    }
    return res


def apd_from_activation(
    v,
    ts=None,
    *,
    repolarisation: float = 0.9,
    activation_level: float = 0.5,
    v_rest=None,
    v_peak=None,
    min_amplitude: float = 10.0,
) -> xr.DataArray:
    """APD at ``repolarisation`` (0.9 -> APD90) per beat and node, dims ``(..., beat, node)``
    in ms: from each ACTIVATION (the upward `activation_level` crossing, 50% of the
    amplitude by default) to the next downward crossing of
    ``v_rest + (1 - repolarisation) * A``. NaN when the beat has not repolarised.

    Not :func:`leads_jax.physics.reactions.level_crossing_apd` (first beat of one trace,
    measured between two crossings of the same level)."""
    if not (0 < repolarisation < 1):
        raise ValueError(f"repolarisation must lie in (0, 1); got {repolarisation}")
    x, t, lead, coords = _as_tn(v, ts)
    rest, peak = _rest_peak(x, v_rest, v_peak)
    up = upstroke_times(
        x,
        t,
        activation_level=activation_level,
        v_rest=rest,
        v_peak=peak,
        min_amplitude=min_amplitude,
    )
    upv = np.moveaxis(up.values, -2, -1).reshape(-1, up.sizes["beat"])  # [series, beat]
    level = (rest + (1 - repolarisation) * (peak - rest)).reshape(-1)
    xs = np.moveaxis(x, -2, -1).reshape(-1, x.shape[-2])
    down = _crossings(np.nan_to_num(xs, nan=np.inf), t, level, upward=False)
    apd = np.full_like(upv, np.nan)
    for s in range(upv.shape[0]):
        d = down[s]
        for b in range(upv.shape[1]):
            a = upv[s, b]
            if np.isnan(a) or d.size == 0:
                continue
            k = np.searchsorted(d, a, side="right")
            if k < d.size:
                nxt = upv[s, b + 1] if b + 1 < upv.shape[1] else np.nan
                if np.isnan(nxt) or d[k] < nxt:
                    apd[s, b] = d[k] - a
    apd = np.moveaxis(apd.reshape(x.shape[:-2] + (x.shape[-1], upv.shape[1])), -1, -2)
    pct = int(round(repolarisation * 100))
    return _wrap(
        apd,
        lead,
        coords,
        ("beat", "node"),
        {"beat": up["beat"].values},
        f"apd{pct}",
        {
            "units": "ms",
            "description": f"action potential duration at {pct}% repolarisation: from the upward "
            f"{activation_level:.0%}-amplitude crossing to the return below "
            f"{100 - pct}% of the amplitude above rest (NaN: not repolarised)",
        },
    )


def apd90(v, ts=None, **kw) -> xr.DataArray:
    """APD at 90% repolarisation from activation; see :func:`apd_from_activation`."""
    return apd_from_activation(v, ts, repolarisation=0.9, **kw)


# ----------------------------------------------------------------------------------
# conduction velocity
# ----------------------------------------------------------------------------------
def conduction_velocity(act, geometry, *, exclude_nodes=None) -> xr.Dataset:
    """Local conduction velocity (cm/ms) from activation times ``act`` (ms) on a geometry.

    ``act``: array or DataArray with last dim ``node`` (leading dims allowed).
    Returns a Dataset with ``cv`` (..., node), its ``median`` and ``mean`` over nodes
    (excluding NaN, ``exclude_nodes``, and nodes whose fit uses a NaN neighbour), and
    the gradient direction ``direction`` (..., node, xyz).
    """
    if isinstance(act, xr.DataArray):
        lead = tuple(d for d in act.dims if d != "node")
        a = np.asarray(act.transpose(*lead, "node").values, dtype=np.float64)
        coords = {d: act[d].values for d in lead if d in act.coords}
    else:
        a = np.asarray(act, dtype=np.float64)
        lead = tuple(f"dim_{k}" for k in range(a.ndim - 1))
        coords = {}
    n = geometry.n_nodes
    if a.shape[-1] != n:
        raise ValueError(f"activation times have {a.shape[-1]} nodes but the geometry has {n}")
    pos = np.asarray(geometry.vertices, dtype=np.float64)
    e = np.asarray(geometry.edges)
    nbrs = [[] for _ in range(n)]
    for i, j in e:
        nbrs[i].append(j)
        nbrs[j].append(i)
    flat = a.reshape(-1, n)
    grad = np.full(flat.shape + (3,), np.nan)
    for i in range(n):
        nb = np.asarray(nbrs[i])
        dx = pos[nb] - pos[i]  # [k, 3]
        pinv = np.linalg.pinv(dx)  # [3, k]
        dt = flat[:, nb] - flat[:, i : i + 1]  # [series, k]
        grad[:, i] = dt @ pinv.T
    gnorm = np.linalg.norm(grad, axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        cv = np.where(gnorm > 0, 1.0 / gnorm, np.inf)
        direction = grad / gnorm[..., None]
    cv = np.where(np.isnan(gnorm), np.nan, cv)
    valid = np.isfinite(cv)
    if exclude_nodes is not None:
        valid[:, list(exclude_nodes)] = False
    cvm = np.where(valid, cv, np.nan)
    with np.errstate(all="ignore"), _quiet():
        med = np.nanmedian(cvm, axis=-1)
        mean = np.nanmean(cvm, axis=-1)
    shape = a.shape
    dims = tuple(lead)
    ds = xr.Dataset(
        {
            "cv": (
                dims + ("node",),
                cv.reshape(shape),
                {
                    "units": "cm/ms",
                    "description": "local conduction velocity 1/|grad T| (1 cm/ms = 10 m/s)",
                },
            ),
            "cv_median": (
                dims,
                med.reshape(shape[:-1]),
                {
                    "units": "cm/ms",
                    "description": "median local conduction velocity over activated nodes",
                },
            ),
            "cv_mean": (dims, mean.reshape(shape[:-1]), {"units": "cm/ms"}),
            "direction": (
                dims + ("node", "xyz"),
                direction.reshape(shape + (3,)),
                {"description": "unit vector along which activation propagates"},
            ),
        },
        coords={**coords, "xyz": ["x", "y", "z"]},
        attrs={
            "description": "conduction velocity from the activation-time gradient "
            "(least squares over each node's neighbours)"
        },
    )
    return ds


class _quiet:
    def __enter__(self):
        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        self._w.__exit__(*exc)


# ----------------------------------------------------------------------------------
# phases and error breakdown
# ----------------------------------------------------------------------------------
def phase_labels(
    v,
    ts=None,
    *,
    upstroke_rate: float = 0.05,
    v_rest=None,
    v_peak=None,
    min_amplitude: float = 10.0,
) -> xr.DataArray:
    """Phase index (0 upstroke, 1 plateau, 2 repolarisation, 3 rest) of every sample,
    dims ``(..., time, node)``; see the module docstring for the rule. Nodes that never
    excite (amplitude < ``min_amplitude`` mV) are ``rest`` throughout."""
    x, t, lead, coords = _as_tn(v, ts)
    rest, peak = _rest_peak(x, v_rest, v_peak)
    amp = (peak - rest)[..., None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        vn = (x - rest[..., None, :]) / np.where(amp > 0, amp, 1.0)
    dv = np.gradient(vn, t, axis=-2) if len(t) > 1 else np.zeros_like(vn)
    lab = np.full(x.shape, 3, dtype=np.int8)
    lab[(vn >= 0.1)] = 2
    lab[(vn >= 0.7)] = 1
    lab[(dv > upstroke_rate) & (vn >= 0.05)] = 0
    lab[np.broadcast_to(amp < min_amplitude, x.shape)] = 3
    return _wrap(
        lab,
        lead,
        coords,
        ("time", "node"),
        {"time": t},
        "phase",
        {"description": "0 upstroke, 1 plateau, 2 repolarisation, 3 rest", "phases": list(PHASES)},
    )


def _rms(err2, mask):
    cnt = mask.sum()
    return float(np.sqrt(err2[mask].mean())) if cnt else np.nan


def error_breakdown(
    pred,
    true,
    ts=None,
    geometry=None,
    *,
    pred_state=None,
    true_state=None,
    state_names=None,
    n_windows: int = 4,
    window_edges=None,
    upstroke_rate: float = 0.05,
) -> xr.Dataset:
    """Root-mean-square error of ``pred`` against ``true`` (both ``(..., time, node)``,
    mV), broken down by phase of the true trace, time window, mesh region (if a
    geometry is given) and state variable (if ``pred_state``/``true_state`` with dims
    ``(..., time, state, node)`` are given). Non-finite predictions are excluded from
    the RMSEs and counted in ``fraction_nonfinite``.
    """
    xp, t, lead, _ = _as_tn(pred, ts)
    xt, _, _, _ = _as_tn(true, None if isinstance(true, xr.DataArray) else t)
    if xp.shape != xt.shape:
        raise ValueError(f"pred and true shapes differ: {xp.shape} vs {xt.shape}")
    finite = np.isfinite(xp) & np.isfinite(xt)
    err2 = np.where(finite, (xp - xt) ** 2, 0.0)
    phase = phase_labels(xt, t, upstroke_rate=upstroke_rate).values
    data: dict[str, Any] = {}
    data["rmse"] = ((), _rms(err2, finite), {"units": "mV", "description": "overall RMSE"})
    data["fraction_nonfinite"] = (
        (),
        float(1 - finite.mean()),
        {"description": "share of predicted samples that are NaN/inf (diverged)"},
    )
    by_phase = [_rms(err2, finite & (phase == k)) for k in range(4)]
    frac_phase = [float((phase == k).mean()) for k in range(4)]
    data["rmse_by_phase"] = (
        ("phase",),
        by_phase,
        {"units": "mV", "description": "RMSE within each phase of the true action potential"},
    )
    data["phase_fraction"] = (
        ("phase",),
        frac_phase,
        {"description": "share of samples in each phase"},
    )
    if window_edges is None:
        window_edges = np.linspace(t[0], t[-1], n_windows + 1)
    we = np.asarray(window_edges, dtype=np.float64)
    tt = np.broadcast_to(t[:, None], xp.shape[-2:])
    by_w = []
    for k in range(len(we) - 1):
        last = k == len(we) - 2
        m_t = (tt >= we[k]) & ((tt <= we[k + 1]) if last else (tt < we[k + 1]))
        by_w.append(_rms(err2, finite & np.broadcast_to(m_t, xp.shape)))
    data["rmse_by_window"] = (
        ("window",),
        by_w,
        {"units": "mV", "description": "RMSE within each time window"},
    )
    coords: dict[str, Any] = {
        "phase": list(PHASES),
        "window": np.arange(len(we) - 1),
        "window_start": ("window", we[:-1]),
        "window_end": ("window", we[1:]),
    }
    if geometry is not None:
        reg = np.asarray(geometry.regions)
        if reg.shape[0] != xp.shape[-1]:
            raise ValueError(f"geometry has {reg.shape[0]} nodes, data {xp.shape[-1]}")
        by_r = [
            _rms(err2, finite & np.broadcast_to(reg == r, xp.shape))
            for r in range(geometry.n_regions)
        ]
        data["rmse_by_region"] = (
            ("region",),
            by_r,
            {"units": "mV", "description": "RMSE within each mesh region"},
        )
        coords["region"] = list(geometry.region_names)
    if pred_state is not None and true_state is not None:
        ps = np.asarray(
            pred_state.values if isinstance(pred_state, xr.DataArray) else pred_state,
            dtype=np.float64,
        )
        ts_ = np.asarray(
            true_state.values if isinstance(true_state, xr.DataArray) else true_state,
            dtype=np.float64,
        )
        if ps.shape != ts_.shape:
            raise ValueError(f"pred_state and true_state shapes differ: {ps.shape} vs {ts_.shape}")
        ns = ps.shape[-2]
        names = list(state_names) if state_names is not None else [f"state_{k}" for k in range(ns)]
        fin = np.isfinite(ps) & np.isfinite(ts_)
        e2 = np.where(fin, (ps - ts_) ** 2, 0.0)
        by_s = [_rms(e2[..., k, :], fin[..., k, :]) for k in range(ns)]
        data["rmse_by_state"] = (
            ("state",),
            by_s,
            {"units": "state units", "description": "RMSE of each state variable (model units)"},
        )
        coords["state"] = names
    return xr.Dataset(
        {k: xr.Variable(v[0], np.asarray(v[1], dtype=np.float64), v[2]) for k, v in data.items()},
        coords=coords,
        attrs={
            "description": "where the prediction misses: RMSE by phase of the true action "
            "potential, by time window, by region and by state",
            "phase_rule": f"upstroke: dv/dt > {upstroke_rate:g} /ms (amplitude-normalised); "
            "plateau: v >= 0.7;"
            " repolarisation: 0.1 <= v < 0.7; rest: v < 0.1",
        },
    )
