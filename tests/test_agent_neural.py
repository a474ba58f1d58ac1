"""The purely neural baseline (neural ODE + neural graph diffusion) fits through `fit`."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from leads_jax import FitConfig, Geometry, fit, make_dataset
from leads_jax.agent._expr import expression_model
from leads_jax.agent._neural import neural_ode_model
from leads_jax.simulate import simulate


def test_neural_model_contract_on_mesh_and_single_cell():
    sheet = Geometry.sheet(4, 3)
    m = neural_ode_model(sheet, n_states=3, width=8, key=jax.random.key(0))
    assert m.state_names == ("u", "x1", "x2") and m.n_nodes is None
    dy = m.bind(sheet).rates(0.0, jnp.zeros((3, sheet.n_nodes)))
    assert dy.shape == (3, 12) and float(jnp.max(jnp.abs(dy))) == 0.0  # starts at rest
    assert m.n_params > 0 and math.isfinite(m.stable_dt(sheet)) and "neural" in m.formula()
    cell = neural_ode_model(Geometry.single_cell(), key=jax.random.key(1))
    assert cell.stable_dt(Geometry.single_cell()) == math.inf
    assert "diffusion" not in cell.formula()
    p = m.perturb(jax.random.key(2), 0.5)
    assert not np.allclose(np.asarray(p.mlp.weights[-1]), 0.0)
    with pytest.raises(ValueError):
        neural_ode_model(sheet, width=0, key=jax.random.key(0))


@pytest.mark.slow
def test_neural_model_fits_and_loss_falls():
    geo = Geometry.cable(4)
    ds = make_dataset("aliev-panfilov", geo, t_train=10.0, pacing_sites=["left"])
    model = neural_ode_model(geo, width=8, key=jax.random.key(0))
    res = fit([model], ds, FitConfig(steps=20, eval_every=10, learning_rate=1e-2, audit=False),
              key=jax.random.key(1), progress=False)
    curve = np.asarray(res.dataset["train_curve"].values[0], float)
    curve = curve[np.isfinite(curve)]
    assert curve.size >= 10 and curve[-1] < 0.7 * curve[0]
    assert math.isfinite(float(res.dataset["train_rmse"].values[0]))


@pytest.mark.slow
def test_expression_model_fits():
    geo = Geometry.cable(6)
    ds = make_dataset("aliev-panfilov", geo, t_train=15.0, pacing_sites=["left", "right"])
    m = expression_model({"u": "p0*u*(u - p1)*(1 - u) - u*v + 0.001*lap_u",
                          "v": "p2*(p3*u - v)"}, params=[6.0, 0.2, 0.02, 6.0],
                         state_bounds=[(-1, 2), (-1, 5)])
    res = fit([m], ds, FitConfig(steps=20, eval_every=10, learning_rate=1e-2, audit=False),
              key=jax.random.key(1), progress=False)
    curve = np.asarray(res.dataset["train_curve"].values[0], float)
    assert np.isfinite(curve[0]) and curve[np.isfinite(curve)][-1] < curve[0]
    tr = simulate(res.models[0], geo, None, jnp.linspace(0.0, 2.0, 3))
    assert tr.observed.shape == (3, 6)
