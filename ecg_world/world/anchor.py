r"""The McSharry energy anchor: fit the kernel to a pre-intervention strip, apply the action
through the pharmacology, simulate the post-intervention strip.

The anchor is the ODE-only prediction of the post-intervention ECG. It uses the package's one
McSharry kernel (:func:`leads_jax.physics.mcsharry.ecg_waveform`, ``hr_scaling=
"physiological"``) and the calibrated pharmacology (:func:`ecg_world.pharmacology.
apply_action`, with the pharmacology passed explicitly); there is no second implementation
of either.

**Model of a strip** (``lead, time`` in mV): every lead is the kernel's ``z`` with shared wave
angles ``theta_i`` and widths ``b_i`` (P, Q, R, S, T; R fixed at angle 0), lead-specific
amplitudes ``a_{l,i}`` (the multi-lead construction of the kernel: one limit cycle, per-lead
gains on the waves), a per-lead offset and linear trend, a constant RR and the time of the first
R peak. ``z`` is linear in the amplitudes, so they start from the least-squares solution for the
default angles/widths (one ``lstsq`` per lead); RR and the first R peak start from
:func:`ecg_world.intervals.measure_intervals` on the first lead. Then all parameters are refined
jointly by Adam on the mean squared error (``n_steps`` steps, a ``lax.scan``), vmapped over the
batch and jitted: one compilation serves every batch of the same shape.

**Action:** the fitted beat is the 60-bpm parameter set of the kernel's physiological scaling,
so it is a :class:`~ecg_world.pharmacology.PatientParams` (population random effects: ``eta =
0``, the anchor does not know a patient's PK/PD deviations) to which ``apply_action`` applies
the drug; the post strip is simulated at the new heart rate with the first R peak at the same
time as in the pre strip.

**References.** McSharry PE, Clifford GD, Tarassenko L, Smith LA. A dynamical model for
generating synthetic electrocardiogram signals. IEEE Trans Biomed Eng 2003;50:289-294.
Clifford GD, Shoeb A, McSharry PE, Janz BA. Model-based filtering, compression and
classification of the ECG. Int J Bioelectromagnetism 2005;7:158-161 (fitting the Gaussian
parameters of the model to recorded beats by nonlinear least squares).
"""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Float

from leads_jax.physics.mcsharry import (
    ECGSYN_AI,
    ECGSYN_BI,
    ECGSYN_TI_DEGREES,
    McSharryECG,
    ecg_waveform,
)

from ..actions import Action
from ..intervals import IntervalConfig, measure_intervals
from ..pharmacology import PatientParams, Pharmacology, apply_action

__all__ = ["AnchorConfig", "AnchorFit", "fit_anchor", "simulate_strip", "anchor_post_strips",
           "anchor_pre_strips", "anchor_from_strips"]

_R = 2


@dataclasses.dataclass(frozen=True)
class AnchorConfig:
    """Static settings of the anchor fit (hashable; one compilation per config and shape).

    - `sampling_rate` (Hz), `warmup_s`: the kernel's ``z`` relaxes from its start value with a
      1-s time constant; a warm-up of this many seconds is simulated and cut off (e^-3 = 5 %
      of the start mismatch at 3 s, ~1e-3 mV for the cohort's beats).
    - `n_steps`, `learning_rate`: Adam refinement after the least-squares start.
    """

    sampling_rate: float = 250.0
    warmup_s: float = 3.0
    n_steps: int = 300
    learning_rate: float = 0.01

    @property
    def n_warm(self) -> int:
        return int(round(self.warmup_s * self.sampling_rate))


class AnchorFit(eqx.Module):
    """Fitted McSharry parameters of a batch of strips (60-bpm convention, radians).

    ``ti, bi`` (batch, 5) shared by the leads; ``ai`` (batch, lead, 5) per lead (mV units of
    the strip); ``offset, slope`` (batch, lead) in mV and mV/s; ``rr_s`` (batch) the RR in s;
    ``t_first_r`` (batch) the first R peak in s from the strip start; ``rmse`` (batch) mV and
    ``corr`` (batch) of the fitted strip against the data (over all leads).
    """

    ti: Float[Array, "*batch 5"]
    ai: Float[Array, "*batch lead 5"]
    bi: Float[Array, "*batch 5"]
    offset: Float[Array, "*batch lead"]
    slope: Float[Array, "*batch lead"]
    rr_s: Float[Array, "*batch"]
    t_first_r: Float[Array, "*batch"]
    rmse: Float[Array, "*batch"]
    corr: Float[Array, "*batch"]


def simulate_strip(ti, ai, bi, rr_s, t_first_r, offset, slope, *, n_samples: int,
                   config: AnchorConfig):
    """One strip (lead, time) of the kernel for one set of parameters (pure JAX).

    ``ti, bi`` (5,), ``ai`` (lead, 5), scalars ``rr_s`` (s), ``t_first_r`` (s from the strip
    start), ``offset, slope`` (lead,). Constant RR; R (angle 0) at ``t_first_r``.
    """
    fs = config.sampling_rate
    n_warm = config.n_warm
    omega = 2.0 * jnp.pi / rr_s
    phase0 = jnp.mod(-omega * (t_first_r + n_warm / fs), 2.0 * jnp.pi)
    t = jnp.arange(n_samples, dtype=jnp.float32) / fs

    def lead(a, off, sl):
        z = ecg_waveform(McSharryECG(ti, a, bi), rr=rr_s, n_samples=n_samples + n_warm,
                         sampling_rate=fs, hr_scaling="physiological", scale="none",
                         phase0=phase0, z_init=0.0, resp_amplitude=0.0)
        return z[n_warm:] + off + sl * t

    return jax.vmap(lead)(ai, offset, slope)


def _default_waves():
    ti = jnp.deg2rad(jnp.asarray(ECGSYN_TI_DEGREES, jnp.float32))
    return ti, jnp.asarray(ECGSYN_BI, jnp.float32)


def _lstsq_gain(x, ti, bi, rr, t_r, config):
    """Per-lead least-squares gain (on the default wave amplitudes), offset and slope for
    fixed angles and widths. (Free per-wave amplitudes are ill-conditioned here: the Q, R
    and S Gaussians overlap; the gradient refinement separates them.)"""
    n = x.shape[-1]
    a_def = jnp.asarray(ECGSYN_AI, jnp.float32)
    basis = simulate_strip(ti, a_def[None], bi, rr, t_r, jnp.zeros(1), jnp.zeros(1),
                           n_samples=n, config=config)[0]
    t = jnp.arange(n, dtype=jnp.float32) / config.sampling_rate
    design = jnp.stack([basis, jnp.ones(n), t], axis=1)  # (time, 3)
    coef = jnp.linalg.lstsq(design, x.T)[0]  # (3, lead)
    return coef[0][:, None] * a_def, coef[1], coef[2]


def _fit_one(x, rr0, tr0, config: AnchorConfig):
    ti0, bi0 = _default_waves()
    a0, off0, sl0 = _lstsq_gain(x, ti0, bi0, rr0, tr0, config)
    n = x.shape[-1]
    a_scale = jnp.maximum(jnp.max(jnp.abs(a0)), 1e-3)
    x_scale = jnp.maximum(jnp.std(x), 1e-3)
    params = {
        "ti": jnp.concatenate([ti0[:_R], ti0[_R + 1:]]),  # R fixed at angle 0
        "log_bi": jnp.log(bi0),
        "u": a0 / a_scale,
        "off": off0 / x_scale,
        "sl": sl0 / x_scale,
        "log_rr": jnp.log(rr0),
        "t_r": tr0,
    }

    def unpack(p):
        ti = jnp.concatenate([p["ti"][:_R], jnp.zeros(1), p["ti"][_R:]])
        return (ti, p["u"] * a_scale, jnp.exp(p["log_bi"]), jnp.exp(p["log_rr"]), p["t_r"],
                p["off"] * x_scale, p["sl"] * x_scale)

    def loss(p):
        y = simulate_strip(*unpack(p), n_samples=n, config=config)
        return jnp.mean(((y - x) / x_scale) ** 2)

    lr = config.learning_rate
    tx = optax.multi_transform(
        {"fast": optax.adam(lr), "slow": optax.adam(0.1 * lr)},
        {"ti": "fast", "log_bi": "fast", "u": "fast", "off": "fast", "sl": "fast",
         "log_rr": "slow", "t_r": "slow"},
    )
    state = tx.init(params)

    def step(carry, _):
        p, s = carry
        val, g = jax.value_and_grad(loss)(p)
        # a non-finite gradient (e.g. a beat shorter than the kernel's block) stops the fit
        # where it is instead of poisoning the parameters; the flag is the rmse below
        ok = jnp.all(jnp.stack([jnp.all(jnp.isfinite(v)) for v in jax.tree.leaves(g)]))
        upd, s_new = tx.update(g, s, p)
        p_new = optax.apply_updates(p, upd)
        p = jax.tree.map(lambda a, b: jnp.where(ok, a, b), p_new, p)
        s = jax.tree.map(lambda a, b: jnp.where(ok, a, b), s_new, s)
        return (p, s), val

    (params, _), _ = jax.lax.scan(step, (params, state), None, length=config.n_steps)
    ti, ai, bi, rr, t_r, off, sl = unpack(params)
    y = simulate_strip(ti, ai, bi, rr, t_r, off, sl, n_samples=n, config=config)
    rmse = jnp.sqrt(jnp.mean((y - x) ** 2))
    yc, xc = (y - y.mean()).ravel(), (x - x.mean()).ravel()
    corr = jnp.sum(yc * xc) / jnp.sqrt(jnp.sum(yc**2) * jnp.sum(xc**2))
    return AnchorFit(ti, ai, bi, off, sl, rr, t_r, rmse, corr)


@eqx.filter_jit
def _fit_batch(x, rr0, tr0, config: AnchorConfig):
    fit = jax.vmap(lambda a, b, c: _fit_one(a, b, c, config))(x, rr0, tr0)
    return fit


@eqx.filter_jit
def _rhythm(x, icfg: IntervalConfig):
    """Median RR (s) and first R peak (s) of every strip, read on its steepest lead (the one
    with the largest 99th percentile of |dx/dt|: the QRS dominates there, whereas in a lead
    with a small QRS and large T waves the detector may take T waves for beats)."""
    steep = jnp.percentile(jnp.abs(jnp.diff(x, axis=-1)), 99.0, axis=-1)  # (batch, lead)
    lead = jnp.argmax(steep, axis=-1)
    xs = jnp.take_along_axis(x, lead[:, None, None], axis=1)
    res = measure_intervals(xs, icfg)
    rr = res.median.rr[:, 0] / 1000.0
    rp = res.r_peak[:, 0]
    first = jnp.min(jnp.where(res.beat_mask[:, 0], rp, jnp.inf), axis=-1)
    return rr, first


def rhythm(strips, sampling_rate: float):
    """(median RR in s, first R peak in s) of each strip (on its steepest lead), with
    :func:`ecg_world.intervals.measure_intervals`. ``ValueError`` where no rhythm is found."""
    x = jnp.asarray(strips, jnp.float32)
    duration = x.shape[-1] / sampling_rate
    icfg = IntervalConfig.for_duration(sampling_rate, duration)
    rr, first = (np.asarray(v) for v in _rhythm(x, icfg))
    bad = ~np.isfinite(rr) | ~np.isfinite(first) | (rr < 0.25) | (rr > 2.5)
    if np.any(bad):
        raise ValueError(
            f"no regular rhythm found in strips {np.nonzero(bad)[0].tolist()} "
            f"(median RR {rr[bad].tolist()} s): the anchor needs at least two detectable beats "
            "with RR in [0.25, 2.5] s")
    return rr, first


def fit_anchor(strips: Float[Array, "batch lead time"] | np.ndarray,
               config: AnchorConfig = AnchorConfig(), *, rr_s=None,
               t_first_r=None) -> AnchorFit:
    """Fit the McSharry kernel to a batch of strips (mV; ``(batch, lead, time)``).

    RR and the first R peak start from `rr_s`/`t_first_r` if given (seconds, per strip),
    else from :func:`rhythm`. Returns an :class:`AnchorFit` (see the module docstring).
    """
    x = np.asarray(strips, np.float32)
    if x.ndim != 3:
        raise ValueError(f"strips must have shape (batch, lead, time); got {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("strips contain NaN/inf samples; repair them before the anchor fit")
    if rr_s is None or t_first_r is None:
        rr, first = rhythm(x, config.sampling_rate)
        rr_s = rr if rr_s is None else rr_s
        t_first_r = first if t_first_r is None else t_first_r
    rr_s = jnp.broadcast_to(jnp.asarray(rr_s, jnp.float32), (x.shape[0],))
    t_first_r = jnp.broadcast_to(jnp.asarray(t_first_r, jnp.float32), (x.shape[0],))
    return _fit_batch(jnp.asarray(x), rr_s, t_first_r, config)


def anchor_patient(fit: AnchorFit) -> PatientParams:
    """The fitted beats as patients of the pharmacology (leads on the wave parameters'
    batch axis, population random effects)."""
    nl = fit.ai.shape[-2]
    ti = jnp.broadcast_to(fit.ti[:, None, :], fit.ai.shape)
    bi = jnp.broadcast_to(fit.bi[:, None, :], fit.ai.shape)
    del nl
    return PatientParams(McSharryECG(ti, fit.ai, bi), 60.0 / fit.rr_s,
                         jnp.zeros(fit.rr_s.shape + (3,)), jnp.zeros(fit.rr_s.shape))


@eqx.filter_jit
def _post(fit: AnchorFit, action: Action, pharm: Pharmacology, n_samples: int,
          config: AnchorConfig):
    patients = anchor_patient(fit)

    def one(p, a, off, sl, t_r):
        q = apply_action(p, a, None, pharm)
        rr = 60.0 / q.heart_rate
        ti, bi = q.ecg.ti[0], q.ecg.bi[0]
        return simulate_strip(ti, q.ecg.ai, bi, rr, t_r, off, sl, n_samples=n_samples,
                              config=config), rr

    return jax.vmap(one)(patients, action, fit.offset, fit.slope, fit.t_first_r)


def anchor_post_strips(fit: AnchorFit, action: Action, pharm: Pharmacology, *,
                       n_samples: int, config: AnchorConfig = AnchorConfig()):
    """The anchor's post-intervention strips (batch, lead, time) in mV and their RR (s).

    `action` is a batch of actions (one per fitted strip); `pharm` the pharmacology
    (explicit: a caller's ``jit`` never captures a global one)."""
    return _post(fit, action, pharm, int(n_samples), config)


@eqx.filter_jit
def _pre(fit: AnchorFit, n_samples: int, config: AnchorConfig):
    def one(ti, ai, bi, rr, t_r, off, sl):
        return simulate_strip(ti, ai, bi, rr, t_r, off, sl, n_samples=n_samples, config=config)

    return jax.vmap(one)(fit.ti, fit.ai, fit.bi, fit.rr_s, fit.t_first_r, fit.offset, fit.slope)


def anchor_pre_strips(fit: AnchorFit, *, n_samples: int,
                      config: AnchorConfig = AnchorConfig()) -> Float[Array, "batch lead time"]:
    """The fitted pre strips themselves (batch, lead, time) in mV: the kernel at the fitted
    parameters, no action. ``anchor_post - anchor_pre`` is the change the ODE predicts, free of
    the fit's residual (what the McSharry form cannot express of the real strip)."""
    return _pre(fit, int(n_samples), config)


def anchor_from_strips(pre, action: Action, pharm: Pharmacology,
                       config: AnchorConfig = AnchorConfig(), *, rr_s=None, t_first_r=None):
    """Fit the pre strips and simulate the post strips: ``(fit, post, post_rr_s)``."""
    fit = fit_anchor(pre, config, rr_s=rr_s, t_first_r=t_first_r)
    post, rr = anchor_post_strips(fit, action, pharm, n_samples=np.shape(pre)[-1],
                                  config=config)
    return fit, post, rr


