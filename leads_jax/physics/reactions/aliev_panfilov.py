"""Aliev-Panfilov two-variable model of cardiac excitation."""

from __future__ import annotations

from typing import ClassVar

import jax.numpy as jnp

from ..._custom_types import Array, Float
from ._base import AbstractReactionModel, ParamSpec


class AlievPanfilov(AbstractReactionModel):
    r"""Aliev-Panfilov model (dimensionless u, v; time scale in ms per unit).

    $$\frac{du}{d\tau} = -k u (u - a)(u - 1) - u v, \qquad
      \frac{dv}{d\tau} = \Big(\epsilon_0 + \frac{\mu_1 v}{\mu_2 + u}\Big)
                          \big(-v - k u (u - a - 1)\big)$$

    with $t_{ms} = T\,\tau$, $T \approx 12.9$ ms per model unit. Observed potential
    $V_m = 100 u - 80$ mV (the paper's scaling).

    **Reference:** R. R. Aliev and A. V. Panfilov, "A simple two-variable model of
    cardiac excitation", Chaos, Solitons & Fractals 7(3):293-301, 1996.
    """

    a: Float[Array, "*node"]
    k: Float[Array, "*node"]
    eps0: Float[Array, "*node"]
    mu1: Float[Array, "*node"]
    mu2: Float[Array, "*node"]
    time_scale: Float[Array, "*node"]

    name: ClassVar[str] = "aliev-panfilov"
    state_names: ClassVar[tuple[str, ...]] = ("u", "v")
    param_specs: ClassVar[tuple[ParamSpec, ...]] = (
        ParamSpec("a", 0.15, 0.0, 0.5, "1", "excitation threshold", "Aliev & Panfilov 1996"),
        ParamSpec("k", 8.0, 0.5, 30.0, "1", "strength of the fast (cubic) ionic current",
                  "Aliev & Panfilov 1996"),
        ParamSpec("eps0", 0.002, 1e-4, 0.2, "1",
                  "baseline recovery rate (sets the plateau and APD)", "Aliev & Panfilov 1996"),
        ParamSpec("mu1", 0.2, 1e-3, 2.0, "1", "recovery-rate feedback gain (restitution)",
                  "Aliev & Panfilov 1996"),
        ParamSpec("mu2", 0.3, 1e-3, 2.0, "1", "recovery-rate feedback offset (restitution)",
                  "Aliev & Panfilov 1996"),
        ParamSpec("time_scale", 12.9, 1.0, 50.0, "ms", "milliseconds per model time unit",
                  "Aliev & Panfilov 1996 (t_ms = 12.9 t_AU)"),
    )
    citation: ClassVar[str] = (
        "Aliev RR, Panfilov AV. A simple two-variable model of cardiac excitation. "
        "Chaos Solitons Fractals 1996;7(3):293-301."
    )
    state_bounds: ClassVar[tuple[tuple[float, float], ...]] = ((-0.5, 1.5), (-0.5, 5.0))
    # measured (RK4; usable limits per scheme): python -m leads_jax.physics.reactions._stability
    stable_dt: ClassVar[float] = 1.0
    stable_dt_limits: ClassVar[dict[str, float]] = {
        "euler": 4.51, "rk4": 5.58, "rush-larsen": 4.51
    }
    v_rest: ClassVar[float] = -80.0
    v_scale: ClassVar[float] = 100.0
    observed_range: ClassVar[tuple[float, float]] = (-85.0, 30.0)
    default_stimulus: ClassVar[tuple[float, float]] = (0.5, 2.0)
    equations: ClassVar[str] = (
        "du/dt = (-k*u*(u - a)*(u - 1) - u*v) / time_scale + I_stim\n"
        "dv/dt = (eps0 + mu1*v/(mu2 + u)) * (-v - k*u*(u - a - 1)) / time_scale"
    )

    def rates(self, t, state):
        u, v = state[0], state[1]
        du = -self.k * u * (u - self.a) * (u - 1.0) - u * v
        eps = self.eps0 + self.mu1 * v / (self.mu2 + u)
        dv = eps * (-v - self.k * u * (u - self.a - 1.0))
        return jnp.stack([du, dv]) / self.time_scale
