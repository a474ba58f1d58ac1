"""Mitchell-Schaeffer two-current model (time in ms)."""

from __future__ import annotations

from typing import ClassVar

import jax.numpy as jnp

from ..._custom_types import Array, Float
from ._base import AbstractReactionModel, ParamSpec, smooth_heaviside

_SRC = "Mitchell & Schaeffer 2003"


class MitchellSchaeffer(AbstractReactionModel):
    r"""Mitchell-Schaeffer model: one inward and one outward current, one gate.

    $$\frac{du}{dt} = \frac{h\,u^2 (1 - u)}{\tau_{in}} - \frac{u}{\tau_{out}}, \qquad
      \frac{dh}{dt} = \begin{cases} (1 - h)/\tau_{open} & u < u_{gate} \\
                                    -h/\tau_{close} & u \ge u_{gate} \end{cases}$$

    The switch at $u_{gate}$ is the smooth surrogate
    $H(u - u_{gate}) \approx \sigma(k (u - u_{gate}))$ with steepness $k = 200$
    (1%-99% transition over 0.046 in $u$), so
    $dh/dt = (1 - H)(1 - h)/\tau_{open} - H h/\tau_{close}$: a gate with
    $h_\infty = ((1-H)/\tau_{open}) / ((1-H)/\tau_{open} + H/\tau_{close})$ and
    $1/\tau_h = (1-H)/\tau_{open} + H/\tau_{close}$ (integrated exactly by
    Rush-Larsen).

    The paper's asymptotics ($\tau_{in} \ll \tau_{out}$) give the maximal action
    potential duration $APD_{max} \approx \tau_{close}\,\ln(\tau_{out} / (4 \tau_{in}))$
    (the time the gate takes to close from 1 to $h_{min} = 4 \tau_{in}/\tau_{out}$),
    241 ms at the defaults, which the tests check. Observed potential
    $V_m = -85 + 100\,u$ mV (the paper is dimensionless; this project's choice).

    **Reference:** C. C. Mitchell and D. G. Schaeffer, "A two-current model for the
    dynamics of cardiac membrane", Bull. Math. Biol. 65(5):767-793, 2003.
    """

    tau_in: Float[Array, "*node"]
    tau_out: Float[Array, "*node"]
    tau_open: Float[Array, "*node"]
    tau_close: Float[Array, "*node"]
    u_gate: Float[Array, "*node"]

    name: ClassVar[str] = "mitchell-schaeffer"
    state_names: ClassVar[tuple[str, ...]] = ("u", "h")
    gate_states: ClassVar[tuple[str, ...]] = ("h",)
    param_specs: ClassVar[tuple[ParamSpec, ...]] = (
        ParamSpec("tau_in", 0.3, 0.03, 3.0, "ms",
                  "time constant of the inward (depolarising) current: upstroke speed", _SRC),
        ParamSpec("tau_out", 6.0, 0.5, 60.0, "ms",
                  "time constant of the outward (repolarising) current", _SRC),
        ParamSpec("tau_open", 120.0, 5.0, 1000.0, "ms",
                  "recovery (reopening) time of the inward-current gate: restitution", _SRC),
        ParamSpec("tau_close", 150.0, 5.0, 1000.0, "ms",
                  "closing time of the gate during the action potential: sets APD", _SRC),
        ParamSpec("u_gate", 0.13, 0.01, 0.5, "1",
                  "voltage threshold at which the gate switches from opening to closing",
                  _SRC),
    )
    citation: ClassVar[str] = (
        "Mitchell CC, Schaeffer DG. A two-current model for the dynamics of cardiac "
        "membrane. Bull Math Biol 2003;65(5):767-793."
    )
    state_bounds: ClassVar[tuple[tuple[float, float], ...]] = ((-0.5, 1.5), (-0.1, 1.1))
    # measured (RK4; usable limits per scheme): python -m leads_jax.physics.reactions._stability
    stable_dt: ClassVar[float] = 0.5
    stable_dt_limits: ClassVar[dict[str, float]] = {
        "euler": 1.1, "rk4": 1.62, "rush-larsen": 1.1
    }
    switch_steepness: ClassVar[float] = 200.0
    v_rest: ClassVar[float] = -85.0
    v_scale: ClassVar[float] = 100.0
    observed_range: ClassVar[tuple[float, float]] = (-90.0, 15.0)
    default_stimulus: ClassVar[tuple[float, float]] = (0.5, 1.0)
    equations: ClassVar[str] = (
        "du/dt = h*u^2*(1 - u)/tau_in - u/tau_out + I_stim\n"
        "dh/dt = (1 - H)*(1 - h)/tau_open - H*h/tau_close,  H = H(u - u_gate) (smooth step)"
    )

    def rest_state(self, n_nodes: int | None = None) -> Float[Array, " state *node"]:
        rest = jnp.zeros((2,) + (() if n_nodes is None else (n_nodes,)))
        return rest.at[1].set(1.0)

    def _gate(self, u):
        H = smooth_heaviside(u - self.u_gate, self.switch_steepness)
        alpha = (1.0 - H) / self.tau_open
        beta = alpha + H / self.tau_close
        return alpha, beta

    def rates(self, t, state: Float[Array, " state *node"]) -> Float[Array, " state *node"]:
        u, h = state[0], state[1]
        du = h * u**2 * (1.0 - u) / self.tau_in - u / self.tau_out
        alpha, beta = self._gate(u)
        dh = alpha - beta * h
        return jnp.stack([du, dh])

    def gate_inf_tau(self, state: Float[Array, " state *node"]):
        alpha, beta = self._gate(state[0])
        return (alpha / beta)[None], (1.0 / beta)[None]
