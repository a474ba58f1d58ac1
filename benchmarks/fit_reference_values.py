"""Reference values of two fits, to compare versions of the engine (before/after a change).

Usage: python benchmarks/fit_reference_values.py OUT.json
Prints (and writes) the fitted parameters and errors of (1) the parameter-recovery problem
of tests/test_fit_recovery.py and (2) the small problem of tests/test_fit.py with 2 restarts
and the audit. Used for benchmarks/results/fit_before_after_cpu.md.
"""
import json
import sys
import time

import jax
import numpy as np

from leads_jax.datasets import make_dataset
from leads_jax.fit import FitConfig, fit
from leads_jax.geometry import Geometry
from leads_jax.structure import Structure

TRUE = {"a": 0.15, "k": 8.0, "eps0": 0.01, "D": 0.001}


def recovery() -> dict:
    dt = 0.2
    ds = make_dataset("aliev-panfilov", Geometry.cable(64), t_train=160.0, save_every=2.0,
                      noise=0.01, parameters={"eps0": 0.01}, dt=dt, seed=0)
    start = {"a": 0.15 * 1.2, "k": 8.0 * 0.8, "eps0": 0.01 * 1.2, "D": 0.001 * 0.8}
    s = Structure.make("aliev-panfilov", free=("a", "k", "eps0", "D"), values=start)
    cfg = FitConfig(learning_rate=0.03, steps=300, eval_every=10, patience=8, dt=dt)
    t = time.time()
    row = fit([s], ds, cfg, key=jax.random.key(0), progress=False).dataset.isel(candidate=0)
    out = {p: float(row["params"].sel(param=p)) for p in TRUE}
    out.update({k: float(row[k]) for k in ("train_rmse", "val_rmse", "test_rmse", "best_step")})
    out["stable"] = bool(row["stable"])
    out["seconds"] = time.time() - t
    return out


def small() -> dict:
    dt = 0.25

    def cand(free, f, **o):
        v = {n: TRUE[n] * x for n, x in zip(("a", "k", "eps0", "D"), f, strict=True)}
        v.update(o)
        return Structure.make("aliev-panfilov", free=free, values=v)

    cands = [cand(("D",), (1, 1, 1, 0.8)), cand(("a", "k", "eps0", "D"), (1.1, 0.9, 1.1, 0.9)),
             cand(("a", "k", "eps0", "D"), (1, 1, 1, 1), D=0.5),
             cand(("k", "D"), (1, 0.9, 1, 1.1))]
    ds = make_dataset("aliev-panfilov", Geometry.cable(64), t_train=40.0, save_every=2.0,
                      noise=0.01, parameters={"eps0": 0.01}, dt=dt, seed=0)
    cfg = FitConfig(learning_rate=0.03, steps=25, eval_every=10, patience=None, dt=dt,
                    restarts=2, aphynity_weight=0.0, audit=True)
    r = fit(cands, ds, cfg, key=jax.random.key(0), progress=False).dataset
    out = {k: [float(x) for x in r[k].values]
           for k in ("train_loss", "train_rmse", "val_rmse", "test_rmse", "best_restart",
                     "best_step")}
    out["params"] = np.asarray(r["params"].values).tolist()
    out["reason"] = [str(x) for x in r["stability_reason"].values]
    return out


if __name__ == "__main__":
    res = {"recovery": recovery(), "small": small()}
    print(json.dumps(res))
    if len(sys.argv) > 1:
        with open(sys.argv[1], "w") as f:
            json.dump(res, f)
