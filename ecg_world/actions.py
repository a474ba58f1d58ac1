"""Actions: typed interventions (drug, dose, time since dose) for the ECG world model.

An :class:`Action` is an ``eqx.Module`` of arrays (drug id, dose in mg of the labelled product,
time since dose in h), so batches of actions are pytrees that ``vmap`` over. Build them from
names and units with :func:`make_action` (validated: unknown drug, unknown unit, negative dose
or time raise ``ValueError``) or take the study's vocabulary from :func:`study_actions`.
"""

from __future__ import annotations

from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from .drugs import DrugLibrary, DrugTable, default_library


def _concrete(x) -> bool:
    """True unless ``x`` is a JAX tracer (inside ``jit``/``vmap``/``grad``)."""
    return not isinstance(x, jax.core.Tracer)


def _names(library) -> tuple[str, ...] | None:
    if library is None:
        return None
    if isinstance(library, (DrugLibrary, DrugTable)):
        return tuple(library.names)
    return tuple(str(n) for n in library)


class Action(eqx.Module):
    """One intervention (or a batch, with leading axes on every field).

    **Fields:** ``drug`` integer id in the drug library's table; ``dose_mg`` dose of the
    labelled product in mg (0 for placebo); ``time_h`` time since the dose in hours (>= 0);
    ``library`` (static) the names of the drug table that ``drug`` indexes, or ``None`` for a
    bare id (then the pharmacology it is applied with decides; see
    :func:`ecg_world.pharmacology.apply_action`, which rejects an action whose library is not
    the pharmacology's).

    **Validation.** Concrete values (eager construction) are checked here: a negative, NaN
    or infinite dose or time, a non-integer or negative drug id, or an id outside
    ``library`` is a ``ValueError``. Under tracing (actions built inside ``jit``/``vmap``)
    the values are unknown; :func:`action_validity` then carries the same checks as a flag,
    and the pharmacology turns an invalid action into NaN outputs (never a clamp).
    ``check=False`` skips the eager checks (for data read back from files, where invalid cells
    are already NaN and flagged).
    """

    drug: Int[Array, "*batch"]
    dose_mg: Float[Array, "*batch"]
    time_h: Float[Array, "*batch"]
    library: tuple[str, ...] | None = eqx.field(static=True, default=None)

    def __init__(self, drug, dose_mg, time_h, library=None, *, check: bool = True):
        names = _names(library)
        if check:
            _check_concrete(drug, dose_mg, time_h, names)
        self.drug = jnp.asarray(drug, jnp.int32)
        self.dose_mg = jnp.asarray(dose_mg, jnp.float32)
        self.time_h = jnp.asarray(time_h, jnp.float32)
        self.library = names

    def at(self, time_h) -> Action:
        """The same drug and dose at another time since dose."""
        t = jnp.broadcast_to(jnp.asarray(time_h, jnp.float32), jnp.shape(self.dose_mg))
        return Action(self.drug, self.dose_mg, t, self.library)


def _check_concrete(drug, dose_mg, time_h, names) -> None:
    if _concrete(drug):
        d = np.asarray(drug)
        if d.dtype.kind == "f" and not np.all(np.isfinite(d) & (d == np.round(d))):
            raise ValueError(f"drug id must be an integer row of the drug table (got {d})")
        if d.dtype.kind not in "iuf":
            raise ValueError(f"drug id must be an integer (got {d!r}); use make_action to "
                             "refer to a drug by name")
        if np.any(d < 0) or (names is not None and np.any(d >= len(names))):
            known = f"0..{len(names) - 1} ({', '.join(names)})" if names else ">= 0"
            raise ValueError(f"drug id {d.tolist()} outside the drug table: valid ids {known}")
    for what, x in (("dose_mg", dose_mg), ("time_h", time_h)):
        if _concrete(x):
            v = np.asarray(x, float)
            if not np.all(np.isfinite(v)) or np.any(v < 0):
                raise ValueError(f"{what} must be finite and >= 0 (got {v.tolist()})"
                                 + ("; time since dose is in hours after the dose"
                                    if what == "time_h" else ""))


def action_validity(action: Action, table: DrugTable) -> Bool[Array, "*batch"]:
    """Traceable validity flag of an action against a drug table: the id is a row of the
    table, the dose and time are finite and >= 0, and the dose is at most the drug's
    plausible maximum (``dose_range`` of its entry). Used by the pharmacology to turn an
    invalid action into NaN (flagged) outputs under tracing."""
    d, dose, t = action.drug, action.dose_mg, action.time_h
    return (table.contains(d) & jnp.isfinite(dose) & (dose >= 0) & jnp.isfinite(t) & (t >= 0)
            & (dose <= table.row("dose_max_mg", d) * (1 + 1e-5)))


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
    ``unit=None`` uses the drug's own dose unit (e.g. ug for dofetilide). ``library`` is the
    drug library the action refers to (default: the package's; pass ``pharm.library`` to
    act through a pharmacology built on a user library); the action records it, and the
    pharmacology checks that it is its own.

    Raises ``ValueError`` for an unknown drug or unit, a negative or NaN dose or time, and a
    dose outside the drug's plausible range (``dose_range`` of its entry), naming the likely
    unit slip (dofetilide "500 mg" -> "did you mean 500 ug?").
    """
    library = library or default_library()
    try:
        key = library.canonical(drug)
    except KeyError as err:
        raise ValueError(str(err.args[0])) from None
    d = library.drugs[key]
    dose = d.standard_dose if dose is None else dose
    unit = d.dose_unit if unit is None else unit
    dose_mg = d.check_dose(dose, unit)
    time_h = float(time_h)
    if not (np.isfinite(time_h) and time_h >= 0.0):
        raise ValueError(f"time since dose must be finite and >= 0 h (got {time_h})")
    return Action(jnp.asarray(library.index(key), jnp.int32),
                  jnp.asarray(dose_mg, jnp.float32), jnp.asarray(time_h, jnp.float32),
                  library)


def stack_actions(actions: Sequence[Action]) -> Action:
    """Stack scalar actions into a batch (leading axis); they must share a drug library."""
    libs = {a.library for a in actions}
    if len(libs) > 1:
        raise ValueError("cannot stack actions of different drug libraries: "
                         f"{sorted(map(str, libs))}")
    return Action(jnp.stack([a.drug for a in actions]), jnp.stack([a.dose_mg for a in actions]),
                  jnp.stack([a.time_h for a in actions]), libs.pop() if libs else None)


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
        jnp.asarray(np.array([[int(a.drug) for a in r] for r in rows]), jnp.int32),
        jnp.asarray(np.array([[float(a.dose_mg) for a in r] for r in rows]), jnp.float32),
        jnp.asarray(np.array([[float(a.time_h) for a in r] for r in rows]), jnp.float32),
        library)
