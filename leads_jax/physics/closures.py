"""Bounded neural closures: small MLPs that correct one state equation of a reaction model.

Two kinds, both bounded by construction so that every sentence of the grammar stays
interpretable and cannot blow up through its neural part:

* :class:`AdditiveClosure` -- adds ``s * tanh(MLP(x))`` to ``d(target)/dt``, where
  ``x`` is the local state (normalised by the model's state bounds), optionally with the
  mean difference to the node's graph neighbours, and ``s = s_max * sigmoid(raw_scale)``
  is a learnable magnitude capped at ``s_max`` (units: state per ms). Its physical role
  is "unmodelled current/rate of the target equation".
* :class:`GateClosure` -- *replaces* the equation of a gate state ``g`` by
  ``(g_inf(u) - g) / tau(u)`` with ``g_inf = sigmoid(.) in (0, 1)`` and
  ``tau = tau_min + (tau_max - tau_min) * sigmoid(.) > 0`` learnt from the voltage-like
  state ``u``. The relaxation form keeps gates inside ``[0, 1]`` (exactly under a
  Rush-Larsen step, for explicit steps below ``tau_min``).

The MLPs act on ``(feature, node)`` arrays directly (one matmul per layer, no vmap). Their
last layer starts at zero, so a freshly compiled closure contributes exactly nothing and
the hybrid model starts as its physics part (APHYNITY-style: physics explains first).

**References:** Yin Y, Le Guen V, Dona J, et al. "Augmenting physical models with deep
networks for complex dynamics forecasting" (APHYNITY), ICLR 2021. Rush S, Larsen H.
"A practical algorithm for solving dynamic membrane equations", IEEE TBME 1978;25(4):389-392.
"""

from __future__ import annotations

import math
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp

from .._custom_types import Array, Float, PRNGKeyArray

#: Largest admissible cap ``s_max`` of an additive closure (state units per ms). A
#: closure can at most shift a rate by this much; the fast upstroke of the catalog
#: models is of order 1/ms, so 1/ms is a generous but finite bound.
MAX_CLOSURE_RATE = 1.0
#: Admissible range of gate-closure time constants (ms).
MIN_GATE_TAU = 1e-2
MAX_GATE_TAU = 1e4
#: Largest hidden width and depth of a closure or neural-diffusion MLP.
MAX_HIDDEN_WIDTH = 256
MAX_HIDDEN_LAYERS = 4

_ACTIVATIONS = {"tanh": jnp.tanh, "softplus": jax.nn.softplus, "gelu": jax.nn.gelu}


class MLP(eqx.Module):
    """A small multilayer perceptron acting on ``(feature, node)`` arrays.

    Only arrays are leaves (weights and biases), so two MLPs of the same sizes have
    identical tree structures and stack with ``jax.tree.map(jnp.stack, ...)``.

    **Arguments:**

    - `sizes`: layer widths ``(in, hidden..., out)``.
    - `key`: a JAX PRNG key (keyword-only).
    - `activation`: hidden activation, one of ``"tanh"``, ``"softplus"``, ``"gelu"``.
    - `zero_last`: start the last layer at zero (the network outputs exactly zero).
    """

    # Plain `Array`: layer shapes differ, so one jaxtyping dimension name cannot bind them.
    weights: tuple[Array, ...]
    biases: tuple[Array, ...]
    activation: str = eqx.field(static=True)

    def __init__(
        self,
        sizes: tuple[int, ...],
        *,
        key: PRNGKeyArray,
        activation: str = "tanh",
        zero_last: bool = True,
    ):
        if len(sizes) < 2:
            raise ValueError(f"MLP needs at least (in, out) sizes, got {sizes}")
        if activation not in _ACTIVATIONS:
            raise ValueError(
                f"unknown activation {activation!r}; valid: {sorted(_ACTIVATIONS)}"
            )
        keys = jax.random.split(key, len(sizes) - 1)
        weights, biases = [], []
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            last = i == len(sizes) - 2
            # Glorot-uniform: keeps tanh layers out of saturation at initialisation.
            lim = math.sqrt(6.0 / (n_in + n_out))
            w = jax.random.uniform(keys[i], (n_out, n_in), minval=-lim, maxval=lim)
            if last and zero_last:
                w = jnp.zeros_like(w)
            weights.append(w)
            biases.append(jnp.zeros((n_out,)))
        self.weights = tuple(weights)
        self.biases = tuple(biases)
        self.activation = activation

    @property
    def sizes(self) -> tuple[int, ...]:
        return (self.weights[0].shape[1],) + tuple(w.shape[0] for w in self.weights)

    def __call__(self, x: Float[Array, " feature *node"]) -> Float[Array, " out *node"]:
        act = _ACTIVATIONS[self.activation]
        extra = (None,) * (x.ndim - 1)
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            x = jnp.tensordot(w, x, axes=1) + b[(slice(None),) + extra]
            if i < len(self.weights) - 1:
                x = act(x)
        return x


def normalise_state(state, center, scale):
    """Map each state to roughly [-1, 1] using its admissible bounds (data, not trained)."""
    extra = (None,) * (state.ndim - 1)
    return (state - center[(slice(None),) + extra]) / scale[(slice(None),) + extra]


class AbstractClosure(eqx.Module):
    """A neural term attached to one state equation (``target``, an index)."""

    kind: ClassVar[str]
    target: eqx.AbstractVar[int]

    def trainable_filter(self):
        """Pytree of bools: True for leaves an optimiser may update."""
        raise NotImplementedError


class AdditiveClosure(AbstractClosure):
    """``d(target)/dt += s * tanh(MLP(x))`` with ``s = s_max * sigmoid(raw_scale)``.

    **Arguments:**

    - `n_states`: number of states of the reaction model (all of them are inputs).
    - `target`: index of the state equation the closure corrects.
    - `hidden`: hidden widths of the MLP.
    - `max_rate`: the cap ``s_max`` (state units per ms), stored as data.
    - `state_center`, `state_scale`: input normalisation (from the state bounds).
    - `neighbours`: also feed the mean difference of the voltage-like state to the
      node's graph neighbours (normalised like the state).
    - `key`: PRNG key (keyword-only).
    """

    kind: ClassVar[str] = "additive"
    target: int = eqx.field(static=True)
    neighbours: bool = eqx.field(static=True)
    mlp: MLP
    raw_scale: Float[Array, ""]
    max_rate: Float[Array, ""]
    state_center: Float[Array, " state"]
    state_scale: Float[Array, " state"]

    def __init__(
        self,
        n_states: int,
        target: int,
        hidden: tuple[int, ...],
        max_rate: float,
        state_center,
        state_scale,
        *,
        neighbours: bool = False,
        key: PRNGKeyArray,
    ):
        self.target = int(target)
        self.neighbours = bool(neighbours)
        self.mlp = MLP((n_states + int(neighbours),) + tuple(hidden) + (1,), key=key)
        self.raw_scale = jnp.zeros(())
        self.max_rate = jnp.asarray(max_rate, float)
        self.state_center = jnp.asarray(state_center, float)
        self.state_scale = jnp.asarray(state_scale, float)

    @property
    def scale(self):
        """Learnt magnitude ``s_max * sigmoid(raw_scale)`` in state units per ms."""
        return self.max_rate * jax.nn.sigmoid(self.raw_scale)

    def __call__(self, state, neighbour_mean_diff=None):
        """Rate added to the target equation, shape ``(node,)`` (state units per ms)."""
        x = normalise_state(state, self.state_center, self.state_scale)
        if self.neighbours:
            if neighbour_mean_diff is None:
                raise ValueError("this closure reads neighbours: pass neighbour_mean_diff")
            x = jnp.concatenate([x, (neighbour_mean_diff / self.state_scale[0])[None]], 0)
        return self.scale * jnp.tanh(self.mlp(x)[0])

    def trainable_filter(self):
        f = jax.tree.map(lambda _: False, self)
        f = eqx.tree_at(lambda c: c.mlp, f, jax.tree.map(lambda _: True, self.mlp))
        return eqx.tree_at(lambda c: c.raw_scale, f, True)


class GateClosure(AbstractClosure):
    """Replaces ``d(g)/dt`` of a gate state by ``(g_inf(u) - g) / tau(u)``.

    ``g_inf = sigmoid(h_0)``, ``tau = tau_min + (tau_max - tau_min) * sigmoid(h_1)`` with
    ``h = MLP(u_normalised)``; both are bounded, so the gate relaxes toward a value in
    ``(0, 1)`` with a time constant in ``[tau_min, tau_max]`` ms.
    """

    kind: ClassVar[str] = "gate"
    target: int = eqx.field(static=True)
    mlp: MLP
    tau_min: Float[Array, ""]
    tau_max: Float[Array, ""]
    u_center: Float[Array, ""]
    u_scale: Float[Array, ""]

    def __init__(
        self,
        target: int,
        hidden: tuple[int, ...],
        tau_min: float,
        tau_max: float,
        u_center: float,
        u_scale: float,
        *,
        key: PRNGKeyArray,
    ):
        self.target = int(target)
        # Not zero-initialised: a gate closure replaces an equation, it must start as
        # a sensible relaxation (g_inf depends on u from the start).
        self.mlp = MLP((1,) + tuple(hidden) + (2,), key=key, zero_last=False)
        self.tau_min = jnp.asarray(tau_min, float)
        self.tau_max = jnp.asarray(tau_max, float)
        self.u_center = jnp.asarray(u_center, float)
        self.u_scale = jnp.asarray(u_scale, float)

    def inf_tau(self, u: Float[Array, " *node"]):
        """``(g_inf, tau)`` of the gate at voltage-like state `u`, each shaped like `u`."""
        h = self.mlp(((u - self.u_center) / self.u_scale)[None])
        g_inf = jax.nn.sigmoid(h[0])
        tau = self.tau_min + (self.tau_max - self.tau_min) * jax.nn.sigmoid(h[1])
        return g_inf, tau

    def __call__(self, state, neighbour_mean_diff=None):
        """The replacement rate ``(g_inf(u) - g) / tau(u)`` of the target, shape ``(node,)``."""
        g_inf, tau = self.inf_tau(state[0])
        return (g_inf - state[self.target]) / tau

    def trainable_filter(self):
        f = jax.tree.map(lambda _: False, self)
        return eqx.tree_at(lambda c: c.mlp, f, jax.tree.map(lambda _: True, self.mlp))


CLOSURE_KINDS: dict[str, type[AbstractClosure]] = {
    "additive": AdditiveClosure,
    "gate": GateClosure,
}


def closure_metadata() -> dict:
    """JSON-able description of the closure catalog (rendered into the agent's prompt)."""
    return {
        "additive": {
            "form": "d(target)/dt += s * tanh(MLP(x)), s = s_max * sigmoid(raw), s <= s_max",
            "role": "unmodelled current or rate of one state equation",
            "inputs": "local state (normalised by the state bounds); optionally the mean "
            "difference of the voltage-like state to graph neighbours",
            "bounds": {"max_rate": [0.0, MAX_CLOSURE_RATE], "units": "state per ms"},
        },
        "gate": {
            "form": "d(g)/dt = (g_inf(u) - g) / tau(u), g_inf in (0, 1), tau in [tau_min, tau_max]",
            "role": "learnt replacement of a gate (recovery) equation; keeps gates in [0, 1]",
            "inputs": "voltage-like state u",
            "bounds": {"tau_min": MIN_GATE_TAU, "tau_max": MAX_GATE_TAU, "units": "ms"},
        },
    }


__all__ = [
    "AbstractClosure",
    "AdditiveClosure",
    "CLOSURE_KINDS",
    "GateClosure",
    "MAX_CLOSURE_RATE",
    "MAX_GATE_TAU",
    "MAX_HIDDEN_LAYERS",
    "MAX_HIDDEN_WIDTH",
    "MIN_GATE_TAU",
    "MLP",
    "closure_metadata",
    "normalise_state",
]
