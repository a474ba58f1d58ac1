"""FitzHugh-Nagumo model in the Rogers-McCulloch cardiac form (scaled, time in ms)."""

from __future__ import annotations

from typing import ClassVar

import jax.numpy as jnp

from ..._custom_types import Array, Float
from ._base import AbstractReactionModel, ParamSpec

_SRC = "Rogers & McCulloch 1994, scaled form as tabulated by Clayton et al. 2011"


class FitzHughNagumo(AbstractReactionModel):
    r"""FitzHugh-Nagumo excitation in the Rogers-McCulloch cardiac form.

    $$\frac{du}{dt} = c_1\,u\,(u - a)(1 - u) - c_2\,u\,v, \qquad
      \frac{dv}{dt} = b\,(u - c_3\,v)$$

    with dimensionless $u \in [0, 1]$, $t$ in ms. The recovery term $-c_2 u v$
    (instead of FitzHugh's $-v$) is Rogers and McCulloch's change that removes the
    hyperpolarisation after the action potential. Observed potential
    $V_m = -85 + 125\,u$ mV (rest -85 mV, peak 40 mV).

    The fast subsystem ($v = 0$) is the Nagumo (bistable cubic) equation; on a cable
    $u_t = D u_{xx} + c_1 u (u-a)(1-u)$ its front travels at
    $\sqrt{c_1 D / 2}\,(1 - 2a)$, which the tests check.

    **Reference:** J. M. Rogers and A. D. McCulloch, "A collocation-Galerkin finite
    element model of cardiac action potential propagation", IEEE Trans. Biomed.
    Eng. 41(8):743-757, 1994. Scaled parameter set: R. H. Clayton et al., "Models of
    cardiac tissue electrophysiology: progress, challenges and open questions",
    Prog. Biophys. Mol. Biol. 104:22-48, 2011.
    """

    a: Float[Array, "*node"]
    b: Float[Array, "*node"]
    c1: Float[Array, "*node"]
    c2: Float[Array, "*node"]
    c3: Float[Array, "*node"]

    name: ClassVar[str] = "fitzhugh-nagumo"
    state_names: ClassVar[tuple[str, ...]] = ("u", "v")
    param_specs: ClassVar[tuple[ParamSpec, ...]] = (
        ParamSpec("a", 0.13, 0.0, 0.5, "1", "excitation threshold of the cubic", _SRC),
        ParamSpec("b", 0.013, 1e-4, 0.2, "1/ms",
                  "recovery rate (sets the action potential duration)", _SRC),
        ParamSpec("c1", 0.26, 0.01, 5.0, "1/ms",
                  "strength of the fast (cubic) excitation current (upstroke speed)", _SRC),
        ParamSpec("c2", 0.1, 1e-3, 2.0, "1/ms",
                  "coupling of the recovery variable into the voltage equation "
                  "(repolarising current)", _SRC),
        ParamSpec("c3", 1.0, 0.05, 5.0, "1", "decay of the recovery variable relative to "
                  "its drive (recovery nullcline slope)", _SRC),
    )
    citation: ClassVar[str] = (
        "Rogers JM, McCulloch AD. A collocation-Galerkin finite element model of cardiac "
        "action potential propagation. IEEE Trans Biomed Eng 1994;41(8):743-757."
    )
    state_bounds: ClassVar[tuple[tuple[float, float], ...]] = ((-0.5, 1.5), (-0.5, 3.0))
    # measured (RK4; usable limits per scheme): python -m leads_jax.physics.reactions._stability
    stable_dt: ClassVar[float] = 1.0
    stable_dt_limits: ClassVar[dict[str, float]] = {
        "euler": 4.6, "rk4": 17.8, "rush-larsen": 4.6
    }
    v_rest: ClassVar[float] = -85.0
    v_scale: ClassVar[float] = 125.0
    observed_range: ClassVar[tuple[float, float]] = (-90.0, 45.0)
    default_stimulus: ClassVar[tuple[float, float]] = (0.5, 2.0)
    equations: ClassVar[str] = (
        "du/dt = c1*u*(u - a)*(1 - u) - c2*u*v + I_stim\n"
        "dv/dt = b*(u - c3*v)"
    )

    def rates(self, t, state: Float[Array, " state *node"]) -> Float[Array, " state *node"]:
        u, v = state[0], state[1]
        du = self.c1 * u * (u - self.a) * (1.0 - u) - self.c2 * u * v
        dv = self.b * (u - self.c3 * v)
        return jnp.stack([du, dv])
