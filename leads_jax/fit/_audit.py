"""Stability audit: roll fitted members out beyond what they were trained on."""

from __future__ import annotations

import math

import numpy as np

from ..codes import ResultCode
from ._config import FitConfig
from ._engine import SplitData, evaluate_members


def audit_members(params, rest, *, rollout, context, splits: dict[str, SplitData],
                  config: FitConfig, test_split: str = "test", mesh=None, batched=True) -> dict:
    """Roll every member out on each split of `splits` (e.g. the test horizon, 3x the
    training one, and unseen pacing sites) and give a verdict.

    Returns host arrays over members: ``stable`` (bool), ``reason`` (str, "" when
    stable), ``rmse`` (dict split -> RMSE in mV, inf when the member diverged there)
    and ``test_rmse`` (RMSE on `test_split`, **inf for every unstable member**: the
    worst score, whatever split it failed on).
    """
    rmse, reasons, stable = {}, None, None
    for name, data in splits.items():
        ev = evaluate_members(params, rest, rollout=rollout, context=context, data=data,
                              config=config, mesh=mesh, batched=batched)
        div = np.atleast_1d(ev["diverged"])
        r = np.where(div, np.inf, np.sqrt(np.atleast_1d(ev["mse"])) * config.loss_scale)
        rmse[name] = r
        if stable is None:
            stable = np.ones(div.shape, bool)
            reasons = [""] * div.shape[0]
        for i in np.flatnonzero(div):
            if stable[i]:
                code = int(np.atleast_1d(ev["reason"])[i])
                t = float(np.atleast_1d(ev["t_diverged"])[i])
                when = f" at t={t:.1f} ms" if math.isfinite(t) else ""
                reasons[i] = f"{ResultCode.describe(code)}{when} on the {name} rollout"
            stable[i] = False
    if test_split in rmse:
        test = np.where(stable, rmse[test_split], np.inf)
    else:
        test = np.where(stable, np.nan, np.inf)
    return {"stable": stable, "reason": reasons, "rmse": rmse, "test_rmse": test}
