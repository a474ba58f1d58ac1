"""Training of the world model: data -> anchor (cached) -> autoencoder -> latent diffusion.

``ecg-world train --data cohort.nc --out models/NAME [--preset quick|full] [--no-anchor]
--seed S [--resume]`` runs :func:`train`:

1. **Data:** the cohort netCDF is read into an :class:`ecg_world.batch.ECGBatch`; the pairs
   come from :func:`ecg_world.world.data.pairs_from_batch` (the cohort's patient splits;
   the truth perturbations seeded by ``--seed``). The pharmacology is the committed
   calibration on the cohort's own drug library (it travels in the netCDF).
2. **Anchor** (:mod:`ecg_world.world.anchor`): every patient's pre strip is fitted once
   (batched, jitted) and every action applied; the anchor's post strips are cached next to the
   cohort (``<cohort>.anchor-<hash>.nc``, or in the model directory when that folder is not
   writable), keyed by the SHA-256 of the cohort file and the settings.
3. **Autoencoder** on the training patients' pre and post strips (MSE, Adam).
4. **Latent diffusion** on the training pairs (v-prediction + the anchor term; EMA weights).

**Data parallel:** a 1-D ``Mesh`` over ``jax.devices()``; every batch is placed with
``NamedSharding(mesh, P("batch"))`` and the parameters replicated (``P()``); ``jit`` follows
the data, so the same code runs on one CPU, several forced CPU devices, or accelerators. The
batches are drawn on the host from ``(seed, stage, step)`` and the noise from
``fold_in(key, step)``, so the loss curve does not depend on the number of devices (to float
rounding of the reductions) and a resumed run continues the same curve.

**Checkpoints:** every ``checkpoint_every`` steps (and at the end of each stage) the whole
training state (weights, optimizer states, EMA, loss history, stage and step) is written
with orbax to a temporary folder and renamed into ``OUT/checkpoint`` (atomic on POSIX);
``--resume`` continues from it. The final model directory is written by
:func:`ecg_world.world.model.save_model`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import shutil
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import xarray as xr
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from .. import __version__ as ECG_WORLD_VERSION
from .anchor import AnchorConfig, anchor_from_strips
from .autoencoder import AEConfig, reconstruction_loss
from .data import PairSet, StripSpec, pairs_from_batch, strips_from_record
from .diffusion import GUIDANCE_RULE, DiffusionConfig, diffusion_loss
from .model import WorldModel, fill_pure, replace_dir, save_model

__all__ = ["TrainConfig", "PRESETS", "train", "prepare_data", "Prepared", "ludb_tuning_strips"]


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Every setting of a training run (saved in the model's config.json)."""

    ae_steps: int = 600
    ae_batch: int = 32
    ae_lr: float = 2e-3
    diff_steps: int = 2000
    diff_batch: int = 64
    diff_lr: float = 1e-3
    hidden: int = 256
    n_blocks: int = 2
    ema_decay: float = 0.995
    anchor_scale: float = 0.1
    anchor_power: float = 1.0
    anchor_steps: int = 600
    guidance_scale: float = 0.0
    guidance_power: float = 1.0
    guidance_spread: float = 1.0
    guidance_target: str = "post"
    ae_real_share: float = 0.25
    use_anchor: bool = True
    checkpoint_every: int = 500
    seed: int = 0
    ae_channels: tuple[int, ...] = (16, 32, 32, 64, 64)
    latent_channels: int = 8

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["ae_channels"] = list(self.ae_channels)
        return d


#: ``quick``: about 9 min on a 2-core CPU for a 96-patient cohort (autoencoder 3,000 steps,
#: diffusion 20,000). Its anchor guidance (target the anchor's post latent, g = 2, q = 4,
#: rho = 0.15) was chosen on the *validation* patients of ``ecg-world synth --n-patients 96
#: --seed 1`` by ``benchmarks/world_model_guidance.py``: the lowest QTcF CRPS among the grid
#: points whose 90% PIT coverage lies in [0.85, 0.95] (the benchmark reports the test
#: patients). The guidance acts at sampling only, so changing it needs no retraining.
#: ``full``: the same recipe, larger and longer; meant for an accelerator, not yet run on one.
PRESETS: dict[str, TrainConfig] = {
    "quick": TrainConfig(ae_steps=3000, diff_steps=20000, checkpoint_every=2000,
                         guidance_scale=2.0, guidance_power=4.0, guidance_spread=0.15),
    "full": TrainConfig(ae_steps=12000, ae_batch=64, diff_steps=60000, diff_batch=128,
                        hidden=512, n_blocks=3, ema_decay=0.999, anchor_steps=1000,
                        checkpoint_every=4000, guidance_scale=2.0, guidance_power=4.0,
                        guidance_spread=0.15),
}


@dataclasses.dataclass
class Prepared:
    """The pairs and the anchor's post strips (and its fitted pre strips, whose difference
    is the ODE's predicted change), ready for training and evaluation."""

    pairs: PairSet
    anchor_post: np.ndarray  # (N, L, S) mV
    anchor_fit_rmse: np.ndarray  # (patients,) mV, of the pre-strip fits
    pharm: object
    data_sha256: str
    anchor_pre: np.ndarray | None = None  # (N, L, S) mV, the fit of each pair's pre strip


def _sha256_file(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _cohort_pharmacology(batch):
    from ..calibrated import default_calibration

    return default_calibration().with_library(batch.library).pharmacology


def prepare_data(data: str | pathlib.Path, *, seed: int = 0, anchor_steps: int = 300,
                 cache_dir: str | pathlib.Path | None = None, spec: StripSpec | None = None,
                 verbose: bool = True) -> Prepared:
    """Read the cohort, build the pairs and the (cached) anchor post strips."""
    from ..batch import ECGBatch

    data = pathlib.Path(data)
    if not data.is_file():
        raise FileNotFoundError(f"cohort file not found: {data} (make one with `ecg-world "
                                "synth --n-patients N --out cohort.nc`)")
    batch = ECGBatch.from_netcdf(data)
    pharm = _cohort_pharmacology(batch)
    pairs = pairs_from_batch(batch, pharm, spec, seed=seed)
    if len(pairs.split_index("train")) == 0:
        raise ValueError(f"{data}: no training patients (split 'train' is empty)")
    acfg = AnchorConfig(sampling_rate=pairs.spec.sampling_rate, n_steps=int(anchor_steps))
    sha = _sha256_file(data)
    key = hashlib.sha256(json.dumps(
        [sha, pairs.spec.to_dict(), dataclasses.asdict(acfg), seed, list(pairs.drug_names),
         ECG_WORLD_VERSION], sort_keys=True).encode()).hexdigest()[:16]
    cache = data.with_name(f"{data.name}.anchor-{key}.nc")
    if cache_dir is not None or not os.access(data.parent, os.W_OK):
        cache = pathlib.Path(cache_dir or ".") / cache.name
    patients, first = np.unique(np.asarray(pairs.patient), return_index=True)
    where = np.searchsorted(patients, np.asarray(pairs.patient))
    if cache.is_file():
        ds = xr.load_dataset(cache, engine="h5netcdf")
        if (ds.attrs.get("key") == key and ds["anchor_post"].shape == pairs.post.shape
                and "anchor_pre" in ds):
            return Prepared(pairs, ds["anchor_post"].values, ds["fit_rmse"].values, pharm, sha,
                            ds["anchor_pre"].values[where])
    t0 = time.perf_counter()
    pre = np.asarray(pairs.pre)[first]
    # fit each patient's pre strip once, then apply every action of that patient
    fit, _, _ = anchor_from_strips(pre, _actions(pairs, first), pharm, acfg)
    from .anchor import anchor_post_strips, anchor_pre_strips

    fit_pre = np.asarray(anchor_pre_strips(fit, n_samples=pairs.spec.n_samples, config=acfg))
    fit_all = jax.tree_util.tree_map(lambda x: x[where], fit)
    post, _ = anchor_post_strips(fit_all, _actions(pairs, None), pharm,
                                 n_samples=pairs.spec.n_samples, config=acfg)
    post = np.asarray(post)
    if verbose:
        print(f"anchor: fitted {len(patients)} pre strips and simulated {post.shape[0]} post "
              f"strips in {time.perf_counter() - t0:.1f} s (median fit r = "
              f"{float(np.median(np.asarray(fit.corr))):.3f})", file=sys.stderr)
    ds = xr.Dataset({"anchor_post": (("pair", "lead", "time"), post, {"units": "mV"}),
                     "fit_rmse": (("patient",), np.asarray(fit.rmse), {"units": "mV"}),
                     "fit_corr": (("patient",), np.asarray(fit.corr)),
                     "anchor_pre": (("patient", "lead", "time"), fit_pre, {"units": "mV"})},
                    attrs={"key": key, "cohort_sha256": sha,
                           "anchor_config": json.dumps(dataclasses.asdict(acfg))})
    try:
        tmp = cache.with_name(cache.name + ".tmp")
        ds.to_netcdf(tmp, engine="h5netcdf")
        os.replace(tmp, cache)
    except OSError as err:
        print(f"anchor cache not written ({err})", file=sys.stderr)
    return Prepared(pairs, post, np.asarray(fit.rmse), pharm, sha, fit_pre[where])


def _actions(pairs: PairSet, index):
    from ..actions import Action

    if index is None:
        return Action(pairs.drug, pairs.dose_mg, pairs.time_h, pairs.drug_names, check=False)
    i = np.asarray(index)
    return Action(pairs.drug[i], pairs.dose_mg[i], pairs.time_h[i], pairs.drug_names,
                  check=False)


# --------------------------------------------------------------------------- training state


def _mesh(devices):
    return Mesh(np.array(list(devices)), ("batch",))


def _replicate(tree, mesh):
    return jax.device_put(tree, NamedSharding(mesh, P()))


def _shard_batch(arrays, mesh):
    return jax.device_put(arrays, NamedSharding(mesh, P("batch")))


def _batch_index(seed: int, stage: int, step: int, n: int, size: int) -> np.ndarray:
    return np.random.default_rng((int(seed), int(stage), int(step))).integers(0, n, size)


def _checkpoint(out: pathlib.Path, tree: dict, progress: dict) -> None:
    import orbax.checkpoint as ocp

    final = out / "checkpoint"
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=".checkpoint.", dir=out))
    try:
        ocp.PyTreeCheckpointer().save(tmp / "state",
                                      jax.tree_util.tree_map(np.asarray, tree))
        (tmp / "progress.json").write_text(json.dumps(progress, indent=1))
        replace_dir(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _load_checkpoint(out: pathlib.Path):
    import orbax.checkpoint as ocp

    final = out / "checkpoint"
    if not (final / "progress.json").is_file() or not (final / "state").is_dir():
        return None
    progress = json.loads((final / "progress.json").read_text())
    return progress, ocp.PyTreeCheckpointer().restore(final / "state")


def _pbar(total, desc, initial=0):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, initial=initial, file=sys.stderr,
                disable=False, mininterval=2.0, dynamic_ncols=True)


def ludb_tuning_strips(directory: str | pathlib.Path, spec: StripSpec, *,
                       starts_s=(0.5, 3.0, 5.5)) -> tuple[np.ndarray, list[str]]:
    """Unlabelled real strips for the autoencoder: every LUDB record in `directory` that falls
    in the **tuning** split (:func:`ecg_world.ludb.ludb_split`; the reporting split is never
    read here, so the benchmark's LUDB check stays out of sample), cut at `starts_s`.
    Returns ``(strips (n, lead, time) mV, record ids)``."""
    from ..ludb import ludb_record_ids, ludb_split, read_ludb_record

    directory = pathlib.Path(directory)
    ids = [r for r in ludb_record_ids(directory) if ludb_split(r) == "tuning"]
    if not ids:
        raise ValueError(f"{directory}: no LUDB records of the tuning split found")
    out = []
    for rid in ids:
        rec = read_ludb_record(directory / rid, leads=list(spec.leads))
        fs = float(rec.ecg.attrs["sampling_rate"])
        for t0 in starts_s:
            out.append(strips_from_record(rec.ecg.values, list(spec.leads), fs, spec,
                                          start_s=t0))
    return np.stack(out).astype(np.float32), ids


def train(data: str | pathlib.Path, out: str | pathlib.Path, config: TrainConfig = TrainConfig(),
          *, resume: bool = False, command: str | None = None,
          prepared: Prepared | None = None, verbose: bool = True,
          devices=None, real_strips: tuple[np.ndarray, dict] | None = None
          ) -> tuple[WorldModel, dict]:
    """Train a world model on a cohort netCDF; write the model directory `out`.

    ``devices``: the devices the batch axis is sharded over (default ``jax.devices()``).
    ``real_strips``: ``(strips (n, lead, time), provenance dict)``, unlabelled real strips
    (e.g. :func:`ludb_tuning_strips`) that join the autoencoder's training pool, repeated so
    that they make up ``config.ae_real_share`` of it; the provenance goes into the config.

    Returns the model and a history dict (``ae_loss`` (steps,), ``diff_loss`` (steps, 3):
    total, v term, anchor term). See the module docstring.
    """
    out = pathlib.Path(out)
    cfg = config
    devices = jax.devices() if devices is None else list(devices)
    if not devices:
        raise ValueError("devices: give at least one device")
    n_dev = len(devices)
    for name in ("ae_batch", "diff_batch"):
        if getattr(cfg, name) % n_dev:
            raise ValueError(f"{name} = {getattr(cfg, name)} must be a multiple of the number "
                             f"of devices ({n_dev}) for data-parallel training")
    ckpt = None
    if resume:
        ckpt = _load_checkpoint(out)
        if ckpt is None:
            raise FileNotFoundError(f"--resume: no checkpoint in {out}/checkpoint")
        if ckpt[0]["config"] != cfg.to_dict():
            raise ValueError(f"--resume: the checkpoint in {out} was made with another "
                             f"training config ({ckpt[0]['config']}); use the same settings")
    elif (out / "checkpoint").exists() or (out / "config.json").exists():
        raise ValueError(f"{out} already holds a model or checkpoint; pass --resume to "
                              "continue it or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    prep = prepared or prepare_data(data, seed=cfg.seed, anchor_steps=cfg.anchor_steps,
                                    verbose=verbose)
    pairs = prep.pairs
    spec = pairs.spec
    aec = AEConfig(n_leads=len(spec.leads), n_samples=spec.n_samples,
                   channels=tuple(cfg.ae_channels), latent_channels=cfg.latent_channels,
                   stem_channels=cfg.ae_channels[0])
    dfc = DiffusionConfig(latent_dim=aec.latent_dim, hidden=cfg.hidden, n_blocks=cfg.n_blocks,
                          anchor_scale=cfg.anchor_scale if cfg.use_anchor else 0.0,
                          anchor_power=cfg.anchor_power, ema_decay=cfg.ema_decay,
                          guidance_scale=cfg.guidance_scale if cfg.use_anchor else 0.0,
                          guidance_power=cfg.guidance_power,
                          guidance_spread=cfg.guidance_spread,
                          guidance_target=cfg.guidance_target)
    model = WorldModel.create(spec, aec, dfc, seed=cfg.seed)
    mesh = _mesh(devices)
    tr = pairs.split_index("train")
    _, first = np.unique(np.asarray(pairs.patient)[tr], return_index=True)
    ae_strips = np.concatenate([np.asarray(pairs.pre)[tr][first], np.asarray(pairs.post)[tr]])
    real_meta = None
    if real_strips is not None:
        xr_, info = real_strips
        xr_ = np.asarray(xr_, np.float32)
        if xr_.ndim != 3 or xr_.shape[1:] != ae_strips.shape[1:] or not np.isfinite(xr_).all():
            raise ValueError(f"real_strips must be finite strips of shape (n, "
                             f"{ae_strips.shape[1]}, {ae_strips.shape[2]}); got {xr_.shape}")
        share = float(cfg.ae_real_share)
        if not 0.0 < share < 1.0:
            raise ValueError(f"ae_real_share must be in (0, 1) (got {share})")
        reps = max(1, int(round(share / (1.0 - share) * ae_strips.shape[0] / xr_.shape[0])))
        ae_strips = np.concatenate([ae_strips, np.tile(xr_, (reps, 1, 1))])
        real_meta = {**info, "n_strips": int(xr_.shape[0]), "repeats": reps,
                     "share": round(reps * xr_.shape[0] / ae_strips.shape[0], 4)}
    history = {"ae_loss": [], "diff_loss": []}
    stage0, step0 = "ae", 0
    ae_opt = nnx.Optimizer(model.autoencoder, optax.adam(cfg.ae_lr), wrt=nnx.Param)
    den_opt = nnx.Optimizer(model.denoiser, optax.adam(cfg.diff_lr), wrt=nnx.Param)
    ema = nnx.state(model.denoiser, nnx.Param)
    if ckpt is not None:
        progress, tree = ckpt
        stage0, step0 = progress["stage"], int(progress["step"])
        history = {"ae_loss": list(progress["history"]["ae_loss"]),
                   "diff_loss": [list(v) for v in progress["history"]["diff_loss"]]}
        for obj, k in ((model.autoencoder, "ae"), (ae_opt, "ae_opt"), (model.denoiser, "den"),
                       (den_opt, "den_opt")):
            st = nnx.state(obj)
            nnx.replace_by_pure_dict(st, fill_pure(nnx.to_pure_dict(st), tree[k], k))
            nnx.update(obj, st)
        ema_pure = fill_pure(nnx.to_pure_dict(ema), tree["ema"], "ema")
        nnx.replace_by_pure_dict(ema, ema_pure)
        if verbose:
            print(f"resuming at stage {stage0}, step {step0}", file=sys.stderr)

    def save_ckpt(stage, step):
        tree = {"ae": nnx.to_pure_dict(nnx.state(model.autoencoder)),
                "ae_opt": nnx.to_pure_dict(nnx.state(ae_opt)),
                "den": nnx.to_pure_dict(nnx.state(model.denoiser)),
                "den_opt": nnx.to_pure_dict(nnx.state(den_opt)),
                "ema": nnx.to_pure_dict(ema)}
        _checkpoint(out, tree, {"stage": stage, "step": step, "config": cfg.to_dict(),
                                "history": history, "ecg_world_version": ECG_WORLD_VERSION})

    # ------------------------------------------------------------------ autoencoder
    if stage0 == "ae":
        gd, state = nnx.split((model.autoencoder, ae_opt))
        state = _replicate(state, mesh)

        @jax.jit
        def ae_step(state, x):
            m, opt = nnx.merge(gd, state)
            loss, grads = nnx.value_and_grad(reconstruction_loss)(m, x)
            opt.update(m, grads)
            return nnx.state((m, opt)), loss

        bar = _pbar(cfg.ae_steps, "autoencoder", step0) if verbose else None
        for step in range(step0, cfg.ae_steps):
            idx = _batch_index(cfg.seed, 0, step, ae_strips.shape[0], cfg.ae_batch)
            state, loss = ae_step(state, _shard_batch(jnp.asarray(ae_strips[idx]), mesh))
            history["ae_loss"].append(float(loss))
            if bar is not None:
                bar.update(1)
                bar.set_postfix(recon_mse=f"{float(loss):.2e}")
            if (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.ae_steps:
                nnx.update((model.autoencoder, ae_opt), state)
                save_ckpt("ae", step + 1)
        if bar is not None:
            bar.close()
        nnx.update((model.autoencoder, ae_opt), state)
        stage0, step0 = "diffusion", 0
        save_ckpt("diffusion", 0)

    # ------------------------------------------------------------------ latents and stats
    enc = nnx.jit(lambda m, x: m.encode(x))

    def encode(x):
        x = np.asarray(x)
        return np.concatenate([np.asarray(enc(model.autoencoder, jnp.asarray(x[i:i + 256])))
                               for i in range(0, x.shape[0], 256)])

    z_pre, z_post, z_anc = encode(pairs.pre), encode(pairs.post), encode(prep.anchor_post)
    pre_mean = z_pre[tr].mean(0)
    pre_std = z_pre[tr].std(0)
    pre_std = np.maximum(pre_std, 0.1 * np.median(pre_std) + 1e-6)
    dz = (z_post - z_pre)[tr]
    delta_std = np.sqrt(np.mean(dz ** 2, axis=0))
    delta_std = np.maximum(delta_std, 0.1 * np.median(delta_std) + 1e-6)
    model.pre_mean, model.pre_std, model.delta_std = (jnp.asarray(v, jnp.float32) for v in
                                                      (pre_mean, pre_std, delta_std))
    zp = ((z_pre - pre_mean) / pre_std).astype(np.float32)
    x0 = ((z_post - z_pre) / delta_std).astype(np.float32)
    xa = ((z_anc - z_pre) / delta_std).astype(np.float32)
    feats = np.asarray(pairs.features, np.float32)

    # ------------------------------------------------------------------ diffusion
    if stage0 == "diffusion":
        gd, state = nnx.split((model.denoiser, den_opt))
        state, ema_r = _replicate((state, ema), mesh)
        base_key = jax.random.key(cfg.seed + 1)
        decay = cfg.ema_decay

        @jax.jit
        def diff_step(state, ema, batch, step):
            m, opt = nnx.merge(gd, state)
            key = jax.random.fold_in(base_key, step)
            (loss, (lv, la)), grads = nnx.value_and_grad(diffusion_loss, has_aux=True)(
                m, batch[0], batch[1], batch[2], batch[3], key, dfc)
            opt.update(m, grads)
            params = nnx.state(m, nnx.Param)
            ema = jax.tree_util.tree_map(lambda e, p: decay * e + (1.0 - decay) * p, ema,
                                         params)
            return nnx.state((m, opt)), ema, jnp.stack([loss, lv, la])

        bar = _pbar(cfg.diff_steps, "diffusion", step0) if verbose else None
        for step in range(step0, cfg.diff_steps):
            idx = tr[_batch_index(cfg.seed, 1, step, tr.size, cfg.diff_batch)]
            b = _shard_batch(tuple(jnp.asarray(a[idx]) for a in (x0, zp, feats, xa)), mesh)
            state, ema_r, terms = diff_step(state, ema_r, b, jnp.int32(step))
            t = [float(v) for v in np.asarray(terms)]
            history["diff_loss"].append(t)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(total=f"{t[0]:.3f}", v=f"{t[1]:.3f}", anchor=f"{t[2]:.3f}")
            if (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.diff_steps:
                nnx.update((model.denoiser, den_opt), state)
                ema = ema_r
                save_ckpt("diffusion", step + 1)
        if bar is not None:
            bar.close()
        nnx.update((model.denoiser, den_opt), state)
        ema = ema_r
        save_ckpt("done", cfg.diff_steps)
    # sampling uses the EMA weights
    nnx.update(model.denoiser, jax.device_get(ema))
    model.meta = {"training": cfg.to_dict(), "command": command,
                  "data": {"path": str(data), "sha256": prep.data_sha256},
                  "drug_library": list(pairs.drug_names),
                  "anchor": {"use_anchor": cfg.use_anchor, "scale": dfc.anchor_scale,
                             "power": dfc.anchor_power,
                             "schedule": "lambda(t) = scale * alpha_t^(2 power), alpha_t = "
                                         "cos(pi t / 2)",
                             "guidance_scale": dfc.guidance_scale,
                             "guidance_power": dfc.guidance_power,
                             "guidance_spread": dfc.guidance_spread,
                             "guidance_target": dfc.guidance_target,
                             "guidance": GUIDANCE_RULE},
                  "devices": n_dev,
                  "ae_real_strips": real_meta,
                  "final_losses": {"ae": history["ae_loss"][-1] if history["ae_loss"] else None,
                                   "diffusion": history["diff_loss"][-1]
                                   if history["diff_loss"] else None}}
    save_model(model, out)
    return model, {"ae_loss": np.asarray(history["ae_loss"]),
                   "diff_loss": np.asarray(history["diff_loss"]).reshape(-1, 3)}

