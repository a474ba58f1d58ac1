"""World model (ecg_world.world): training, save/load, sampling, anchor switch, JSON drug,
bad inputs, 1-vs-4-device equality. Tiny models on synthetic strips (no cohort needed)."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ecg_world.actions import Action, make_action
from ecg_world.calibrated import default_calibration
from ecg_world.drugs import load_drugs
from ecg_world.world import data as wdata
from ecg_world.world.data import PairSet, StripSpec, action_features
from ecg_world.world.model import ModelFormatError, load_model
from ecg_world.world.sample import rollouts
from ecg_world.world.train import Prepared, TrainConfig, train

TINY = TrainConfig(ae_steps=25, ae_batch=8, diff_steps=25, diff_batch=8, hidden=32,
                   n_blocks=1, ae_channels=(4, 4, 8, 8, 8), latent_channels=2,
                   checkpoint_every=10, ema_decay=0.5, ae_lr=5e-3)


def _beats(rng, n, rr, amp_t):
    t = np.arange(n) / 250.0
    r = 0.25 + rr * np.arange(8)
    x = np.zeros(n)
    for r0 in r:
        x += 1.2 * np.exp(-0.5 * ((t - r0) / 0.012) ** 2)
        x += amp_t * np.exp(-0.5 * ((t - r0 - 0.3) / 0.05) ** 2)
        x += 0.15 * np.exp(-0.5 * ((t - r0 + 0.16) / 0.025) ** 2)
    return x + 0.01 * rng.standard_normal(n)


def fake_prepared(n_patients=8, n_actions=3, seed=0) -> Prepared:
    """Pairs of R-aligned synthetic strips: the 'drug' raises the T wave with the dose."""
    rng = np.random.default_rng(seed)
    cal = default_calibration()
    pharm = cal.pharmacology
    lib = pharm.library
    spec = StripSpec(250.0, 1024, ("II", "V2"))
    pre, post, drug, dose, tim, pat = [], [], [], [], [], []
    for p in range(n_patients):
        rr = rng.uniform(0.7, 1.1)
        base = np.stack([_beats(rng, 1024, rr, 0.3), -0.5 * _beats(rng, 1024, rr, 0.3)])
        for a in range(n_actions):
            d = ["dofetilide", "placebo", "verapamil"][a % 3]
            act = make_action(d, None, None, 2.0, library=lib)
            amp = 0.3 + (0.2 if d == "dofetilide" else 0.0)
            pre.append(base)
            post.append(np.stack([_beats(rng, 1024, rr, amp), -0.5 * _beats(rng, 1024, rr, amp)]))
            drug.append(int(act.drug))
            dose.append(float(act.dose_mg))
            tim.append(2.0)
            pat.append(p)
    n = len(pre)
    act = Action(np.array(drug), np.array(dose, np.float32), np.array(tim, np.float32),
                 lib.names)
    feats = action_features(pharm, act)
    split = np.array([0 if p < n_patients - 2 else (1 if p == n_patients - 2 else 2)
                      for p in pat], np.int32)
    f32 = lambda v: jnp.asarray(np.asarray(v, np.float32))
    pairs = PairSet(pre=f32(pre), post=f32(post), drug=jnp.asarray(drug, jnp.int32),
                    dose_mg=f32(dose), time_h=f32(tim), features=f32(feats),
                    patient=jnp.asarray(pat, jnp.int32), split=jnp.asarray(split),
                    truth_rr=f32(np.full(n, 900.0)), truth_pr=f32(np.full(n, 160.0)),
                    truth_qrs=f32(np.full(n, 90.0)), truth_qt=f32(np.full(n, 400.0)),
                    truth_qtcf=f32(np.full(n, 410.0)), pre_qtcf=f32(np.full(n, 400.0)),
                    spec=spec, drug_names=tuple(lib.names))
    anchor_post = np.asarray(post, np.float32) * 0.9
    return Prepared(pairs, anchor_post, np.zeros(n_patients), pharm, "0" * 64)


@pytest.fixture(scope="module")
def prepared():
    return fake_prepared()


@pytest.fixture(scope="module")
def trained(prepared, tmp_path_factory):
    out = tmp_path_factory.mktemp("world") / "tiny"
    model, hist = train("unused.nc", out, TINY, prepared=prepared, verbose=False,
                        command="test")
    return out, model, hist


def test_tiny_model_trains_and_loss_falls(trained, prepared):
    from ecg_world.world.diffusion import diffusion_loss
    from ecg_world.world.model import WorldModel

    out, model, hist = trained
    ae, dl = hist["ae_loss"], hist["diff_loss"]
    assert ae.shape == (TINY.ae_steps,) and dl.shape == (TINY.diff_steps, 3)
    assert np.mean(ae[-5:]) < 0.9 * np.mean(ae[:5])
    # the diffusion loss on all pairs at one fixed key: trained (EMA) < initial weights
    p = prepared.pairs
    z_pre = model.autoencoder.encode(p.pre)
    z_post = model.autoencoder.encode(p.post)
    z_anc = model.autoencoder.encode(jnp.asarray(prepared.anchor_post))
    x0 = (z_post - z_pre) / model.delta_std
    xa = (z_anc - z_pre) / model.delta_std
    zp = (z_pre - model.pre_mean) / model.pre_std
    init = WorldModel.create(model.spec, model.ae_config, model.diffusion_config,
                             seed=TINY.seed)
    key = jax.random.key(11)
    before = diffusion_loss(init.denoiser, x0, zp, p.features, xa, key,
                            model.diffusion_config)[0]
    after = diffusion_loss(model.denoiser, x0, zp, p.features, xa, key,
                           model.diffusion_config)[0]
    assert float(after) < float(before)
    assert np.all(dl[:, 2] > 0)  # the anchor term is on by default
    assert (out / "config.json").is_file() and (out / "weights").is_dir()
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["ecg_world_version"] and cfg["command"] == "test"


def test_save_load_identical_samples_and_keys_differ(trained, prepared, monkeypatch):
    out, model, _ = trained
    monkeypatch.chdir(out.parent)
    loaded = load_model(out.name)  # a relative path works too
    pre = prepared.pairs.pre[:2]
    f = prepared.pairs.features[:2]
    key = jax.random.key(3)
    a = np.asarray(rollouts(model, pre, f, key, k=3, steps=4))
    b = np.asarray(rollouts(loaded, pre, f, key, k=3, steps=4))
    assert a.shape == (2, 3, 2, 1024)
    np.testing.assert_array_equal(a, b)
    c = np.asarray(rollouts(loaded, pre, f, jax.random.key(4), k=3, steps=4))
    assert np.max(np.abs(a - c)) > 1e-4
    # rollouts of one row are different draws (independent keys)
    assert np.max(np.abs(a[0, 0] - a[0, 1])) > 1e-4
    anc = np.asarray(rollouts(loaded, pre, f, key, k=3, steps=4, sampler="ancestral"))
    assert np.all(np.isfinite(anc))


def test_anchor_guidance_is_a_proximal_step_toward_the_anchor(trained, prepared):
    """Guidance g -> infinity samples the anchor itself; g = 0 is the unguided sampler; a
    guided model refuses to sample without the anchor."""
    import dataclasses

    from ecg_world.world.diffusion import sample_latents

    _, model, _ = trained
    pre = prepared.pairs.pre[:2]
    f = prepared.pairs.features[:2]
    anchor = jnp.asarray(prepared.anchor_post[:2])
    key = jax.random.key(5)
    free = np.asarray(rollouts(model, pre, f, key, k=2, steps=6))
    np.testing.assert_array_equal(
        free, np.asarray(rollouts(model, pre, f, key, k=2, steps=6, anchor_post=anchor,
                                  guidance=0.0)))
    pinned = np.asarray(rollouts(model, pre, f, key, k=2, steps=6, anchor_post=anchor,
                                 guidance=1e7))
    ae = model.autoencoder
    target = np.asarray(ae.decode(ae.encode(anchor)))
    np.testing.assert_allclose(pinned[:, 0], target, atol=2e-3 * np.abs(target).max())
    np.testing.assert_allclose(pinned[:, 1], target, atol=2e-3 * np.abs(target).max())
    mid = np.asarray(rollouts(model, pre, f, key, k=2, steps=6, anchor_post=anchor,
                              guidance=1.0))
    d_free, d_mid = (float(np.mean((v[:, 0] - target) ** 2)) for v in (free, mid))
    assert d_mid < d_free  # a finite guidance moves the rollouts toward the anchor
    # the 'change' target: the anchor's predicted change added to the real pre latent
    apre = jnp.asarray(prepared.anchor_post[:2]) * 0.8
    pinned_c = np.asarray(rollouts(model, pre, f, key, k=2, steps=6, anchor_post=anchor,
                                   anchor_pre=apre, guidance=1e7, guidance_target="change"))
    target_c = np.asarray(ae.decode(ae.encode(jnp.asarray(pre)) + ae.encode(anchor)
                                    - ae.encode(apre)))
    np.testing.assert_allclose(pinned_c[:, 0], target_c, atol=2e-3 * np.abs(target_c).max())
    with pytest.raises(ValueError, match="anchor_pre"):
        rollouts(model, pre, f, key, k=1, steps=2, anchor_post=anchor, guidance=1.0,
                 guidance_target="change")
    with pytest.raises(ValueError, match="guidance target"):
        rollouts(model, pre, f, key, k=1, steps=2, anchor_post=anchor, guidance=1.0,
                 guidance_target="middle")
    guided = dataclasses.replace(model, diffusion_config=dataclasses.replace(
        model.diffusion_config, guidance_scale=1.0))
    with pytest.raises(ValueError, match="anchor_post"):
        rollouts(guided, pre, f, key, k=1, steps=2)
    with pytest.raises(ValueError, match="guidance"):
        rollouts(model, pre, f, key, k=1, steps=2, anchor_post=anchor, guidance=-1.0)
    with pytest.raises(ValueError, match="x0_anchor"):
        sample_latents(model.denoiser, jnp.zeros((1, model.diffusion_config.latent_dim)),
                       f[:1], jax.random.split(key, 1), steps=2, guidance=1.0)


def test_guidance_spread_moves_the_mean_and_scales_the_spread(trained, prepared):
    """One sampler step (t = 1 -> 0, gamma = g with q = 0) against the closed-form proximal
    step: the group's mean goes to (m + g xa) / (1 + g), its deviations shrink by 1 / (1 + rho
    g); rho = 1 is the per-rollout step. Over many steps with a huge g, rho = 0 pins the mean
    to the anchor and keeps a spread, rho = 1 pins every rollout."""
    from ecg_world.world.diffusion import sample_latents

    _, model, _ = trained
    d = model.diffusion_config.latent_dim
    k, b = 4, 2
    z_pre = jnp.repeat(jax.random.normal(jax.random.key(1), (b, d)), k, axis=0)
    f = jnp.repeat(jnp.asarray(prepared.pairs.features[:b]), k, axis=0)
    xa = jnp.repeat(jax.random.normal(jax.random.key(2), (b, d)), k, axis=0)
    keys = jax.random.split(jax.random.key(3), b * k)

    def draw(g, rho, steps=1, power=0.0):
        return np.asarray(sample_latents(model.denoiser, z_pre, f, keys, steps=steps,
                                         x0_anchor=xa, guidance=g, guidance_power=power,
                                         guidance_spread=rho, group_size=k))

    free = draw(0.0, 1.0).reshape(b, k, d)
    m = free.mean(1, keepdims=True)
    xa_g = np.asarray(xa).reshape(b, k, d)
    g = 3.0
    for rho in (0.0, 0.25, 1.0):
        want = (m + g * xa_g) / (1 + g) + (free - m) / (1 + rho * g)
        np.testing.assert_allclose(draw(g, rho).reshape(b, k, d), want, rtol=1e-4, atol=1e-5)
    per_row = (free + g * xa_g) / (1 + g)
    np.testing.assert_allclose(draw(g, 1.0).reshape(b, k, d), per_row, rtol=1e-4, atol=1e-5)
    spread_free = free.std(1).mean()
    mean_only = draw(1e6, 0.0, steps=8, power=1.0).reshape(b, k, d)
    np.testing.assert_allclose(mean_only.mean(1), xa_g[:, 0], atol=1e-3)
    assert mean_only.std(1).mean() > 0.3 * spread_free
    pinned = draw(1e6, 1.0, steps=8, power=1.0).reshape(b, k, d)
    assert pinned.std(1).mean() < 1e-3 * spread_free
    with pytest.raises(ValueError, match="guidance_spread"):
        draw(1.0, 1.5)
    with pytest.raises(ValueError, match="group_size"):
        sample_latents(model.denoiser, z_pre, f, keys, steps=1, x0_anchor=xa, guidance=1.0,
                       group_size=3)
    with pytest.raises(ValueError, match="guidance_spread"):
        rollouts(model, prepared.pairs.pre[:1], prepared.pairs.features[:1], keys[0], k=2,
                 steps=2, anchor_post=jnp.asarray(prepared.anchor_post[:1]), guidance=1.0,
                 guidance_spread=float("nan"))


def test_anchor_switch_both_paths_run(prepared, tmp_path):
    import dataclasses

    cfg = dataclasses.replace(TINY, ae_steps=3, diff_steps=4, use_anchor=False,
                              checkpoint_every=100)
    _, hist = train("unused.nc", tmp_path / "noanchor", cfg, prepared=prepared, verbose=False)
    assert np.all(hist["diff_loss"][:, 2] == 0.0)
    c = json.loads((tmp_path / "noanchor" / "config.json").read_text())
    assert c["diffusion"]["anchor_scale"] == 0.0 and c["anchor"]["use_anchor"] is False
    # the same switch turns the sampling-time guidance off
    cfg_g = dataclasses.replace(cfg, guidance_scale=2.0)
    train("unused.nc", tmp_path / "noanchor_g", cfg_g, prepared=prepared, verbose=False)
    c = json.loads((tmp_path / "noanchor_g" / "config.json").read_text())
    assert c["diffusion"]["guidance_scale"] == 0.0
    train("unused.nc", tmp_path / "anchor_g", dataclasses.replace(cfg_g, use_anchor=True),
          prepared=prepared, verbose=False)
    c = json.loads((tmp_path / "anchor_g" / "config.json").read_text())
    assert c["diffusion"]["guidance_scale"] == 2.0 and c["anchor"]["guidance_scale"] == 2.0


def test_resume_continues_the_same_curve(prepared, tmp_path):
    import dataclasses

    cfg = dataclasses.replace(TINY, ae_steps=4, diff_steps=6, checkpoint_every=3)
    _, full = train("unused.nc", tmp_path / "a", cfg, prepared=prepared, verbose=False)
    with pytest.raises(ValueError, match="already holds"):
        train("unused.nc", tmp_path / "a", cfg, prepared=prepared, verbose=False)
    # resume from the checkpoint at the end of the autoencoder stage
    _, again = train("unused.nc", tmp_path / "a", cfg, prepared=prepared, verbose=False,
                     resume=True)
    np.testing.assert_allclose(again["diff_loss"], full["diff_loss"], rtol=1e-5)


def test_json_drug_is_a_valid_condition(tmp_path, trained, prepared):
    doc = json.loads((pathlib.Path(__import__("ecg_world").__file__).parent / "data" /
                      "drugs.json").read_text())
    entry = dict(doc["drugs"]["dofetilide"])
    entry.update(display_name="Testdrug", aliases=["Testdrug"])
    entry["potency"] = {"IKr": {"ic50_nM": 50.0, "hill": 1.0},
                        "ICaL": {"ic50_nM": 2000.0, "hill": 1.0}}
    path = tmp_path / "my.json"
    path.write_text(json.dumps({"testdrug": entry}))
    pharm = default_calibration().with_library(load_drugs(path)).pharmacology
    act = make_action("testdrug", 500, "ug", 2.0, library=pharm.library)
    f = np.asarray(action_features(pharm, act))
    assert f.shape == (wdata.N_FEATURES,) and np.all(np.isfinite(f))
    ref = default_calibration().with_library(load_drugs(path)).pharmacology
    dof = np.asarray(action_features(ref, make_action("dofetilide", 500, "ug", 2.0,
                                                      library=ref.library)))
    assert f[0] < dof[0]  # weaker hERG potency -> less IKr block
    _, model, _ = trained
    y = rollouts(model, prepared.pairs.pre[:1], f[None], jax.random.key(0), k=2, steps=2)
    assert np.all(np.isfinite(np.asarray(y)))


def test_bad_inputs(trained, prepared, tmp_path):
    out, model, _ = trained
    pre = np.asarray(prepared.pairs.pre[:1])
    f = prepared.pairs.features[:1]
    with pytest.raises(ValueError, match="k"):
        rollouts(model, pre, f, jax.random.key(0), k=0)
    bad = pre.copy()
    bad[0, 0, 10] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        rollouts(model, bad, f, jax.random.key(0), k=1)
    spec = model.spec
    with pytest.raises(ValueError, match="too short"):
        wdata.strips_from_record(np.zeros((2, 500)), ["II", "V2"], 250.0, spec)
    with pytest.raises(ValueError, match="lacks leads"):
        wdata.strips_from_record(np.zeros((2, 2000)), ["I", "V2"], 250.0, spec)
    nan = np.zeros((2, 2000))
    nan[1, 5] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        wdata.strips_from_record(nan, ["II", "V2"], 250.0, spec)
    ok = wdata.strips_from_record(np.zeros((2, 5000)), ["II", "V2"], 500.0, spec)
    assert ok.shape == (2, 1024)
    lib = default_calibration().pharmacology.library
    with pytest.raises(ValueError, match="unknown drug|valid"):
        make_action("notadrug", 1, "mg", 1.0, library=lib)
    with pytest.raises(ValueError):
        make_action("dofetilide", -5, "ug", 1.0, library=lib)
    with pytest.raises(ValueError):
        make_action("dofetilide", 500, "ug", -1.0, library=lib)
    # model directory: missing files, another version, edited weights
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    (broken / "config.json").unlink()
    with pytest.raises(ModelFormatError, match="config.json"):
        load_model(broken)
    other = tmp_path / "other"
    shutil.copytree(out, other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["ecg_world_version"] = "0.0.1"
    (other / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelFormatError, match="0.0.1"):
        load_model(other)
    nowt = tmp_path / "nowt"
    shutil.copytree(out, nowt)
    shutil.rmtree(nowt / "weights")
    with pytest.raises(ModelFormatError, match="weights"):
        load_model(nowt)
    with pytest.raises(ModelFormatError, match="not found"):
        load_model(tmp_path / "nothing")
    bad = tmp_path / "badtarget"  # a config the sampler cannot honour fails at load
    shutil.copytree(out, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["diffusion"]["guidance_target"] = "middle"
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelFormatError, match="guidance_target"):
        load_model(bad)


_DEVICE_SCRIPT = r"""
import json, sys
sys.path.insert(0, {tests!r})
from test_world_model import TINY, fake_prepared
import dataclasses, jax
from ecg_world.world.train import train
cfg = dataclasses.replace(TINY, ae_steps=6, diff_steps=6, checkpoint_every=100)
prep = fake_prepared()
res = {{"n": len(jax.devices())}}
for n in (1, 4):
    model, h = train("unused.nc", {out!r} + str(n), cfg, prepared=prep, verbose=False,
                     devices=jax.devices()[:n])
    res[n] = {{"ae": h["ae_loss"].tolist(), "diff": h["diff_loss"].tolist(),
              "meta_devices": model.meta["devices"]}}
print(json.dumps(res))
"""


def test_one_vs_four_devices_same_loss_curve(tmp_path):
    """Data-parallel training over 1 and over 4 forced CPU devices (one process, the batch
    axis sharded with NamedSharding) gives the same loss curves to float tolerance."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu")
    code = _DEVICE_SCRIPT.format(tests=str(pathlib.Path(__file__).parent),
                                 out=str(tmp_path / "d"))
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads(p.stdout.strip().splitlines()[-1])
    assert res["n"] == 4
    one, four = res["1"], res["4"]
    assert one["meta_devices"] == 1 and four["meta_devices"] == 4
    assert len(one["ae"]) == 6 and len(one["diff"]) == 6
    np.testing.assert_allclose(four["ae"], one["ae"], rtol=2e-4, atol=1e-7)
    np.testing.assert_allclose(four["diff"], one["diff"], rtol=2e-3, atol=1e-5)


def test_train_rejects_no_devices(tmp_path):
    from ecg_world.world.train import train

    with pytest.raises(ValueError, match="at least one device"):
        train("unused.nc", tmp_path / "m", TINY, prepared=fake_prepared(), verbose=False,
              devices=[])


def test_simulate_writes_netcdf_and_figure(trained, prepared, tmp_path):
    from ecg_world.world.sample import plot_rollouts, simulate

    out, model, _ = trained
    pharm = prepared.pharm
    acts = [make_action("dofetilide", 500, "ug", h, library=pharm.library) for h in (1.0, 2.5)]
    action = Action(np.array([int(a.drug) for a in acts]),
                    np.array([float(a.dose_mg) for a in acts], np.float32),
                    np.array([1.0, 2.5], np.float32), pharm.library)
    ds = simulate(model, np.asarray(prepared.pairs.pre[0]), action, pharm, k=3, steps=4,
                  seed=1, source="test", model_dir=str(out))
    assert ds["ecg"].dims == ("time_after_dose", "rollout", "lead", "time")
    assert ds["ecg"].shape == (2, 3, 2, 1024) and ds["ecg"].attrs["units"] == "mV"
    assert ds.attrs["ecg_world_version"] and ds.attrs["seed"] == 1
    ds.to_netcdf(tmp_path / "r.nc", engine="h5netcdf")
    assert plot_rollouts(ds, tmp_path / "r.png").stat().st_size > 1000


def test_simulate_cli_bad_inputs(trained, data_dir, capsys):
    from ecg_world.cli import main

    out, _, _ = trained
    rec = str(data_dir / "wfdb" / "100")
    base = ["simulate", "--model", str(out), "--record", rec, "--drug", "dofetilide",
            "--out", str(out.parent / "sim")]
    assert main(base + ["-k", "0"]) == 2
    assert "-k" in capsys.readouterr().err
    assert main(base + ["--hours", "-1"]) == 2
    assert "hours" in capsys.readouterr().err
    assert main(base + ["--drug", "notadrug"]) == 2
    assert "notadrug" in capsys.readouterr().err
    assert main(base) == 2  # MIT-BIH 100 has MLII and V5, the model needs II and V2
    assert "V2" in capsys.readouterr().err


def test_simulate_with_guidance_fits_the_anchor(trained, prepared, tmp_path):
    import dataclasses

    from ecg_world.world.sample import simulate

    out, model, _ = trained
    guided = dataclasses.replace(model, diffusion_config=dataclasses.replace(
        model.diffusion_config, guidance_scale=1.0))
    pharm = prepared.pharm
    act = make_action("dofetilide", 500, "ug", 2.0, library=pharm.library)
    action = Action(np.array([int(act.drug)]), np.array([float(act.dose_mg)], np.float32),
                    np.array([2.0], np.float32), pharm.library)
    ds = simulate(guided, np.asarray(prepared.pairs.pre[0]), action, pharm, k=2, steps=3,
                  seed=0, source="test", model_dir=str(out))
    assert ds.attrs["anchor_guidance"] == 1.0 and ds.attrs["anchor_fit_r"] > 0.5
    assert np.all(np.isfinite(ds["ecg"].values))


def test_shipped_model_loads_samples_and_is_reproducible(data_dir):
    """The quick model in the package: within 5 MB, reproducible by the commands in its
    config, hash-checked on load; it reads a real LUDB record, and its rollouts are
    reproducible for a seed, differ between seeds, and lengthen QTcF under dofetilide."""
    from ecg_world.world.evaluate import strip_intervals
    from ecg_world.world.pretrained import load_shipped, resolve_model, shipped_model_path
    from ecg_world.world.sample import read_input_strip, simulate

    path = shipped_model_path("quick")
    size = sum(f.stat().st_size for f in (path / "weights").rglob("*") if f.is_file())
    assert size <= 5 * 1024 * 1024
    cfg = json.loads((path / "config.json").read_text())
    cmds = cfg["reproduce"]["commands"]
    assert cmds[0].startswith("ecg-world synth") and "--preset quick" in cmds[1]
    assert resolve_model("quick") == path
    with pytest.raises(ModelFormatError, match="shipped"):
        resolve_model("no-such-model")
    model = load_shipped("quick")
    assert model.diffusion_config.guidance_scale > 0
    from ecg_world.world.train import PRESETS  # its sampling settings are the preset's

    for f in ("guidance_scale", "guidance_power", "guidance_spread", "guidance_target"):
        assert getattr(model.diffusion_config, f) == getattr(PRESETS["quick"], f), f
    pre, _ = read_input_strip(str(data_dir / "ludb" / "1"), model.spec)
    ae = model.autoencoder
    rec = np.asarray(ae.decode(ae.encode(jnp.asarray(pre)[None])))[0]
    r = np.corrcoef(rec[0], pre[0])[0, 1]
    assert r > 0.7, r  # the real strip is not out of the autoencoder's reach
    pharm = default_calibration().pharmacology
    acts = [make_action(d, None, None, 2.5, library=pharm.library)
            for d in ("placebo", "dofetilide")]
    action = Action(np.array([int(a.drug) for a in acts]),
                    np.array([float(a.dose_mg) for a in acts], np.float32),
                    np.full(2, 2.5, np.float32), pharm.library)
    a = simulate(model, pre, action, pharm, k=8, steps=20, seed=3)
    b = simulate(model, pre, action, pharm, k=8, steps=20, seed=3)
    np.testing.assert_array_equal(a["ecg"].values, b["ecg"].values)
    c = simulate(model, pre, action, pharm, k=8, steps=20, seed=4)
    assert np.max(np.abs(a["ecg"].values - c["ecg"].values)) > 1e-3
    q = strip_intervals(a["ecg"].values, model.spec.sampling_rate)["QTcF"]  # (2, k)
    assert np.nanmedian(q[1]) > np.nanmedian(q[0]) + 10.0, q


def test_ludb_tuning_strips_join_the_autoencoder_pool(data_dir, prepared, tmp_path):
    """Only the tuning split of a LUDB folder is read; the strips join the autoencoder's pool
    at the configured share, with their provenance in the model's config."""
    import dataclasses
    import shutil

    from ecg_world.ludb import ludb_split
    from ecg_world.world.train import ludb_tuning_strips

    spec = prepared.pairs.spec
    with pytest.raises(ValueError, match="tuning split"):  # records 1 and 101 are reporting
        ludb_tuning_strips(data_dir / "ludb", spec)
    # record 1 under the id 7 (tuning split): rewrite the header's record and file names
    assert ludb_split("7") == "tuning" and ludb_split("1") == "reporting"
    for f in (data_dir / "ludb").glob("1.*"):
        dest = tmp_path / ("7" + f.suffix)
        if f.suffix == ".hea":
            dest.write_text("\n".join(("7" + ln[1:]) if ln.startswith("1") else ln
                                      for ln in f.read_text().splitlines()) + "\n")
        else:
            shutil.copy(f, dest)
    for f in (data_dir / "ludb").glob("101.*"):  # a reporting record beside it is skipped
        shutil.copy(f, tmp_path / f.name)
    strips, ids = ludb_tuning_strips(tmp_path, spec)
    assert ids == ["7"] and strips.shape == (3, 2, spec.n_samples)
    assert np.all(np.isfinite(strips)) and np.ptp(strips[0, 0]) > 0.3  # mV, not raw ADC
    cfg = dataclasses.replace(TINY, ae_steps=2, diff_steps=2, checkpoint_every=100)
    train("unused.nc", tmp_path / "m", cfg, prepared=prepared, verbose=False,
          real_strips=(strips, {"source": "test", "records": ids}))
    meta = json.loads((tmp_path / "m" / "config.json").read_text())["ae_real_strips"]
    assert meta["records"] == ["7"] and meta["n_strips"] == 3
    assert 0.15 < meta["share"] < 0.35
    with pytest.raises(ValueError, match="real_strips"):
        train("unused.nc", tmp_path / "m2", cfg, prepared=prepared, verbose=False,
              real_strips=(strips[:, :1], {}))


def test_pit_coverage_is_calibrated_at_any_k():
    """A calibrated ensemble covers the central 90% in 90% of cells by the randomised PIT at
    k = 4 and 16 (the empirical 5-95% band of 8 members would cover about 72%); a collapsed
    ensemble covers less, an overdispersed one more; cells without members are not covered."""
    from ecg_world.world.evaluate import pit_central_coverage

    rng = np.random.default_rng(7)
    y = rng.normal(size=20000)
    for k in (4, 16):
        cov = pit_central_coverage(rng.normal(size=(20000, k)), y).mean()
        assert abs(cov - 0.9) < 0.01, (k, cov)
    assert pit_central_coverage(0.2 * rng.normal(size=(20000, 8)), y).mean() < 0.7
    assert pit_central_coverage(3.0 * rng.normal(size=(20000, 8)), y).mean() > 0.97
    s = rng.normal(size=(3, 8))
    s[1] = np.nan
    yy = np.array([0.0, 0.0, np.nan])
    assert pit_central_coverage(s, yy).tolist()[1:] == [False, False]
    np.testing.assert_array_equal(pit_central_coverage(s, yy, seed=1),
                                  pit_central_coverage(s, yy, seed=1))
    with pytest.raises(ValueError, match="level"):
        pit_central_coverage(s, yy, level=1.0)
    with pytest.raises(ValueError, match="samples"):
        pit_central_coverage(s[0], yy)


def test_median_beat_scores_separate_shape_from_rate():
    """Over one cycle the median beat of a McSharry strip matches itself (r = 1) and nearly
    matches the same beat at 8% faster rate; over the 1.7-s window, which holds the next beat
    too, the faster strip scores clearly lower. The heart-rate error is signed; a flat line
    has no median beat (NaN); malformed input is rejected."""
    from ecg_world.cohort import _render_fn, lead_gains
    from ecg_world.world.evaluate import median_beat_scores
    from leads_jax.physics.mcsharry import McSharryECG

    fs, n = 250.0, 1024
    base = McSharryECG.default()
    one = _render_fn(n, fs, jnp.asarray(lead_gains(["II", "V2"])))
    wave = jax.jit(jax.vmap(lambda hr: one(base.ti, base.ai, base.bi, hr)))
    x = np.asarray(wave(jnp.asarray([65.0, 70.2], jnp.float32)))
    truth = np.stack([x[0], x[0], x[0]])
    pred = np.stack([x[0], x[1], np.zeros_like(x[0])])
    s = median_beat_scores(pred, truth, fs)
    assert s["r_cycle"][0] > 0.9999 and s["r_window"][0] > 0.9999
    assert abs(s["hr_error_bpm"][0]) < 0.5
    assert s["r_cycle"][1] > 0.95 and s["r_window"][1] < s["r_cycle"][1] - 0.05, s
    assert 3.0 < s["hr_error_bpm"][1] < 7.0
    assert np.isnan(s["r_cycle"][2]) and np.isnan(s["r_window"][2])
    with pytest.raises(ValueError, match="both be"):
        median_beat_scores(pred[:, 0], truth[:, 0], fs)
    with pytest.raises(ValueError, match="lead index"):
        median_beat_scores(pred, truth, fs, lead=2)


def test_plausibility_passes_true_strips_cut_at_any_phase():
    """McSharry strips (4.1 s at 250 Hz, 55-95 bpm) started at every phase of the beat, so
    that a beat is cut at either edge, pass all four rules; an amplified copy fails the
    amplitude rule against its input's own amplitude (per-strip reference), a flat line the
    beat count, and a malformed reference is rejected."""
    from ecg_world.cohort import _render_fn, lead_gains
    from ecg_world.world.evaluate import plausibility
    from leads_jax.physics.mcsharry import McSharryECG

    fs, n = 250.0, 1024
    base = McSharryECG.default()  # rendered as the cohort renders its leads II and V2
    one = _render_fn(2 * n, fs, jnp.asarray(lead_gains(["II", "V2"])))
    wave = jax.jit(jax.vmap(lambda hr: one(base.ti, base.ai, base.bi, hr)))
    hrs = np.array([55.0, 70.0, 95.0], np.float32)
    long = np.asarray(wave(hrs))  # (hr, lead, 2n)
    strips = np.stack([long[i, :, s:s + n] for i in range(len(hrs)) for s in range(0, 260, 20)])
    ref = np.ptp(strips, axis=-1)  # (n, lead)
    m = len(strips)
    # one call (one compile): the true strips, 3x amplified copies, a flat line
    batch = np.concatenate([strips, 3.0 * strips[:4], np.zeros((1, 2, n), np.float32)])
    rules = plausibility(batch, fs, np.concatenate([ref, ref[:4], ref[:1]]))
    ok = {k: v[:m] for k, v in rules.items()}
    assert ok["plausible"].all(), {k: np.flatnonzero(~v) for k, v in ok.items()}
    assert not rules["amplitude"][m:m + 4].any() and rules["order"][m:m + 4].all()
    assert not rules["plausible"][m + 4]
    with pytest.raises(ValueError, match="amp_range"):
        plausibility(strips[:4], fs, np.ones(3))
