"""Extractors against independent (analytic) values; ground-truth datasets and their I/O."""

import numpy as np
import pytest
import xarray as xr

from leads_jax.geometry import cable, sheet
from leads_jax.measure import (
    activation_times,
    apd90,
    apd_from_activation,
    conduction_velocity,
    error_breakdown,
    phase_labels,
)


def _trapezoid(t, t0, rise, t1, fall, rest=-80.0, peak=20.0, shape="linear"):
    """Upstroke from t0 (linear over `rise` ms), plateau to t1, then linear (over `fall`)
    or exponential (time constant `fall`) decay to rest."""
    amp = peak - rest
    v = np.full_like(t, rest)
    up = (t >= t0) & (t < t0 + rise)
    v[up] = rest + amp * (t[up] - t0) / rise
    v[(t >= t0 + rise) & (t < t1)] = peak
    dn = t >= t1
    if shape == "linear":
        v[dn] = rest + amp * np.clip(1 - (t[dn] - t1) / fall, 0, 1)
    else:
        v[dn] = rest + amp * np.exp(-(t[dn] - t1) / fall)
    return v


def test_activation_times_of_analytic_travelling_front():
    geo = cable(50, 0.02)
    x = np.asarray(geo.vertices[:, 0], dtype=np.float64)
    c = 0.06  # cm/ms
    t = np.arange(0, 30, 0.05)
    # front V = -80 + 100 sigmoid((t - t0 - x/c)/w): the 50% crossing is exactly t0 + x/c
    v = -80 + 100 / (1 + np.exp(-(t[:, None] - 2.0 - x[None, :] / c) / 0.3))
    act = activation_times(v, t)
    assert act.dims == ("node",) and act.attrs["units"] == "ms"
    np.testing.assert_allclose(act.values, 2.0 + x / c, atol=2e-3)
    cv = conduction_velocity(act, geo)
    np.testing.assert_allclose(cv["cv"].values, c, rtol=3e-3)
    assert float(cv["cv_median"]) == pytest.approx(c, rel=1e-3)


def test_cv_of_oblique_planar_wave_on_sheet():
    geo = sheet(15, 12, 0.05)
    p = np.asarray(geo.vertices, dtype=np.float64)
    c, th = 0.05, np.deg2rad(30)
    act = (p[:, 0] * np.cos(th) + p[:, 1] * np.sin(th)) / c
    ds = conduction_velocity(np.stack([act, 2 * act]), geo)  # batch: speeds c and c/2
    np.testing.assert_allclose(ds["cv"].values[0], c, rtol=1e-6)
    np.testing.assert_allclose(ds["cv"].values[1], c / 2, rtol=1e-6)
    np.testing.assert_allclose(
        ds["direction"].values[0, :, :2],
        np.broadcast_to([np.cos(th), np.sin(th)], (geo.n_nodes, 2)),
        atol=1e-6,
    )


@pytest.mark.parametrize("shape", ["linear", "exponential"])
def test_apd90_of_synthetic_action_potentials(shape):
    t = np.arange(0, 1000, 0.1)
    # two beats: activation (50% crossing) at t0 + rise/2
    v = np.maximum(
        _trapezoid(t, 10.0, 2.0, 200.0, 100.0, shape=shape),
        _trapezoid(t, 500.0, 2.0, 650.0, 80.0, shape=shape),
    )
    apd = apd90(
        xr.DataArray(np.stack([v, v], 1)[None], dims=("sample", "time", "node"), coords={"time": t})
    )
    assert apd.dims == ("sample", "beat", "node")
    if shape == "linear":  # reaches 10% above rest at t1 + 0.9 fall
        exp = [200 + 90 - 11.0, 650 + 72 - 501.0]
    else:  # exp(-s/tau) = 0.1  ->  s = tau ln 10
        exp = [200 + 100 * np.log(10) - 11.0, 650 + 80 * np.log(10) - 501.0]
    np.testing.assert_allclose(apd.values[0, :, 0], exp, atol=0.05)
    apd50 = apd_from_activation(v[:, None], t, repolarisation=0.5)
    if shape == "linear":
        np.testing.assert_allclose(
            apd50.values[:, 0], [200 + 50 - 11.0, 650 + 40 - 501.0], atol=0.05
        )


def test_unrepolarised_and_unexcited_nodes_are_nan():
    t = np.arange(0, 300, 0.5)
    v = np.stack([_trapezoid(t, 10, 2, 250, 200), np.full_like(t, -80.0)], 1)
    assert np.isnan(apd90(v, t).values).all()
    act = activation_times(v, t)
    assert np.isfinite(act.values[0]) and np.isnan(act.values[1])


def test_phase_labels_and_error_breakdown():
    geo = cable(4, 0.1)  # regions: proximal (0, 1), distal (2, 3)
    t = np.arange(0, 400, 0.5)
    v = np.stack([_trapezoid(t, 10 + 5 * k, 2.0, 200.0, 100.0) for k in range(4)], 1)
    lab = phase_labels(v, t).values
    ph0 = lab[:, 0]
    assert ph0[t < 10].tolist() == [3] * int((t < 10).sum())  # rest
    assert (ph0[(t > 10.2) & (t < 11.8)] == 0).all()  # upstroke
    assert (ph0[(t > 20) & (t < 200)] == 1).all()  # plateau
    assert (ph0[(t > 240) & (t < 285)] == 2).all()  # repolarisation
    # known errors: +2 mV in the distal region, +6 mV during the plateau of node 0
    pred = v.copy()
    pred[:, 2:] += 2.0
    plateau0 = ph0 == 1
    pred[plateau0, 0] += 6.0
    pred[-5:, 1] = np.nan  # a diverged stretch
    states_t = np.stack([v / 100, v / 200], axis=-2)
    states_p = states_t.copy()
    states_p[:, 1] += 0.5
    ds = error_breakdown(
        pred,
        v,
        t,
        geo,
        pred_state=states_p,
        true_state=states_t,
        state_names=["u", "w"],
        n_windows=2,
    )
    assert ds["rmse_by_region"].sel(region="distal") == pytest.approx(2.0)
    prox = np.sqrt(36 * plateau0.sum() / (2 * len(t) - 5))
    assert float(ds["rmse_by_region"].sel(region="proximal")) == pytest.approx(prox, rel=1e-6)
    assert float(ds["rmse_by_state"].sel(state="u")) == pytest.approx(0.0)
    assert float(ds["rmse_by_state"].sel(state="w")) == pytest.approx(0.5)
    assert float(ds["fraction_nonfinite"]) == pytest.approx(5 / pred.size)
    assert float(ds["rmse_by_phase"].sel(phase="plateau")) > float(
        ds["rmse_by_phase"].sel(phase="rest")
    )
    assert ds.sizes["window"] == 2 and "description" in ds.attrs


def test_extractor_bad_input():
    with pytest.raises(ValueError, match="ts"):
        activation_times(np.zeros((10, 3)))
    with pytest.raises(ValueError, match="strictly increasing"):
        activation_times(np.zeros((3, 2)), [0, 0, 1])
    with pytest.raises(ValueError, match="nodes"):
        conduction_velocity(np.zeros(5), cable(4, 0.1))


# -- ground-truth datasets -----------------------------------------------------------
from leads_jax.datasets import (  # noqa: E402
    geometry_from_dataset,
    load_dataset,
    make_dataset,
    save_dataset,
    split_dataset,
    stacked_stimuli,
    stimulus_from_dataset,
)
from leads_jax.structure import Structure  # noqa: E402


@pytest.fixture(scope="module")
def tiny():
    geo = cable(32, 0.025)
    ds = make_dataset(
        "aliev-panfilov",
        geo,
        t_train=40.0,
        noise=0.01,
        seed=3,
        protocols=["single", {"kind": "s1s2", "s1_period": 60.0, "n_s1": 1, "s2_interval": 50.0}],
    )
    return geo, ds


def test_dataset_layout_splits_and_truth(tiny):
    geo, ds = tiny
    assert ds["observed"].dims == ("sample", "time", "node")
    assert ds.sizes["sample"] == 6 and ds.sizes["node"] == 32
    assert ds.attrs["t_test"] == pytest.approx(3 * ds.attrs["t_train"])
    assert ds["pacing_site"].values.tolist() == [
        "left",
        "left",
        "right",
        "right",
        "center",
        "center",
    ]
    assert ds["split"].values.tolist() == ["train", "train", "val", "val", "test", "test"]
    s = Structure.from_json(ds.attrs["structure"])
    assert s.canonical().reaction == "aliev-panfilov"
    vals = {p.name: p.value for p in s.canonical().parameters}
    assert vals["a"] == pytest.approx(0.15) and vals["D"] == pytest.approx(1e-3)
    # the observed potential is the model's map of the true state; noise is 1% of the range
    u = ds["true_state"].sel(state="u")
    np.testing.assert_allclose(ds["observed_clean"], -80 + 100 * u, atol=1e-3)
    resid = (ds["observed"] - ds["observed_clean"]).values
    span = float(ds["observed_clean"].max() - ds["observed_clean"].min())
    assert resid.std() == pytest.approx(0.01 * span, rel=0.05)
    # a wave travels away from the left site: activation times increase along the cable
    act = activation_times(ds["observed_clean"].isel(sample=0))
    assert np.all(np.diff(act.values[5:-5]) > 0)
    # the S1-S2 sample has two pulses
    assert np.isfinite(ds["stim_onsets"].values[1]).sum() == 2
    tr = split_dataset(ds, "train")
    assert tr.sizes["sample"] == 2 and float(tr["time"].max()) <= ds.attrs["t_train"]
    te = split_dataset(ds, "test", horizon="test")
    assert te.sizes["time"] == ds.sizes["time"] and set(te["pacing_site"].values) == {"center"}


def test_dataset_round_trip(tiny, tmp_path):
    geo, ds = tiny
    path = save_dataset(ds, tmp_path / "gt.nc")
    back = load_dataset(path)
    xr.testing.assert_identical(back.drop_attrs(), ds.drop_attrs())
    assert back.attrs["structure"] == ds.attrs["structure"]
    g2 = geometry_from_dataset(back)
    for k in ("vertices", "edges", "edge_weights", "mass", "regions"):
        np.testing.assert_allclose(np.asarray(getattr(g2, k)), np.asarray(getattr(geo, k)))
    assert g2.pacing_sites == geo.pacing_sites and g2.region_names == geo.region_names
    st = stimulus_from_dataset(back, 1, g2)
    np.testing.assert_allclose(st.onsets, [0.0, 50.0])
    stacked = stacked_stimuli(back, g2)
    assert stacked.onsets.shape == (6, 2) and stacked.sites.shape == (6, 32)
    assert not list(tmp_path.glob(".tmp-*"))  # atomic write leaves no temporary file


def test_dataset_bad_input(tiny, tmp_path):
    geo, ds = tiny
    with pytest.raises(ValueError, match="unknown reaction model 'hodgkin'.*aliev-panfilov"):
        make_dataset("hodgkin", geo)
    with pytest.raises(ValueError, match="unknown pacing site 'apex'"):
        make_dataset("aliev-panfilov", geo, pacing_sites=["apex"])
    with pytest.raises(ValueError, match="unknown protocol"):
        make_dataset("aliev-panfilov", geo, protocols=["s3"])
    with pytest.raises(ValueError, match="unknown geometry"):
        make_dataset("aliev-panfilov", "torus")
    with pytest.raises(ValueError, match="unknown parameter"):
        make_dataset("aliev-panfilov", geo, parameters={"zeta": 1.0})
    bad = ds.copy(deep=True)
    bad["observed"][2, 5, 0] = np.nan
    save_dataset(bad, tmp_path / "bad.nc")
    with pytest.raises(ValueError, match=r"NaN/inf values in sample\(s\) \[2\]"):
        load_dataset(tmp_path / "bad.nc")
    save_dataset(ds.drop_vars("geom_mass"), tmp_path / "missing.nc")
    with pytest.raises(ValueError, match="missing variable.*geom_mass"):
        load_dataset(tmp_path / "missing.nc")
