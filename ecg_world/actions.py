"""Actions: typed interventions (drug, dose, time since dose) for the ECG world model.

An :class:`Action` is an ``eqx.Module`` of arrays (drug id, dose in mg of the labelled product,
time since dose in h), so batches of actions are pytrees that ``vmap`` over. Build them from
names and units with :func:`make_action` (validated: unknown drug, unknown unit, negative dose
or time raise ``ValueError``) or take the study's vocabulary from :func:`study_actions`.
"""

from __future__ import annotations

from collections.abc import Sequence

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from .drugs import DrugLibrary, default_library, dose_to_mg


class Action(eqx.Module):
    """One intervention (or a batch, with leading axes on every field).

    **Fields:** ``drug`` integer id in the drug library's table; ``dose_mg`` dose of the
    labelled product in mg (0 for placebo); ``time_h`` time since the dose in hours (>= 0).
    """

    drug: Int[Array, "*batch"]
    dose_mg: Float[Array, "*batch"]
    time_h: Float[Array, "*batch"]

    def __init__(self, drug, dose_mg, time_h):
        self.drug = jnp.asarray(drug, jnp.int32)
        self.dose_mg = jnp.asarray(dose_mg, jnp.float32)
        self.time_h = jnp.asarray(time_h, jnp.float32)

    def at(self, time_h) -> Action:
        """The same drug and dose at another time since dose."""
        t = jnp.broadcast_to(jnp.asarray(time_h, jnp.float32), jnp.shape(self.dose_mg))
        return Action(self.drug, self.dose_mg, t)


def make_action(
    drug: str,
    dose: float | int | None = None,
    unit: str | None = None,
    time_h: float | int = 0.0,
    *,
    library: DrugLibrary | None = None,
) -> Action:
    """Validated :class:`Action` from a drug name (or alias), dose and unit.

    ``dose=None`` uses the drug's standard dose (the SCR-002 dose for the study drugs);
    ``unit=None`` uses the drug's own dose unit (e.g. ug for dofetilide).
    """
    library = library or default_library()
    try:
        key = library.canonical(drug)
    except KeyError as err:
        raise ValueError(str(err.args[0])) from None
    d = library.drugs[key]
    dose = d.standard_dose if dose is None else dose
    unit = d.dose_unit if unit is None else unit
    dose_mg = dose_to_mg(dose, unit)
    time_h = float(time_h)
    if not time_h >= 0.0:
        raise ValueError(f"time since dose must be >= 0 h (got {time_h})")
    return Action(
        drug=jnp.asarray(library.index(key), jnp.int32),
        dose_mg=jnp.asarray(dose_mg, jnp.float32),
        time_h=jnp.asarray(time_h, jnp.float32),
    )


def stack_actions(actions: Sequence[Action]) -> Action:
    """Stack scalar actions into a batch (leading axis)."""
    return Action(
        drug=jnp.stack([a.drug for a in actions]),
        dose_mg=jnp.stack([a.dose_mg for a in actions]),
        time_h=jnp.stack([a.time_h for a in actions]),
    )


def study_actions(
    times_h: Sequence[float] = (0.0,), *, library: DrugLibrary | None = None,
    dose_multipliers: Sequence[float] = (1.0,),
) -> tuple[list[str], Action]:
    """The SCR-002 vocabulary: every drug of the library at its standard dose (times the
    multipliers), each at every time. Returns labels and an ``Action`` batch (action, time)."""
    library = library or default_library()
    labels, rows = [], []
    for name, d in library.drugs.items():
        mults = (0.0,) if d.standard_dose == 0 else dose_multipliers
        for m in mults:
            dose = d.standard_dose * m
            labels.append(name if m == 1.0 or d.standard_dose == 0 else f"{name} x{m:g}")
            rows.append([make_action(name, dose, d.dose_unit, t, library=library)
                         for t in times_h])
    return labels, Action(
        drug=jnp.asarray(np.array([[int(a.drug) for a in r] for r in rows]), jnp.int32),
        dose_mg=jnp.asarray(np.array([[float(a.dose_mg) for a in r] for r in rows]), jnp.float32),
        time_h=jnp.asarray(np.array([[float(a.time_h) for a in r] for r in rows]), jnp.float32),
    )
