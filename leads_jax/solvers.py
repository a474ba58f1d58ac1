"""The one table of solvers: what :func:`~leads_jax.simulate.simulate` integrates with
and what :class:`~leads_jax.fit.FitConfig` accepts.

Each entry says whether the method has an embedded error estimate (so it can take
adaptive steps), its order, whether it needs gate states (Rush-Larsen), and the
extent of its stability region on the negative real axis, ``|z|`` with
``z = lambda dt``. The extent bounds a fixed explicit step on a stiff linear mode
(e.g. diffusion: ``dt <= extent / max|lambda|``). The values come from the stability
polynomial of each Butcher tableau (checked in ``tests/test_contract.py``):
Euler and Heun 2, Bogacki-Shampine 3(2) 2.51, classical RK4 2.785, Dormand-Prince
5(4) 3.306, Tsitouras 5(4) 3.50 (Hairer & Wanner, *Solving ODEs II*, IV.2). Rush-Larsen
(Rush & Larsen 1978, IEEE TBME 25:389) integrates the gates exactly and the other
states with forward Euler, hence 2.
"""

from __future__ import annotations

import dataclasses

import diffrax
import numpy as np

from .physics.rush_larsen import RushLarsen

__all__ = ["RK4", "SOLVERS", "SolverSpec", "solver_spec"]


def _linear_interpolation(*, t0, t1, y0, y1, k=None):
    del k
    return diffrax.LocalLinearInterpolation(t0=t0, t1=t1, y0=y0, y1=y1)


class RK4(diffrax.AbstractERK):
    """The classical 4th-order Runge-Kutta method, fixed steps only (no error estimate);
    linear interpolation between steps for ``SaveAt(ts=...)``."""

    tableau = diffrax.ButcherTableau(
        a_lower=(np.array([0.5]), np.array([0.0, 0.5]), np.array([0.0, 0.0, 1.0])),
        b_sol=np.array([1 / 6, 1 / 3, 1 / 3, 1 / 6]),
        b_error=np.zeros(4),
        c=np.array([0.5, 0.5, 1.0]),
    )
    interpolation_cls = staticmethod(_linear_interpolation)

    def order(self, terms):
        del terms
        return 4


@dataclasses.dataclass(frozen=True)
class SolverSpec:
    """One solver: `name`, the diffrax class `cls`, `order`, `adaptive` (has an error
    estimate), `gated` (needs a model with gate states) and `stability_extent` (see the
    module docstring)."""

    name: str
    cls: type
    order: int
    adaptive: bool
    gated: bool
    stability_extent: float


SOLVERS: dict[str, SolverSpec] = {
    s.name: s
    for s in (
        SolverSpec("bosh3", diffrax.Bosh3, 3, True, False, 2.51),
        SolverSpec("dopri5", diffrax.Dopri5, 5, True, False, 3.306),
        SolverSpec("euler", diffrax.Euler, 1, False, False, 2.0),
        SolverSpec("heun", diffrax.Heun, 2, True, False, 2.0),
        SolverSpec("rk4", RK4, 4, False, False, 2.785),
        SolverSpec("rush-larsen", RushLarsen, 1, False, True, 2.0),
        SolverSpec("tsit5", diffrax.Tsit5, 5, True, False, 3.50),
    )
}


def solver_spec(name: str) -> SolverSpec:
    """The table entry of `name`; unknown names raise ``ValueError`` listing the valid ones."""
    try:
        return SOLVERS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown solver {name!r}; valid solvers are {tuple(SOLVERS)}") from None
