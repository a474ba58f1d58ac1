"""Fenton-Karma three-current model (time in ms), MLR-I parameter set."""

from __future__ import annotations

from typing import ClassVar

import jax.numpy as jnp

from ..._custom_types import Array, Float
from ._base import AbstractReactionModel, ParamSpec, smooth_heaviside

_SRC = "Fenton & Karma 1998, Table 1 (MLR-I set)"


class FentonKarma(AbstractReactionModel):
    r"""Fenton-Karma three-current model (fast inward, slow outward, slow inward).

    $$\frac{du}{dt} = -(J_{fi} + J_{so} + J_{si}),$$
    $$J_{fi} = -\frac{v}{\tau_d} p\,(1 - u)(u - u_c), \quad
      J_{so} = \frac{u}{\tau_o}(1 - p) + \frac{p}{\tau_r}, \quad
      J_{si} = -\frac{w}{2\tau_{si}}\big(1 + \tanh(k (u - u_c^{si}))\big),$$
    $$\frac{dv}{dt} = (1 - p)\frac{1 - v}{\tau_v^-(u)} - p\frac{v}{\tau_v^+}, \quad
      \frac{dw}{dt} = (1 - p)\frac{1 - w}{\tau_w^-} - p\frac{w}{\tau_w^+},$$

    with $p = H(u - u_c)$, $q = H(u - u_v)$ and
    $\tau_v^-(u) = q\,\tau_{v1}^- + (1 - q)\,\tau_{v2}^-$. Both Heaviside switches
    are the smooth surrogate $\sigma(k_H x)$ with steepness $k_H = 200$ (1%-99%
    transition over 0.046 in $u$). The gates $v, w$ are linear in themselves, so
    they are exposed as $(g_\infty, \tau)$ for Rush-Larsen.

    Defaults: the MLR-I set (fit to the modified Luo-Rudy I model;
    $\tau_d = C_m / g_{fi} = 1/5.8$ ms). It has a single $\tau_v^-$
    ($\tau_{v1}^- = \tau_{v2}^- = 18.2$ ms), so $u_v$ plays no role at the defaults;
    it is kept so that the other published sets (BR, MBR, GP; Fenton et al. 2002) are
    expressible. Observed potential $V_m = -85 + 100\,u$ mV
    ($V_0 = -85$ mV, $V_{fi} = 15$ mV in the paper).

    Stiff: $\tau_d \approx 0.17$ ms bounds the explicit step (see ``stable_dt``).

    **Reference:** F. Fenton and A. Karma, "Vortex dynamics in three-dimensional
    continuous myocardium with fiber rotation: filament instability and
    fibrillation", Chaos 8(1):20-47, 1998.
    """

    tau_d: Float[Array, "*node"]
    tau_r: Float[Array, "*node"]
    tau_o: Float[Array, "*node"]
    tau_si: Float[Array, "*node"]
    tau_v_plus: Float[Array, "*node"]
    tau_v1_minus: Float[Array, "*node"]
    tau_v2_minus: Float[Array, "*node"]
    tau_w_plus: Float[Array, "*node"]
    tau_w_minus: Float[Array, "*node"]
    u_c: Float[Array, "*node"]
    u_v: Float[Array, "*node"]
    u_c_si: Float[Array, "*node"]
    k: Float[Array, "*node"]

    name: ClassVar[str] = "fenton-karma"
    state_names: ClassVar[tuple[str, ...]] = ("u", "v", "w")
    gate_states: ClassVar[tuple[str, ...]] = ("v", "w")
    param_specs: ClassVar[tuple[ParamSpec, ...]] = (
        ParamSpec("tau_d", 0.172, 0.02, 2.0, "ms",
                  "fast inward (sodium-like) current time constant, C_m/g_fi: upstroke",
                  _SRC),
        ParamSpec("tau_r", 130.0, 5.0, 1000.0, "ms",
                  "slow outward current time constant in the excited state: repolarisation",
                  _SRC),
        ParamSpec("tau_o", 12.5, 0.5, 200.0, "ms",
                  "slow outward current time constant at rest: excitability, resting decay",
                  _SRC),
        ParamSpec("tau_si", 127.0, 5.0, 1000.0, "ms",
                  "slow inward (calcium-like) current time constant: plateau", _SRC),
        ParamSpec("tau_v_plus", 10.0, 0.5, 200.0, "ms",
                  "inactivation time of the fast inward gate v during the action potential",
                  _SRC),
        ParamSpec("tau_v1_minus", 18.2, 1.0, 5000.0, "ms",
                  "recovery time of the fast gate v for u_v < u < u_c "
                  "(conduction-velocity restitution)", _SRC),
        ParamSpec("tau_v2_minus", 18.2, 1.0, 5000.0, "ms",
                  "recovery time of the fast gate v for u < u_v", _SRC),
        ParamSpec("tau_w_plus", 1020.0, 20.0, 5000.0, "ms",
                  "inactivation time of the slow inward gate w during the action "
                  "potential: APD", _SRC),
        ParamSpec("tau_w_minus", 80.0, 5.0, 2000.0, "ms",
                  "recovery time of the slow inward gate w: APD restitution", _SRC),
        ParamSpec("u_c", 0.13, 0.02, 0.5, "1",
                  "excitation threshold switching the fast current and the gates", _SRC),
        ParamSpec("u_v", 0.04, 0.0, 0.3, "1",
                  "threshold selecting tau_v1_minus or tau_v2_minus (no role when equal)",
                  "Fenton & Karma 1998, Table 1 (BR set; absent from MLR-I)"),
        ParamSpec("u_c_si", 0.85, 0.3, 1.2, "1",
                  "activation midpoint of the slow inward current", _SRC),
        ParamSpec("k", 10.0, 1.0, 50.0, "1",
                  "steepness of the slow inward current activation (tanh)", _SRC),
    )
    citation: ClassVar[str] = (
        "Fenton F, Karma A. Vortex dynamics in three-dimensional continuous myocardium "
        "with fiber rotation: filament instability and fibrillation. Chaos "
        "1998;8(1):20-47."
    )
    state_bounds: ClassVar[tuple[tuple[float, float], ...]] = (
        (-0.5, 1.5), (-0.1, 1.1), (-0.1, 1.1)
    )
    # measured (RK4; usable limits per scheme): python -m leads_jax.physics.reactions._stability
    stable_dt: ClassVar[float] = 0.2
    stable_dt_limits: ClassVar[dict[str, float]] = {
        "euler": 0.691, "rk4": 1.12, "rush-larsen": 0.691
    }
    switch_steepness: ClassVar[float] = 200.0
    v_rest: ClassVar[float] = -85.0
    v_scale: ClassVar[float] = 100.0
    observed_range: ClassVar[tuple[float, float]] = (-90.0, 20.0)
    default_stimulus: ClassVar[tuple[float, float]] = (0.5, 1.0)
    equations: ClassVar[str] = (
        "du/dt = -(J_fi + J_so + J_si) + I_stim\n"
        "J_fi = -v*p*(1 - u)*(u - u_c)/tau_d\n"
        "J_so = u*(1 - p)/tau_o + p/tau_r\n"
        "J_si = -w*(1 + tanh(k*(u - u_c_si)))/(2*tau_si)\n"
        "dv/dt = (1 - p)*(1 - v)/tau_v_minus(u) - p*v/tau_v_plus\n"
        "dw/dt = (1 - p)*(1 - w)/tau_w_minus - p*w/tau_w_plus\n"
        "tau_v_minus(u) = q*tau_v1_minus + (1 - q)*tau_v2_minus\n"
        "p = H(u - u_c), q = H(u - u_v) (smooth steps)"
    )

    def rest_state(self, n_nodes: int | None = None) -> Float[Array, " state *node"]:
        rest = jnp.ones((3,) + (() if n_nodes is None else (n_nodes,)))
        return rest.at[0].set(0.0)

    def _gates(self, u):
        """Rates alpha, beta of dg/dt = alpha - beta g for v and w."""
        p = smooth_heaviside(u - self.u_c, self.switch_steepness)
        q = smooth_heaviside(u - self.u_v, self.switch_steepness)
        tau_v_minus = q * self.tau_v1_minus + (1.0 - q) * self.tau_v2_minus
        alpha_v = (1.0 - p) / tau_v_minus
        beta_v = alpha_v + p / self.tau_v_plus
        alpha_w = (1.0 - p) / self.tau_w_minus
        beta_w = alpha_w + p / self.tau_w_plus
        return p, jnp.stack([alpha_v, alpha_w]), jnp.stack([beta_v, beta_w])

    def currents(self, state: Float[Array, " state *node"]):
        """``(J_fi, J_so, J_si)`` in 1/ms (positive = outward)."""
        u, v, w = state[0], state[1], state[2]
        p = smooth_heaviside(u - self.u_c, self.switch_steepness)
        j_fi = -v * p * (1.0 - u) * (u - self.u_c) / self.tau_d
        j_so = u * (1.0 - p) / self.tau_o + p / self.tau_r
        j_si = -w * (1.0 + jnp.tanh(self.k * (u - self.u_c_si))) / (2.0 * self.tau_si)
        return j_fi, j_so, j_si

    def rates(self, t, state: Float[Array, " state *node"]) -> Float[Array, " state *node"]:
        j_fi, j_so, j_si = self.currents(state)
        _, alpha, beta = self._gates(state[0])
        dg = alpha - beta * state[1:]
        return jnp.concatenate([(-(j_fi + j_so + j_si))[None], dg])

    def gate_inf_tau(self, state: Float[Array, " state *node"]):
        _, alpha, beta = self._gates(state[0])
        return alpha / beta, 1.0 / beta
