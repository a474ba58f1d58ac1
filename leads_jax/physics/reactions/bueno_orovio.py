"""Bueno-Orovio / Cherry / Fenton minimal ventricular model (time in ms), EPI set."""

from __future__ import annotations

from typing import ClassVar

import jax.numpy as jnp

from ..._custom_types import Array, Float
from ._base import AbstractReactionModel, ParamSpec, smooth_heaviside

_SRC = "Bueno-Orovio, Cherry & Fenton 2008, Table 1 (EPI set)"


def _tanh_step(x, k):
    return 0.5 * (1.0 + jnp.tanh(k * x))


class BuenoOrovio(AbstractReactionModel):
    r"""Minimal ventricular (MV) model of human epicardial action potentials.

    $$\frac{du}{dt} = -(J_{fi} + J_{so} + J_{si}),$$
    $$J_{fi} = -v\,H(u-\theta_v)(u-\theta_v)(u_u-u)/\tau_{fi},\quad
      J_{so} = (u-u_o)(1-H(u-\theta_w))/\tau_o + H(u-\theta_w)/\tau_{so},\quad
      J_{si} = -H(u-\theta_w)\,w\,s/\tau_{si},$$
    $$\dot v = (1-H(u-\theta_v))(v_\infty-v)/\tau_v^- - H(u-\theta_v)\,v/\tau_v^+,\quad
      \dot w = (1-H(u-\theta_w))(w_\infty-w)/\tau_w^- - H(u-\theta_w)\,w/\tau_w^+,$$
    $$\dot s = \big((1+\tanh(k_s(u-u_s)))/2 - s\big)/\tau_s,$$

    with $\tau_v^- = \tau_{v1}^-$ below $\theta_v^-$ and $\tau_{v2}^-$ above;
    $\tau_w^- = \tau_{w1}^- + (\tau_{w2}^- - \tau_{w1}^-)(1+\tanh(k_w^-(u-u_w^-)))/2$;
    $\tau_{so} = \tau_{so1} + (\tau_{so2}-\tau_{so1})(1+\tanh(k_{so}(u-u_{so})))/2$;
    $\tau_s = \tau_{s1}$ below $\theta_w$ and $\tau_{s2}$ above; $\tau_o = \tau_{o1}$
    below $\theta_o$ and $\tau_{o2}$ above; $v_\infty = 1$ below $\theta_v^-$ and 0
    above; $w_\infty = 1 - u/\tau_{w\infty}$ below $\theta_o$ and $w_\infty^*$ above.

    Every Heaviside $H$ is the smooth surrogate $\sigma(k_H x)$ with steepness
    $k_H = 2000$ (1%-99% transition over 0.0046 in $u$; steep because
    $\theta_o = \theta_v^- = 0.006$ sit just above rest, where a wider surrogate would
    shift the resting gates). The gates $v, w, s$ are linear in themselves and are
    exposed as $(g_\infty, \tau)$ for Rush-Larsen.

    Observed potential $V_m = -84 + 85.7\,u$ mV (the paper's rescaling).
    Stiff: $\tau_{fi} = 0.11$ ms bounds the explicit step (see ``stable_dt``).

    **Reference:** A. Bueno-Orovio, E. M. Cherry and F. H. Fenton, "Minimal model for
    human ventricular action potentials in tissue", J. Theor. Biol. 253(3):544-560,
    2008.
    """

    u_o: Float[Array, "*node"]
    u_u: Float[Array, "*node"]
    theta_v: Float[Array, "*node"]
    theta_w: Float[Array, "*node"]
    theta_v_minus: Float[Array, "*node"]
    theta_o: Float[Array, "*node"]
    tau_v1_minus: Float[Array, "*node"]
    tau_v2_minus: Float[Array, "*node"]
    tau_v_plus: Float[Array, "*node"]
    tau_w1_minus: Float[Array, "*node"]
    tau_w2_minus: Float[Array, "*node"]
    k_w_minus: Float[Array, "*node"]
    u_w_minus: Float[Array, "*node"]
    tau_w_plus: Float[Array, "*node"]
    tau_fi: Float[Array, "*node"]
    tau_o1: Float[Array, "*node"]
    tau_o2: Float[Array, "*node"]
    tau_so1: Float[Array, "*node"]
    tau_so2: Float[Array, "*node"]
    k_so: Float[Array, "*node"]
    u_so: Float[Array, "*node"]
    tau_s1: Float[Array, "*node"]
    tau_s2: Float[Array, "*node"]
    k_s: Float[Array, "*node"]
    u_s: Float[Array, "*node"]
    tau_si: Float[Array, "*node"]
    tau_w_inf: Float[Array, "*node"]
    w_inf_star: Float[Array, "*node"]

    name: ClassVar[str] = "bueno-orovio"
    state_names: ClassVar[tuple[str, ...]] = ("u", "v", "w", "s")
    gate_states: ClassVar[tuple[str, ...]] = ("v", "w", "s")
    param_specs: ClassVar[tuple[ParamSpec, ...]] = (
        ParamSpec("u_o", 0.0, -0.2, 0.2, "1", "resting potential of the slow outward current",
                  _SRC),
        ParamSpec("u_u", 1.55, 1.0, 2.5, "1",
                  "reversal level of the fast inward current: peak of the upstroke", _SRC),
        ParamSpec("theta_v", 0.3, 0.05, 0.6, "1",
                  "activation threshold of the fast inward current", _SRC),
        ParamSpec("theta_w", 0.13, 0.02, 0.5, "1",
                  "threshold of the slow currents (end of repolarisation)", _SRC),
        ParamSpec("theta_v_minus", 0.006, 0.0005, 0.2, "1",
                  "threshold selecting the fast gate's recovery time and its v_inf", _SRC),
        ParamSpec("theta_o", 0.006, 0.0005, 0.2, "1",
                  "threshold of the resting outward time constant and w_inf", _SRC),
        ParamSpec("tau_v1_minus", 60.0, 1.0, 5000.0, "ms",
                  "recovery time of the fast gate v below theta_v_minus", _SRC),
        ParamSpec("tau_v2_minus", 1150.0, 10.0, 10000.0, "ms",
                  "recovery time of the fast gate v above theta_v_minus "
                  "(conduction-velocity restitution)", _SRC),
        ParamSpec("tau_v_plus", 1.4506, 0.1, 20.0, "ms",
                  "inactivation time of the fast gate v during the upstroke", _SRC),
        ParamSpec("tau_w1_minus", 60.0, 1.0, 1000.0, "ms",
                  "recovery time of the slow gate w near rest", _SRC),
        ParamSpec("tau_w2_minus", 15.0, 1.0, 1000.0, "ms",
                  "recovery time of the slow gate w above u_w_minus", _SRC),
        ParamSpec("k_w_minus", 65.0, 1.0, 500.0, "1",
                  "steepness of the switch between the two w recovery times", _SRC),
        ParamSpec("u_w_minus", 0.03, 0.001, 0.5, "1",
                  "midpoint of the switch between the two w recovery times", _SRC),
        ParamSpec("tau_w_plus", 200.0, 10.0, 2000.0, "ms",
                  "inactivation time of the slow inward gate w: APD", _SRC),
        ParamSpec("tau_fi", 0.11, 0.01, 2.0, "ms",
                  "fast inward (sodium-like) current time constant: upstroke", _SRC),
        ParamSpec("tau_o1", 400.0, 10.0, 5000.0, "ms",
                  "resting outward time constant below theta_o", _SRC),
        ParamSpec("tau_o2", 6.0, 0.5, 200.0, "ms",
                  "outward time constant between theta_o and theta_w: excitability", _SRC),
        ParamSpec("tau_so1", 30.0181, 1.0, 500.0, "ms",
                  "slow outward time constant at low u (late repolarisation)", _SRC),
        ParamSpec("tau_so2", 0.9957, 0.05, 50.0, "ms",
                  "slow outward time constant at high u (early repolarisation, notch)", _SRC),
        ParamSpec("k_so", 2.0458, 0.1, 50.0, "1",
                  "steepness of the tau_so switch", _SRC),
        ParamSpec("u_so", 0.65, 0.1, 1.5, "1", "midpoint of the tau_so switch", _SRC),
        ParamSpec("tau_s1", 2.7342, 0.1, 100.0, "ms",
                  "time constant of the slow inward gate s below theta_w", _SRC),
        ParamSpec("tau_s2", 16.0, 0.5, 200.0, "ms",
                  "time constant of the slow inward gate s above theta_w (dome)", _SRC),
        ParamSpec("k_s", 2.0994, 0.1, 50.0, "1", "steepness of the s activation", _SRC),
        ParamSpec("u_s", 0.9087, 0.1, 1.5, "1", "midpoint of the s activation", _SRC),
        ParamSpec("tau_si", 1.8875, 0.1, 50.0, "ms",
                  "slow inward (calcium-like) current time constant: plateau height", _SRC),
        ParamSpec("tau_w_inf", 0.07, 0.005, 1.0, "1",
                  "slope scale of w_inf below theta_o", _SRC),
        ParamSpec("w_inf_star", 0.94, 0.05, 1.0, "1",
                  "steady state of w above theta_o", _SRC),
    )
    citation: ClassVar[str] = (
        "Bueno-Orovio A, Cherry EM, Fenton FH. Minimal model for human ventricular action "
        "potentials in tissue. J Theor Biol 2008;253(3):544-560."
    )
    state_bounds: ClassVar[tuple[tuple[float, float], ...]] = (
        (-0.5, 2.0), (-0.1, 1.1), (-0.1, 1.1), (-0.1, 1.1)
    )
    # measured (RK4; usable limits per scheme): python -m leads_jax.physics.reactions._stability
    stable_dt: ClassVar[float] = 0.2
    stable_dt_limits: ClassVar[dict[str, float]] = {
        "euler": 0.434, "rk4": 1.33, "rush-larsen": 0.41
    }
    switch_steepness: ClassVar[float] = 2000.0
    v_rest: ClassVar[float] = -84.0
    v_scale: ClassVar[float] = 85.7
    observed_range: ClassVar[tuple[float, float]] = (-90.0, 50.0)
    default_stimulus: ClassVar[tuple[float, float]] = (0.5, 1.0)
    equations: ClassVar[str] = (
        "du/dt = -(J_fi + J_so + J_si) + I_stim\n"
        "J_fi = -v*H(u - theta_v)*(u - theta_v)*(u_u - u)/tau_fi\n"
        "J_so = (u - u_o)*(1 - H(u - theta_w))/tau_o + H(u - theta_w)/tau_so\n"
        "J_si = -H(u - theta_w)*w*s/tau_si\n"
        "dv/dt = (1 - H(u - theta_v))*(v_inf - v)/tau_v_minus - H(u - theta_v)*v/tau_v_plus\n"
        "dw/dt = (1 - H(u - theta_w))*(w_inf - w)/tau_w_minus - H(u - theta_w)*w/tau_w_plus\n"
        "ds/dt = ((1 + tanh(k_s*(u - u_s)))/2 - s)/tau_s\n"
        "tau_v_minus = tau_v1_minus if u < theta_v_minus else tau_v2_minus\n"
        "tau_w_minus = tau_w1_minus"
        " + (tau_w2_minus - tau_w1_minus)*(1 + tanh(k_w_minus*(u - u_w_minus)))/2\n"
        "tau_so = tau_so1 + (tau_so2 - tau_so1)*(1 + tanh(k_so*(u - u_so)))/2\n"
        "tau_s = tau_s1 if u < theta_w else tau_s2;  tau_o = tau_o1 if u < theta_o else tau_o2\n"
        "v_inf = 1 if u < theta_v_minus else 0;  "
        "w_inf = 1 - u/tau_w_inf if u < theta_o else w_inf_star\n"
        "H: smooth step sigmoid(k_H x); the 'if' switches use the same smooth step"
    )

    def rest_state(self, n_nodes: int | None = None) -> Float[Array, " state *node"]:
        """u = 0, v = w = 1 and s at its steady state s_inf(0) (about 0.022; the paper
        starts from s = 0, which relaxes there within ~10 ms without moving u)."""
        shape = () if n_nodes is None else (n_nodes,)
        s_rest = jnp.broadcast_to(_tanh_step(-self.u_s, self.k_s), shape)
        one = jnp.ones(shape)
        return jnp.stack([0.0 * one, one, one, s_rest])

    def _switches(self, u):
        k = self.switch_steepness
        return (
            smooth_heaviside(u - self.theta_v, k),
            smooth_heaviside(u - self.theta_w, k),
            smooth_heaviside(u - self.theta_v_minus, k),
            smooth_heaviside(u - self.theta_o, k),
        )

    def _gates(self, u):
        """Rates alpha, beta of dg/dt = alpha - beta g for v, w, s."""
        h_v, h_w, h_vm, h_o = self._switches(u)
        tau_v_minus = self.tau_v1_minus + h_vm * (self.tau_v2_minus - self.tau_v1_minus)
        tau_w_minus = self.tau_w1_minus + (self.tau_w2_minus - self.tau_w1_minus) * _tanh_step(
            u - self.u_w_minus, self.k_w_minus
        )
        tau_s = self.tau_s1 + h_w * (self.tau_s2 - self.tau_s1)
        v_inf = 1.0 - h_vm
        w_inf = (1.0 - h_o) * (1.0 - u / self.tau_w_inf) + h_o * self.w_inf_star
        s_inf = _tanh_step(u - self.u_s, self.k_s)
        alpha = jnp.stack([
            (1.0 - h_v) * v_inf / tau_v_minus,
            (1.0 - h_w) * w_inf / tau_w_minus,
            s_inf / tau_s,
        ])
        beta = jnp.stack([
            (1.0 - h_v) / tau_v_minus + h_v / self.tau_v_plus,
            (1.0 - h_w) / tau_w_minus + h_w / self.tau_w_plus,
            1.0 / tau_s,
        ])
        return alpha, beta

    def currents(self, state: Float[Array, " state *node"]):
        """``(J_fi, J_so, J_si)`` in 1/ms (positive = outward)."""
        u, v, w, s = state[0], state[1], state[2], state[3]
        h_v, h_w, _, h_o = self._switches(u)
        tau_o = self.tau_o1 + h_o * (self.tau_o2 - self.tau_o1)
        tau_so = self.tau_so1 + (self.tau_so2 - self.tau_so1) * _tanh_step(
            u - self.u_so, self.k_so
        )
        j_fi = -v * h_v * (u - self.theta_v) * (self.u_u - u) / self.tau_fi
        j_so = (u - self.u_o) * (1.0 - h_w) / tau_o + h_w / tau_so
        j_si = -h_w * w * s / self.tau_si
        return j_fi, j_so, j_si

    def rates(self, t, state: Float[Array, " state *node"]) -> Float[Array, " state *node"]:
        j_fi, j_so, j_si = self.currents(state)
        alpha, beta = self._gates(state[0])
        dg = alpha - beta * state[1:]
        return jnp.concatenate([(-(j_fi + j_so + j_si))[None], dg])

    def gate_inf_tau(self, state: Float[Array, " state *node"]):
        alpha, beta = self._gates(state[0])
        return alpha / beta, 1.0 / beta
