"""Sampling post-intervention ECGs from a trained world model (``ecg-world simulate``).

:func:`rollouts` draws ``k`` rollouts for every (patient strip, action) row in ONE compiled call:
encode the pre strips, standardise, repeat ``k`` times, sample the standardised change with
DDIM or the ancestral sampler (one key per row and rollout, split from the seed's key), add it
to the pre latent and decode. :func:`simulate` is the user-facing wrapper (validated inputs,
``xarray`` output with dims ``rollout, lead, time``, units and provenance, and a figure).

**Time course.** Rollouts at successive times after the dose are drawn *independently*: each
time is its own condition and its own noise, so one rollout index at 1 h and at 3 h are not
the same imagined patient trajectory. (Coherent trajectories would share the start noise across
times; :func:`rollouts` does that when ``shared_noise_across_rows=True``, which the figure of
:func:`simulate` uses for several ``--hours``.)
"""

from __future__ import annotations

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr
from flax import nnx

from .. import __version__ as ECG_WORLD_VERSION
from ..actions import Action
from .data import action_features, strips_from_record
from .diffusion import GUIDANCE_TARGETS, sample_latents
from .model import WorldModel

__all__ = ["rollouts", "anchor_strips", "simulate", "read_input_strip", "SAMPLERS",
           "GUIDANCE_TARGETS"]

#: sampler name -> DDIM eta
SAMPLERS = {"ddim": 0.0, "ancestral": 1.0}

_CACHE: dict = {}


def _compiled(model: WorldModel, k: int, steps: int, eta: float, shared: bool,
              guidance: float, guidance_power: float, guidance_spread: float, change: bool):
    key = (id(model.autoencoder), id(model.denoiser), k, steps, eta, shared, guidance,
           guidance_power, guidance_spread, change)
    if key in _CACHE:
        return _CACHE[key]
    gd, state = nnx.split((model.autoencoder, model.denoiser))

    @jax.jit
    def run(state, pre, feats, anchor_post, anchor_base, key, pre_mean, pre_std, delta_std):
        ae, den = nnx.merge(gd, state)
        b = pre.shape[0]
        z_pre = ae.encode(pre)
        zp = (z_pre - pre_mean) / pre_std
        zp_k = jnp.repeat(zp, k, axis=0)
        f_k = jnp.repeat(feats, k, axis=0)
        xa_k = None
        if guidance > 0.0:
            base = ae.encode(anchor_base) if change else z_pre  # "post": anchor_base is pre
            xa_k = jnp.repeat((ae.encode(anchor_post) - base) / delta_std, k, axis=0)
        if shared:  # the same k noise streams for every row (a coherent time course)
            keys = jnp.concatenate([jax.random.split(key, k)] * b)
        else:
            keys = jax.random.split(key, b * k)
        x0 = sample_latents(den, zp_k, f_k, keys, steps=steps, eta=eta, x0_anchor=xa_k,
                            guidance=guidance, guidance_power=guidance_power,
                            guidance_spread=guidance_spread, group_size=k)
        z = jnp.repeat(z_pre, k, axis=0) + x0 * delta_std
        y = ae.decode(z)
        return y.reshape((b, k) + y.shape[1:])

    _CACHE.clear()
    _CACHE[key] = (run, state)
    return _CACHE[key]


def _strips(x, model: WorldModel, what: str):
    x = jnp.asarray(x, jnp.float32)
    want = (len(model.spec.leads), model.spec.n_samples)
    if x.ndim != 3 or tuple(x.shape[1:]) != want:
        raise ValueError(f"{what} must have shape (batch, {want[0]}, {want[1]}); got "
                         f"{tuple(x.shape)}")
    if not bool(jnp.all(jnp.isfinite(x))):
        raise ValueError(f"{what} contain NaN/inf samples")
    return x


def rollouts(model: WorldModel, pre, features, key, *, k: int, steps: int = 50,
             sampler: str = "ddim", shared_noise_across_rows: bool = False,
             anchor_post=None, guidance: float | None = None,
             guidance_spread: float | None = None, anchor_pre=None,
             guidance_target: str | None = None):
    """``(batch, k, lead, time)`` rollouts (mV) for pre strips ``(batch, lead, time)`` and
    action features ``(batch, F)`` (:func:`ecg_world.world.data.action_features`).

    `guidance` (default: the model's ``guidance_scale``) > 0 samples with the anchor's
    proximal step (:mod:`ecg_world.world.diffusion`) and then needs `anchor_post`, the
    McSharry anchor's post strips of the same rows (:func:`anchor_strips`). The guidance's
    target (`guidance_target`, default: the model's) is ``"post"``, the anchor's post latent
    (``x0_anchor = (E(anchor_post) - E(pre)) / s``), or ``"change"``, the anchor's predicted
    change added to the real pre latent (``x0_anchor = (E(anchor_post) - E(anchor_pre)) /
    s``), which then needs `anchor_pre`, the fit's own pre strips (:func:`anchor_strips`).
    `guidance_spread` (default: the model's; ``rho`` in [0, 1]) is how much the guidance
    shrinks the spread of a row's ``k`` rollouts around their mean (0: it moves only the mean;
    1: it pulls every rollout to the anchor)."""
    if int(k) < 1:
        raise ValueError(f"k (rollouts per patient) must be >= 1 (got {k})")
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; valid: {list(SAMPLERS)}")
    if int(steps) < 1:
        raise ValueError(f"steps must be >= 1 (got {steps})")
    dfc = model.diffusion_config
    g = float(dfc.guidance_scale if guidance is None else guidance)
    if not (np.isfinite(g) and g >= 0.0):
        raise ValueError(f"guidance must be finite and >= 0 (got {g})")
    rho = float(dfc.guidance_spread if guidance_spread is None else guidance_spread)
    if not 0.0 <= rho <= 1.0:
        raise ValueError(f"guidance_spread must be in [0, 1] (got {rho})")
    target = str(dfc.guidance_target if guidance_target is None else guidance_target)
    if target not in GUIDANCE_TARGETS:
        raise ValueError(f"unknown guidance target {target!r}; valid: {list(GUIDANCE_TARGETS)}")
    pre = _strips(pre, model, "pre strips")
    anchor_base = pre
    if g > 0.0:
        if anchor_post is None:
            raise ValueError(f"this model samples with anchor guidance {g:g}: pass anchor_post "
                             "(ecg_world.world.sample.anchor_strips) or guidance=0")
        anchor_post = _strips(anchor_post, model, "anchor_post strips")
        if anchor_post.shape[0] != pre.shape[0]:
            raise ValueError(f"anchor_post has {anchor_post.shape[0]} rows, pre {pre.shape[0]}")
        if target == "change":
            if anchor_pre is None:
                raise ValueError("guidance target 'change' needs anchor_pre, the anchor fit's "
                                 "pre strips (ecg_world.world.sample.anchor_strips)")
            anchor_base = _strips(anchor_pre, model, "anchor_pre strips")
            if anchor_base.shape[0] != pre.shape[0]:
                raise ValueError(f"anchor_pre has {anchor_base.shape[0]} rows, pre "
                                 f"{pre.shape[0]}")
    else:
        anchor_post = pre  # unused
    run, state = _compiled(model, int(k), int(steps), SAMPLERS[sampler],
                           bool(shared_noise_across_rows), g, float(dfc.guidance_power), rho,
                           g > 0.0 and target == "change")
    return run(state, pre, jnp.asarray(features, jnp.float32), anchor_post, anchor_base, key,
               model.pre_mean, model.pre_std, model.delta_std)


def anchor_strips(model: WorldModel, pre, actions: Action, pharm, *,
                  n_steps: int | None = None):
    """The McSharry anchor's post strips ``(n, lead, time)`` for ONE pre strip ``(lead,
    time)`` under ``n`` actions: one batched, jitted fit of the strip
    (:func:`ecg_world.world.anchor.fit_anchor`, the model's training ``anchor_steps`` unless
    `n_steps`), then the pharmacology per action. Returns ``(post, fit, fit_pre)``: the post
    strips, the fit, and the fitted pre strip repeated per action (``(n, lead, time)``, the
    ``anchor_pre`` of :func:`rollouts`)."""
    from .anchor import AnchorConfig, anchor_post_strips, anchor_pre_strips, fit_anchor

    steps = int(n_steps or model.meta.get("training", {}).get("anchor_steps", 600))
    acfg = AnchorConfig(sampling_rate=model.spec.sampling_rate, n_steps=steps)
    fit = fit_anchor(_strips(jnp.asarray(pre)[None], model, "pre strip"), acfg)
    n = int(np.size(actions.drug))
    fit_n = jax.tree_util.tree_map(lambda v: jnp.repeat(v, n, axis=0), fit)
    post, _ = anchor_post_strips(fit_n, actions, pharm, n_samples=model.spec.n_samples,
                                 config=acfg)
    fit_pre = anchor_pre_strips(fit, n_samples=model.spec.n_samples, config=acfg)
    return post, fit, jnp.repeat(fit_pre, n, axis=0)


def read_input_strip(record: str, spec, *, start_s: float = 0.0):
    """The pre strip (lead, time) of ``record``: a WFDB record path, or ``COHORT.nc:P`` (the
    baseline segment of patient index P of a cohort netCDF). Returns ``(strip, source)``."""
    record = str(record)
    if record.endswith(".nc"):
        raise ValueError(f"a cohort item is COHORT.nc:PATIENT_INDEX (got {record!r})")
    path, _, item = record.rpartition(":") if ".nc:" in record else (record, "", "")
    if path.endswith(".nc"):
        from ..batch import ECGBatch

        b = ECGBatch.from_netcdf(path)
        try:
            p = int(item)
        except ValueError:
            raise ValueError(f"cohort item must be COHORT.nc:PATIENT_INDEX (got {record!r})"
                             ) from None
        if not 0 <= p < b.signals.shape[0]:
            raise ValueError(f"patient index {p} outside the cohort (0..{b.signals.shape[0] - 1})")
        x = np.asarray(b.baseline_signals[p])
        return strips_from_record(x, b.lead_names, b.sampling_rate_hz, spec,
                                  start_s=start_s), f"{path} patient {p} (pre-dose)"
    from ..records import read_record

    rec = pathlib.Path(record)
    try:
        da = read_record(rec, nan_policy="raise")
    except KeyError as err:
        raise ValueError(str(err)) from None
    return (strips_from_record(da.values, [str(n) for n in da["lead"].values],
                               float(da.attrs["sampling_rate"]), spec, start_s=start_s),
            str(rec))


def simulate(model: WorldModel, pre: np.ndarray, actions: Action, pharm, *, k: int,
             seed: int = 0, steps: int = 50, sampler: str = "ddim",
             source: str = "", model_dir: str = "") -> xr.Dataset:
    """Rollouts for one pre strip under a batch of actions (e.g. one per time after dose).

    Returns an ``xarray.Dataset`` with ``ecg`` (time_after_dose, rollout, lead, time) in mV,
    the pre strip, and provenance attributes."""
    n = int(np.size(actions.drug))
    feats = action_features(pharm, actions)
    pre_b = jnp.broadcast_to(jnp.asarray(pre, jnp.float32)[None], (n,) + np.shape(pre))
    g = float(model.diffusion_config.guidance_scale)
    anchor, anchor_pre, fit_r = None, None, float("nan")
    if g > 0.0:
        anchor, fit, anchor_pre = anchor_strips(model, pre, actions, pharm)
        fit_r = float(np.asarray(fit.corr)[0])
    y = np.asarray(rollouts(model, pre_b, feats.reshape(n, -1), jax.random.key(seed), k=k,
                            steps=steps, sampler=sampler, anchor_post=anchor,
                            anchor_pre=anchor_pre))
    spec = model.spec
    t = np.arange(spec.n_samples) / spec.sampling_rate
    names = pharm.library.names
    drug = [names[int(d)] for d in np.ravel(np.asarray(actions.drug))]
    ds = xr.Dataset(
        {"ecg": (("time_after_dose", "rollout", "lead", "time"), y.astype(np.float32),
                 {"units": "mV", "long_name": "imagined post-intervention ECG"}),
         "pre_ecg": (("lead", "time"), np.asarray(pre, np.float32),
                     {"units": "mV", "long_name": "pre-intervention strip (input)"})},
        coords={"time_after_dose": ("time_after_dose", np.ravel(np.asarray(actions.time_h)),
                                    {"units": "h"}),
                "rollout": np.arange(int(k)), "lead": list(spec.leads),
                "time": ("time", t, {"units": "s"})},
        attrs={"title": "ecg_world world-model rollouts", "ecg_world_version":
               ECG_WORLD_VERSION, "model": str(model_dir), "input": source,
               "drug": json.dumps(drug), "dose_mg": json.dumps(
                   np.ravel(np.asarray(actions.dose_mg)).tolist()),
               "seed": int(seed), "sampler": sampler, "steps": int(steps),
               "time_course": "rollouts at different times are drawn independently",
               "anchor_guidance": g, "anchor_guidance_spread": float(
                   model.diffusion_config.guidance_spread),
               "anchor_guidance_target": str(model.diffusion_config.guidance_target),
               "anchor_fit_r": fit_r,
               "training_command": str(model.meta.get("command"))})
    return ds


def plot_rollouts(ds: xr.Dataset, path: str | pathlib.Path, intervals: dict | None = None):
    """Figure: the pre ECG, the mean rollout with its 90% band (per time after dose, lead II),
    and the median-beat intervals of the rollouts if given."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nt = ds.sizes["time_after_dose"]
    fig, axes = plt.subplots(nt + 1, 1, figsize=(10, 2.2 * (nt + 1)), sharex=True,
                             squeeze=False)
    t = ds["time"].values
    axes[0, 0].plot(t, ds["pre_ecg"].values[0], "k", lw=0.8)
    axes[0, 0].set_title(f"pre-intervention, lead {ds['lead'].values[0]} ({ds.attrs['input']})",
                         fontsize=9)
    for i in range(nt):
        y = ds["ecg"].values[i, :, 0]
        ax = axes[i + 1, 0]
        lo, hi = np.percentile(y, [5, 95], axis=0)
        ax.fill_between(t, lo, hi, color="C0", alpha=0.3, label="90% band")
        ax.plot(t, y.mean(0), "C0", lw=0.9, label="mean rollout")
        title = f"{json.loads(ds.attrs['drug'])[i]} at {float(ds['time_after_dose'][i]):g} h"
        if intervals is not None:
            title += "  |  " + ", ".join(f"{k} {v[i]:.0f} ms" for k, v in intervals.items())
        ax.set_title(title, fontsize=9)
        ax.set_ylabel("mV")
    axes[-1, 0].set_xlabel("time (s)")
    axes[1, 0].legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return pathlib.Path(path)
