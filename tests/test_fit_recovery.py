"""Acceptance-size fitting checks on the real stack (slow: run with ``pytest -m slow``).

- Parameter recovery: Aliev-Panfilov ground truth on a 64-node cable, observed
  potential only, 1% Gaussian noise; a, k, eps0 and the conductivity D free (mu1, mu2,
  time_scale fixed), initial values perturbed by +-20%: all four within 5%.
- Sharded (4 forced CPU devices, in a subprocess) and single-device fits of the same
  batch agree to rtol 1e-4 in final loss.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from leads_jax.datasets import make_dataset
from leads_jax.fit import FitConfig, fit, stability_audit
from leads_jax.geometry import Geometry
from leads_jax.structure import Structure

pytestmark = pytest.mark.slow

TRUE = {"a": 0.15, "k": 8.0, "eps0": 0.01, "D": 0.001}
DT = 0.2  # ms


def test_parameter_recovery_aliev_panfilov_cable():
    # 160 ms of training record: upstroke, plateau and repolarisation near the paced end
    ds = make_dataset("aliev-panfilov", Geometry.cable(64), t_train=160.0, save_every=2.0,
                      noise=0.01, parameters={"eps0": TRUE["eps0"]}, dt=DT, seed=0)
    start = {"a": 0.15 * 1.2, "k": 8.0 * 0.8, "eps0": 0.01 * 1.2, "D": 0.001 * 0.8}
    s = Structure.make("aliev-panfilov", free=("a", "k", "eps0", "D"), values=start)
    cfg = FitConfig(learning_rate=0.03, steps=300, eval_every=10, patience=8, dt=DT)
    res = fit([s], ds, cfg, key=jax.random.key(0), progress=False)
    row = res.dataset.isel(candidate=0)
    assert bool(row["stable"]), row["stability_reason"].item()
    for name, true in TRUE.items():
        got = float(row["params"].sel(param=name))
        assert got == pytest.approx(true, rel=0.05), (name, got, true)
    # at the noise level (1% of the ~105 mV range), also on the 3x horizon at unseen sites
    assert row["val_rmse"].item() < 1.5 and row["test_rmse"].item() < 3.0
    # the public audit of the fitted models says the same
    audit = stability_audit(res.models, ds, cfg)
    assert bool(audit["stable"][0])
    np.testing.assert_allclose(audit["test_rmse"].values, res.dataset["test_rmse"].values,
                               rtol=1e-5)


SHARD_SCRIPT = r"""
import json, jax
assert len(jax.devices()) == 4, jax.devices()
from leads_jax.datasets import make_dataset
from leads_jax.fit import FitConfig, candidate_mesh, fit
from leads_jax.geometry import Geometry
from leads_jax.structure import Structure
ds = make_dataset("aliev-panfilov", Geometry.cable(64), t_train=30.0, save_every=2.0,
                  noise=0.01, dt=0.25, seed=1)
cands = [Structure.make("aliev-panfilov", free=("a", "k", "D"),
                        values={"a": 0.15 * f, "k": 8.0 / f, "D": 0.001 * f})
         for f in (0.85, 0.9, 0.95, 1.05, 1.1, 1.15, 1.2)]
cfg = FitConfig(learning_rate=0.03, steps=10, eval_every=5, dt=0.25, audit=False)
out = {}
for name, mesh in (("single", None), ("sharded", candidate_mesh())):
    res = fit(cands, ds, cfg, key=jax.random.key(0), mesh=mesh, progress=False)
    out[name] = res.dataset["train_loss"].values.tolist()
print(json.dumps(out))
"""


def test_sharded_fit_matches_single_device():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", SHARD_SCRIPT], env=env, capture_output=True,
                          text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(res["sharded"], res["single"], rtol=1e-4)
