"""The trained world model as one object, and its model directory (safe formats only).

A :class:`WorldModel` holds the strip spec, the autoencoder, the denoiser (its EMA weights are
the ones used for sampling), and the latent statistics (mean/SD of the pre latents, SD of the
pre -> post change) that standardise the diffusion space.

**Model directory** (``models/NAME/``):

- ``config.json``: schema version, ``ecg_world`` package version, the strip, autoencoder and
  diffusion configs, the training config and command, the calibration's provenance, the
  training data's SHA-256, and the files below with their SHA-256;
- ``weights/``: an orbax PyTree checkpoint of plain numpy arrays (autoencoder, EMA
  denoiser, statistics). Never pickle.

:func:`load_model` checks that every file is there, the schema and package versions, the
hashes, and that the weights' shapes match the config, each with an error that says what
to fix.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import shutil
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from .. import __version__ as ECG_WORLD_VERSION
from .autoencoder import AEConfig, ECGAutoencoder
from .data import StripSpec
from .diffusion import Denoiser, DiffusionConfig

__all__ = ["WorldModel", "save_model", "load_model", "replace_dir", "ModelFormatError",
           "SCHEMA_VERSION"]

SCHEMA_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_DIR = "weights"


class ModelFormatError(ValueError):
    """A model directory that cannot be loaded (missing files, other version, mismatch)."""


@dataclasses.dataclass
class WorldModel:
    """Autoencoder + EMA denoiser + latent statistics (see the module docstring)."""

    spec: StripSpec
    ae_config: AEConfig
    diffusion_config: DiffusionConfig
    autoencoder: ECGAutoencoder
    denoiser: Denoiser
    pre_mean: jax.Array
    pre_std: jax.Array
    delta_std: jax.Array
    meta: dict = dataclasses.field(default_factory=dict)

    @classmethod
    def create(cls, spec: StripSpec, ae_config: AEConfig, diffusion_config: DiffusionConfig,
               *, seed: int) -> WorldModel:
        k1, k2 = jax.random.split(jax.random.key(seed))
        ae = ECGAutoencoder(ae_config, rngs=nnx.Rngs(params=k1))
        den = Denoiser(diffusion_config, rngs=nnx.Rngs(params=k2))
        d = ae_config.latent_dim
        return cls(spec, ae_config, diffusion_config, ae, den, jnp.zeros(d), jnp.ones(d),
                   jnp.ones(d))

    def weights(self) -> dict:
        """All arrays as a nested dict of numpy arrays (the checkpoint's content)."""
        to_np = lambda t: jax.tree_util.tree_map(np.asarray, t)
        return {"autoencoder": to_np(nnx.to_pure_dict(nnx.state(self.autoencoder))),
                "denoiser": to_np(nnx.to_pure_dict(nnx.state(self.denoiser))),
                "stats": {"pre_mean": np.asarray(self.pre_mean),
                          "pre_std": np.asarray(self.pre_std),
                          "delta_std": np.asarray(self.delta_std)}}

    def config_dict(self) -> dict:
        return {"strip": self.spec.to_dict(), "autoencoder": self.ae_config.to_dict(),
                "diffusion": self.diffusion_config.to_dict()}


def _sha256_tree(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def replace_dir(new: pathlib.Path, final: pathlib.Path) -> None:
    """Move the finished folder `new` to `final`, replacing a folder already there: the old
    one is renamed aside (``.NAME.old``) first and removed after, so `final` is never a
    half-written folder (renames are atomic on POSIX)."""
    old = final.with_name(f".{final.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    new.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def save_model(model: WorldModel, out: str | pathlib.Path, *, extra: dict | None = None
               ) -> pathlib.Path:
    """Write the model directory: the weights into a temporary folder renamed into place,
    then ``config.json`` (last, by an atomic replace: a folder without it is incomplete).
    Other files in `out` (e.g. a training checkpoint) are left alone."""
    import orbax.checkpoint as ocp

    out = pathlib.Path(out).absolute()
    out.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=".save.", dir=out))
    try:
        ocp.PyTreeCheckpointer().save(tmp / WEIGHTS_DIR, model.weights())
        cfg = {"schema_version": SCHEMA_VERSION, "format": "ecg_world.world model directory",
               "ecg_world_version": ECG_WORLD_VERSION, **model.config_dict(),
               **model.meta, **(extra or {}),
               "files": {WEIGHTS_DIR: _sha256_tree(tmp / WEIGHTS_DIR)}}
        (tmp / CONFIG_FILE).write_text(json.dumps(cfg, indent=2, default=str) + "\n")
        (out / CONFIG_FILE).unlink(missing_ok=True)
        replace_dir(tmp / WEIGHTS_DIR, out / WEIGHTS_DIR)
        os.replace(tmp / CONFIG_FILE, out / CONFIG_FILE)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _key_str(entry) -> str:
    for attr in ("key", "idx", "name"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def _flat(tree) -> dict:
    return {"/".join(_key_str(k) for k in p): v
            for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def fill_pure(template, restored, what: str):
    """``restored`` (a nested dict read back from orbax; integer keys may come back as
    strings) in the structure and dtypes of ``template``; ``ModelFormatError`` on a
    mismatch."""
    flat_t, treedef = jax.tree_util.tree_flatten_with_path(template)
    got = _flat(restored)
    leaves = []
    for p, v in flat_t:
        k = "/".join(_key_str(e) for e in p)
        if k not in got or np.shape(got[k]) != np.shape(v):
            raise ModelFormatError(
                f"the {what} weights do not match the config (at {k!r}: expected shape "
                f"{np.shape(v)}, found {np.shape(got[k]) if k in got else 'nothing'}): the "
                "directory is corrupt, edited, or from another configuration")
        leaves.append(jnp.asarray(got[k], dtype=jnp.asarray(v).dtype))
    if len(got) != len(flat_t):
        raise ModelFormatError(f"the {what} weights have {len(got)} arrays, the config "
                               f"expects {len(flat_t)}")
    return jax.tree_util.tree_unflatten(treedef, leaves)


def restore_into(obj, pure: dict, what: str) -> None:
    """Load a pure dict (see :func:`fill_pure`) into an NNX object in place."""
    state = nnx.state(obj)
    nnx.replace_by_pure_dict(state, fill_pure(nnx.to_pure_dict(state), pure, what))
    nnx.update(obj, state)


def load_model(path: str | pathlib.Path, *, check_version: bool = True) -> WorldModel:
    """Load a model directory written by :func:`save_model` (see the module docstring)."""
    import orbax.checkpoint as ocp

    path = pathlib.Path(path).absolute()  # orbax reads absolute paths only
    if not path.is_dir():
        raise ModelFormatError(f"model directory not found: {path}")
    cfg_path = path / CONFIG_FILE
    if not cfg_path.is_file():
        raise ModelFormatError(f"{path} has no {CONFIG_FILE}: not an ecg_world model directory "
                               "(train one with `ecg-world train`)")
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as err:
        raise ModelFormatError(f"{cfg_path} is not valid JSON ({err})") from None
    if cfg.get("schema_version") != SCHEMA_VERSION:
        raise ModelFormatError(f"{cfg_path}: schema version {cfg.get('schema_version')!r}, this "
                               f"ecg_world reads {SCHEMA_VERSION}")
    if check_version and cfg.get("ecg_world_version") != ECG_WORLD_VERSION:
        raise ModelFormatError(
            f"{path} was written by ecg_world {cfg.get('ecg_world_version')!r}; this is "
            f"{ECG_WORLD_VERSION}: retrain with the command in config.json "
            f"({cfg.get('command', '?')!r}) or load with check_version=False at your own risk")
    wdir = path / WEIGHTS_DIR
    if not wdir.is_dir():
        raise ModelFormatError(f"{path} is missing {WEIGHTS_DIR}/ (the weights)")
    want = cfg.get("files", {}).get(WEIGHTS_DIR)
    if want is not None and _sha256_tree(wdir) != want:
        raise ModelFormatError(f"{wdir}: contents differ from the SHA-256 in config.json (a file "
                               "is missing, truncated or modified)")
    try:
        spec = StripSpec.from_dict(cfg["strip"])
        aec = AEConfig.from_dict(cfg["autoencoder"])
        dfc = DiffusionConfig.from_dict(cfg["diffusion"])
    except (KeyError, TypeError, ValueError) as err:
        raise ModelFormatError(f"{cfg_path}: malformed config ({err})") from None
    if aec.n_leads != len(spec.leads) or aec.n_samples != spec.n_samples \
            or dfc.latent_dim != aec.latent_dim:
        raise ModelFormatError(f"{cfg_path}: strip, autoencoder and diffusion configs disagree")
    try:
        w = ocp.PyTreeCheckpointer().restore(wdir)
    except Exception as err:  # orbax raises several types for a damaged checkpoint
        raise ModelFormatError(f"{wdir}: cannot read the weights ({err})") from None
    model = WorldModel.create(spec, aec, dfc, seed=0)
    restore_into(model.autoencoder, w["autoencoder"], "autoencoder")
    restore_into(model.denoiser, w["denoiser"], "denoiser")
    st = w["stats"]
    model.pre_mean, model.pre_std, model.delta_std = (
        jnp.asarray(st[k]) for k in ("pre_mean", "pre_std", "delta_std"))
    model.meta = {k: v for k, v in cfg.items()
                  if k not in ("strip", "autoencoder", "diffusion", "files")}
    return model
