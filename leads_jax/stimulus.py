r"""Stimulus protocols: where, how strong, how long, and when.

A :class:`Stimulus` adds ``I_stim(t) = amplitude * sites * [t in any pulse]`` to the
voltage-like state equation of the reaction model (units: voltage-like state per
ms, e.g. ``u/ms`` for Aliev-Panfilov), where ``sites`` is a per-node weight in
[0, 1] and pulse ``k`` is the half-open interval ``[onsets[k], onsets[k] + duration)``
(ms). :meth:`Stimulus.jump_times` returns every pulse onset and offset so an
adaptive solver (diffrax ``jump_ts``) steps exactly onto them and cannot skip a
pulse.

Protocols:

- :meth:`Stimulus.single` -- one pulse at a pacing site.
- :meth:`Stimulus.train` -- ``n`` pulses every ``period`` ms.
- :meth:`Stimulus.s1s2` -- ``n_s1`` conditioning S1 pulses every ``s1_period`` ms
  and one premature S2 pulse ``s2_interval`` ms after the last S1 (restitution:
  what tells Aliev-Panfilov and FitzHugh-Nagumo apart).
- :meth:`Stimulus.none` -- no stimulus (e.g. an initial-condition experiment).

Sites are pacing-site names of the geometry (``geometry.pacing_site_names``), node
indices, or a list of either (stimulated together). Unknown names and off-mesh
indices raise ``ValueError`` (from :meth:`Geometry.pacing_site`).

Defaults (``amplitude=0.5`` per ms for ``duration=2`` ms, i.e. a unit charge of the
voltage-like state) are protocol constants, not model parameters. With the dataset
generator's default conductivity (:func:`leads_jax.datasets.default_conductivity`)
they start a propagating wave in every catalog model from the cable ends, the sheet
borders and the ventricle's pacing patches; FitzHugh-Nagumo (the least excitable)
can fail from an interior 3-node cable patch -- the dataset generator then warns.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from ._custom_types import Array, Float
from .geometry import Geometry

__all__ = ["Stimulus", "site_weights", "site_label", "describe_protocol"]

DEFAULT_AMPLITUDE = 0.5
DEFAULT_DURATION = 2.0
_FAR = 1e9  # ms; onsets of parked (padding) pulses


def site_weights(geometry: Geometry, site) -> np.ndarray:
    """Per-node weights (0/1) of one site or a list of sites (names or node indices)."""
    w = np.zeros(geometry.n_nodes)
    if isinstance(site, str) or np.isscalar(site):
        sites = [site]
    elif isinstance(site, Sequence) and any(isinstance(s, str) for s in site):
        sites = list(site)
    else:
        sites = [site]
    if len(sites) == 0:
        raise ValueError("stimulus site list is empty")
    for s in sites:
        w[list(geometry.pacing_site(s))] = 1.0
    return w


def _check_scalar(x, what, *, positive=False, nonneg=False) -> float:
    try:
        x = float(x)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number; got {x!r}") from None
    if not np.isfinite(x):
        raise ValueError(f"{what} must be finite; got {x}")
    if positive and x <= 0:
        raise ValueError(f"{what} must be > 0; got {x}")
    if nonneg and x < 0:
        raise ValueError(f"{what} must be >= 0; got {x}")
    return x


class Stimulus(eqx.Module):
    """Pulsed stimulus current; see the module docstring.

    Fields (all arrays, so stimuli at different sites or times share one compilation):
    ``sites`` (node weights in [0, 1]), ``amplitude`` (per ms), ``duration`` (ms),
    ``onsets`` (ms, sorted, pulses do not overlap). Stimuli with the same number of
    pulses stack (``jax.tree.map(jnp.stack, ...)``) for ``vmap``; :meth:`padded` makes
    the numbers equal. The constructors' site name and protocol description are kept
    off the pytree: see :func:`site_label` and :func:`describe_protocol`.
    """

    sites: Float[Array, " node"]
    amplitude: Float[Array, ""]
    duration: Float[Array, ""]
    onsets: Float[Array, " pulse"]

    # -- evaluation ---------------------------------------------------------------
    def active(self, t) -> Float[Array, ""]:
        """1.0 while a pulse is on at time ``t`` (ms), else 0.0."""
        on = (t >= self.onsets) & (t < self.onsets + self.duration)
        return jnp.any(on).astype(self.sites.dtype)

    def current(self, t) -> Float[Array, " node"]:
        """Stimulus term of the voltage-like equation at time ``t`` (ms), per node."""
        return self.amplitude * self.active(t) * self.sites

    def jump_times(self) -> Float[Array, " jump"]:
        """Sorted pulse onsets and offsets (ms), for diffrax ``jump_ts``."""
        return jnp.sort(jnp.concatenate([self.onsets, self.onsets + self.duration]))

    @property
    def n_pulses(self) -> int:
        return int(self.onsets.shape[0])

    @property
    def end_time(self) -> float:
        """Offset of the last real pulse (ms; parked padding pulses ignored); 0 without."""
        on = np.asarray(self.onsets)
        on = on[on < _FAR]
        if on.size == 0:
            return 0.0
        return float(on.max() + float(self.duration))

    def padded(self, n_pulses: int) -> "Stimulus":
        """The same stimulus with ``n_pulses`` onsets: extra pulses are parked far beyond
        any simulation (1e9 ms onwards), so they never fire."""
        k = self.n_pulses
        if n_pulses < k:
            raise ValueError(f"cannot pad {k} pulses down to {n_pulses}")
        extra = _FAR + (float(self.duration) + 1.0) * jnp.arange(n_pulses - k)
        return Stimulus(
            self.sites,
            self.amplitude,
            self.duration,
            jnp.concatenate([self.onsets, extra.astype(self.onsets.dtype)]),
        )

    def to_dict(self, *, site_label: str = "", protocol: str = "custom") -> dict[str, Any]:
        """JSON-able description (the site as a node list; inverse: :meth:`from_dict`);
        pulses parked by :meth:`padded` are dropped."""
        on = np.asarray(self.onsets)
        return {
            "protocol": protocol,
            "site_label": site_label,
            "site_nodes": [int(i) for i in np.nonzero(np.asarray(self.sites))[0]],
            "site_weights": [float(x) for x in np.asarray(self.sites)[np.asarray(self.sites) != 0]],
            "amplitude": float(self.amplitude),
            "duration": float(self.duration),
            "onsets": [float(x) for x in on[on < _FAR]],
        }

    @classmethod
    def from_dict(cls, geometry: Geometry, d: dict[str, Any]) -> "Stimulus":
        w = np.zeros(geometry.n_nodes)
        nodes = geometry.pacing_site(list(d["site_nodes"])) if d["site_nodes"] else ()
        if nodes:
            w[list(d["site_nodes"])] = d.get("site_weights", [1.0] * len(nodes))
        return cls.custom(
            geometry, w, onsets=d["onsets"], amplitude=d["amplitude"], duration=d["duration"]
        )

    # -- constructors -----------------------------------------------------------------
    @classmethod
    def custom(
        cls,
        geometry: Geometry,
        weights,
        *,
        onsets,
        amplitude=DEFAULT_AMPLITUDE,
        duration=DEFAULT_DURATION,
    ) -> "Stimulus":
        """Arbitrary per-node weights in [0, 1] and a list of onsets (ms)."""
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != (geometry.n_nodes,):
            raise ValueError(
                f"stimulus weights must have shape ({geometry.n_nodes},); got {w.shape}"
            )
        if not np.all(np.isfinite(w)) or np.any(w < 0) or np.any(w > 1):
            raise ValueError("stimulus weights must be finite and lie in [0, 1]")
        amplitude = _check_scalar(amplitude, "amplitude")
        duration = _check_scalar(duration, "duration", positive=True)
        on = np.atleast_1d(np.asarray(onsets, dtype=np.float64))
        if on.ndim != 1:
            raise ValueError(f"onsets must be a 1-D list of times (ms); got shape {on.shape}")
        if not np.all(np.isfinite(on)):
            raise ValueError("onsets must be finite")
        if np.any(on < 0):
            raise ValueError(f"onsets must be >= 0 ms; got {on.min()}")
        if np.any(np.diff(on) < 0):
            raise ValueError("onsets must be sorted (increasing)")
        if np.any(np.diff(on) < duration):
            k = int(np.argmax(np.diff(on) < duration))
            raise ValueError(
                f"pulses overlap: onset {on[k + 1]} ms starts before the pulse at {on[k]} ms "
                f"ends (duration {duration} ms)"
            )
        return cls(
            sites=jnp.asarray(w, dtype=float),
            amplitude=jnp.asarray(amplitude, dtype=float),
            duration=jnp.asarray(duration, dtype=float),
            onsets=jnp.asarray(on, dtype=float),
        )

    @classmethod
    def none(cls, geometry: Geometry) -> "Stimulus":
        """No stimulus (zero weights, no pulses)."""
        return cls.custom(geometry, np.zeros(geometry.n_nodes), onsets=np.zeros(0), amplitude=0.0)

    @classmethod
    def single(
        cls,
        geometry: Geometry,
        site="left",
        *,
        onset: float = 0.0,
        amplitude: float = DEFAULT_AMPLITUDE,
        duration: float = DEFAULT_DURATION,
    ) -> "Stimulus":
        """One pulse at ``site`` starting at ``onset`` ms."""
        onset = _check_scalar(onset, "onset", nonneg=True)
        return cls.custom(
            geometry,
            site_weights(geometry, site),
            onsets=[onset],
            amplitude=amplitude,
            duration=duration,
        )

    @classmethod
    def train(
        cls,
        geometry: Geometry,
        site="left",
        *,
        period: float,
        n: int,
        start: float = 0.0,
        amplitude: float = DEFAULT_AMPLITUDE,
        duration: float = DEFAULT_DURATION,
    ) -> "Stimulus":
        """``n`` pulses every ``period`` ms from ``start``."""
        period = _check_scalar(period, "period", positive=True)
        start = _check_scalar(start, "start", nonneg=True)
        if int(n) != n or n < 1:
            raise ValueError(f"n (number of pulses) must be a positive integer; got {n}")
        on = start + period * np.arange(int(n))
        return cls.custom(
            geometry,
            site_weights(geometry, site),
            onsets=on,
            amplitude=amplitude,
            duration=duration,
        )

    @classmethod
    def s1s2(
        cls,
        geometry: Geometry,
        site="left",
        *,
        s1_period: float = 400.0,
        n_s1: int = 3,
        s2_interval: float = 250.0,
        start: float = 0.0,
        amplitude: float = DEFAULT_AMPLITUDE,
        duration: float = DEFAULT_DURATION,
    ) -> "Stimulus":
        """S1-S2 restitution protocol: ``n_s1`` S1 pulses every ``s1_period`` ms, then S2
        ``s2_interval`` ms after the last S1 (all at ``site``)."""
        s1_period = _check_scalar(s1_period, "s1_period", positive=True)
        s2_interval = _check_scalar(s2_interval, "s2_interval", positive=True)
        start = _check_scalar(start, "start", nonneg=True)
        if int(n_s1) != n_s1 or n_s1 < 1:
            raise ValueError(f"n_s1 must be a positive integer; got {n_s1}")
        s1 = start + s1_period * np.arange(int(n_s1))
        on = np.append(s1, s1[-1] + s2_interval)
        return cls.custom(
            geometry,
            site_weights(geometry, site),
            onsets=on,
            amplitude=amplitude,
            duration=duration,
        )


def describe_protocol(kind: str, **kw) -> str:
    """Short text of a protocol, e.g. ``s1s2(400ms x3, s2 250ms)``."""
    if kind == "s1s2":
        return (
            f"s1s2({float(kw.get('s1_period', 400.0)):g}ms x{int(kw.get('n_s1', 3))}, "
            f"s2 {float(kw.get('s2_interval', 250.0)):g}ms)"
        )
    if kind == "train":
        return f"train({float(kw.get('period', 300.0)):g}ms x{int(kw.get('n', 2))})"
    return kind


def site_label(site) -> str:
    """Short text of a site argument (a name, names joined by '+', or node indices)."""
    return _label(site)


def _label(site) -> str:
    if isinstance(site, str):
        return site
    if isinstance(site, Sequence) and all(isinstance(s, str) for s in site):
        return "+".join(site)
    arr = np.atleast_1d(np.asarray(site))
    if arr.size <= 4:
        return "nodes:" + ",".join(str(int(i)) for i in arr)
    return f"nodes:{int(arr[0])}..({arr.size})"
