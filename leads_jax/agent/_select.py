"""Selection with a complexity penalty: the simplest model within noise of the best.

Among stable candidates, the best validation RMSE ``best`` sets a margin
``max(rel_tol * best, noise_tol * sigma)`` (``sigma``: the data's noise level, read from
the dataset or estimated, see :mod:`leads_jax.agent._data`). Every candidate with
``val_rmse <= best + margin`` is *within noise* of the best; the simplest of those
(fewest fitted scalars, then lower validation error, then lower id) wins. Defaults:
``rel_tol = 0.05`` (5%), ``noise_tol = 0.25`` (a quarter of the noise level): two fits
whose validation errors differ by less than that are not told apart by the data, and
the one with fewer fitted parameters is preferred (Occam's razor as in the minimum
description length principle, Rissanen 1978).
"""

from __future__ import annotations

import dataclasses
import math

__all__ = ["Selection", "select"]


@dataclasses.dataclass(frozen=True)
class Selection:
    """The complexity penalty (module docstring): within noise of the best validation
    RMSE means ``val <= best + max(rel_tol * best, noise_tol * sigma)``."""

    rel_tol: float = 0.05
    noise_tol: float = 0.25

    def __post_init__(self):
        for name in ("rel_tol", "noise_tol"):
            v = getattr(self, name)
            if not (float(v) >= 0 and math.isfinite(float(v))):
                raise ValueError(f"Selection.{name} must be a finite number >= 0; got {v!r}")

    def margin(self, best: float, noise: float) -> float:
        noise = noise if math.isfinite(noise) else 0.0
        return max(self.rel_tol * best, self.noise_tol * noise)


def select(observations, noise: float, selection: Selection | None = None):
    """``(winner id or None, table)``; `table` lists every stable candidate, best
    validation error first, with ``within_noise`` and ``selected`` flags."""
    sel = Selection() if selection is None else selection
    good = [o for o in observations if o.stable and math.isfinite(o.val_rmse)]
    if not good:
        return None, []
    best = min(o.val_rmse for o in good)
    margin = sel.margin(best, noise)
    within = [o for o in good if o.val_rmse <= best + margin]
    winner = min(within, key=lambda o: (o.n_params, o.val_rmse, o.id))
    table = [{"id": o.id, "val_rmse": o.val_rmse, "n_params": o.n_params,
              "within_noise": o.val_rmse <= best + margin, "selected": o.id == winner.id}
             for o in sorted(good, key=lambda o: (o.val_rmse, o.n_params, o.id))]
    return winner.id, table
