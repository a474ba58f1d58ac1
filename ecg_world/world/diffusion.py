r"""Latent diffusion of the post-intervention ECG, conditioned on the pre latent and the action.

**What is diffused.** The autoencoder's latents of the pre and post strips, ``z_pre`` and
``z_post`` (256 numbers each), enter as the standardised change ``x0 = (z_post - z_pre) /
s`` (``s`` the per-dimension SD of the change over the training pairs, floored), so that the
prior ``N(0, I)`` matches the data's scale and "no change" is the origin.

**Noise process** (variance preserving, continuous time ``t`` in [0, 1]): ``x_t = alpha_t x0 +
sigma_t eps`` with the cosine schedule ``alpha_t = cos(pi t / 2)``, ``sigma_t = sin(pi t /
2)`` (Nichol A, Dhariwal P, Improved denoising diffusion probabilistic models, ICML 2021).
The network predicts ``v = alpha_t eps - sigma_t x0`` (Salimans T, Ho J, Progressive
distillation for fast sampling of diffusion models, ICLR 2022), so that ``x0_hat = alpha_t
x_t - sigma_t v_hat`` and ``eps_hat = sigma_t x_t + alpha_t v_hat``.

**Energy anchor term.** With ``x0_anchor = (z_anchor - z_pre) / s`` from the McSharry anchor
(:mod:`ecg_world.world.anchor`), the loss is

.. math::

    L = \mathbb E\,\|\hat v - v\|^2 / D + \lambda(t)\, \|\hat x_0(x_t, t) - x_0^{anchor}\|^2 / D,
    \qquad \lambda(t) = \lambda_0\, \alpha_t^{2p}

``alpha_t^2 = SNR/(1 + SNR)`` grows from 0 (pure noise) to 1 (clean) as the noise falls.
``lambda_0`` (``anchor_scale``, default 0.1) and ``p`` (``anchor_power``, default 1) are
configurable; ``anchor_scale = 0`` (``--no-anchor``) switches the term off.

*What the training term can and cannot do.* In terms of the clean latent the v term is
``||x0_hat - x0||^2 / sigma_t^2``, so the anchor's weight *relative* to the data is
``lambda(t) sigma_t^2 = lambda_0 alpha_t^2 sigma_t^2``: it vanishes at both ends of the noise
range and peaks at ``lambda_0 / 4`` at ``t = 1/2``. The minimiser is ``x0_hat = (E[x0 | x_t] +
lambda sigma^2 x0_anchor) / (1 + lambda sigma^2)``. A weight that stayed O(1) as ``sigma -> 0``
would ask a v-predicting network for outputs of order ``1 / sigma``, which it cannot give. So
the training term shapes the mid-noise steps only; at the default 0.1 it changes the model very
little (the benchmark measured the same hallucination rate with and without it).

**Anchor guidance at sampling** (the energy applied where the loss cannot): at every sampler step
the ``k`` clean-latent estimates of one condition (its rollouts, mean ``m``, deviations ``d_i =
x0_i - m``) are replaced by the minimiser of

.. math::

    \sum_i \|x_i - \hat x_{0,i}\|^2 + \gamma(t) \Big[\rho \sum_i \|x_i - x_0^{anchor}\|^2
    + (1 - \rho)\, k\, \|\bar x - x_0^{anchor}\|^2\Big], \qquad \gamma(t) = g\, \alpha_t^{2q},

an exact proximal step on the anchor energy. Its solution moves the mean and shrinks the
deviations separately:

.. math::

    \bar x \leftarrow (\hat m + \gamma\, x_0^{anchor}) / (1 + \gamma), \qquad
    d_i \leftarrow \hat d_i / (1 + \rho\gamma).

``eps_hat`` is re-derived from ``x_t`` and the moved ``x0_hat``, so the DDIM/ancestral update
stays consistent. ``gamma`` grows as the noise falls (stronger at low noise). ``g``
(``guidance_scale``), ``q`` (``guidance_power``) and ``rho`` (``guidance_spread``) live in the
config; ``g = 0`` (the ``--no-anchor`` models) samples without it. ``rho = 1`` pulls every
rollout to the anchor (``x0_i <- (x0_i + gamma x0_anchor) / (1 + gamma)``), which collapses the
rollouts' spread onto the anchor's single point; ``rho = 0`` moves only their mean and keeps the
spread the network learnt, treating the anchor as an estimate of the *expected* post ECG rather
than of every imagined one. With ``rho < 1`` the rollouts of one condition are coupled through
their mean (for ``k = 1`` the mean is the rollout and ``rho`` has no effect). The anchor latent
comes from the McSharry anchor of the same pre strip and action
(:func:`ecg_world.world.sample.anchor_strips`): by default (``guidance_target = "post"``)
``x0_anchor = (E(anchor_post) - z_pre) / s``; with ``"change"``, ``x0_anchor =
(E(anchor_post) - E(anchor_pre)) / s``, the ODE's predicted change between its own fitted pre
and post strips, so that the fit's residual (what the McSharry form cannot express of the real
strip) is not imported. ``benchmarks/world_model_guidance.py`` compares them on the validation
patients.

**Condition:** ``z_pre`` (standardised with the pre latents' mean and SD), the action's
continuous pharmacology (:func:`ecg_world.world.data.action_features`: block per channel at
that time, ECG effects of the shared map, dose, concentration, time since dose), and the
noise level (Fourier features of ``t``).

**Network:** an MLP with residual blocks (pre-LayerNorm, GELU), the condition embedding added
in every block (a shift, as the time embedding of DDPM's U-Net), a zero-initialised output.

**Samplers:** DDIM (``eta = 0``, deterministic given the start noise; Song J, Meng C, Ermon S,
Denoising diffusion implicit models, ICLR 2021) and ancestral (``eta = 1``, DDPM's posterior
noise; Ho J, Jain A, Abbeel P, NeurIPS 2020) on a uniform grid of ``steps`` in ``t``; every
rollout gets its own key (``jax.random.split``), so rollouts are reproducible for a seed; they
are independent across rollouts except through the mean of a guided group (``rho < 1``).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float, PRNGKeyArray

__all__ = ["DiffusionConfig", "Denoiser", "alpha_sigma", "anchor_weight", "diffusion_loss",
           "sample_latents", "GUIDANCE_TARGETS", "GUIDANCE_RULE"]

T_MIN, T_MAX = 1e-3, 1.0 - 1e-3
#: what the anchor guidance pulls toward (:func:`ecg_world.world.sample.rollouts`)
GUIDANCE_TARGETS = ("post", "change")
#: the guidance step in one line, as model configs record it
GUIDANCE_RULE = ("at sampling, per condition: mean <- (mean + gamma x0_anchor) / (1 + gamma), "
                 "deviations <- deviations / (1 + rho gamma), gamma = g alpha_t^(2 q)")


@dataclasses.dataclass(frozen=True)
class DiffusionConfig:
    """Hyperparameters of the denoiser and its loss (saved in the model's JSON config)."""

    latent_dim: int = 256
    n_features: int = 17
    hidden: int = 512
    n_blocks: int = 3
    time_features: int = 16
    anchor_scale: float = 0.1
    anchor_power: float = 1.0
    ema_decay: float = 0.995
    guidance_scale: float = 0.0
    guidance_power: float = 1.0
    guidance_spread: float = 1.0
    guidance_target: str = "post"

    def __post_init__(self):
        if not 0.0 <= float(self.guidance_spread) <= 1.0:
            raise ValueError(f"guidance_spread must be in [0, 1] (got {self.guidance_spread})")
        if self.guidance_target not in GUIDANCE_TARGETS:
            raise ValueError(f"guidance_target must be one of {GUIDANCE_TARGETS} (got "
                             f"{self.guidance_target!r})")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d) -> DiffusionConfig:
        return cls(**d)


def alpha_sigma(t):
    """Cosine VP schedule: ``(alpha_t, sigma_t)``."""
    t = jnp.clip(t, T_MIN, T_MAX)
    return jnp.cos(0.5 * jnp.pi * t), jnp.sin(0.5 * jnp.pi * t)


def anchor_weight(t, config: DiffusionConfig):
    """``lambda(t) = anchor_scale * alpha_t^(2 anchor_power)`` (0 when the anchor is off)."""
    a, _ = alpha_sigma(t)
    return config.anchor_scale * a ** (2.0 * config.anchor_power)


class _Block(nnx.Module):
    def __init__(self, hidden: int, *, rngs: nnx.Rngs):
        self.norm = nnx.LayerNorm(hidden, rngs=rngs)
        self.lin1 = nnx.Linear(hidden, hidden, rngs=rngs)
        self.lin2 = nnx.Linear(hidden, hidden, rngs=rngs)
        self.cond = nnx.Linear(hidden, hidden, rngs=rngs)

    def __call__(self, h, c):
        u = jax.nn.gelu(self.lin1(self.norm(h)) + self.cond(c))
        return h + self.lin2(u)


class Denoiser(nnx.Module):
    """``v_hat(x_t, t | z_pre, features)``; inputs ``(batch, D)``, ``(batch,)``, ``(batch, D)``,
    ``(batch, F)``."""

    def __init__(self, config: DiffusionConfig, *, rngs: nnx.Rngs):
        self.config = config
        c = config
        d_cond = c.latent_dim + c.n_features + 2 * c.time_features
        self.freqs = nnx.Variable(jnp.exp(jnp.linspace(0.0, jnp.log(200.0), c.time_features)))
        self.inp = nnx.Linear(c.latent_dim, c.hidden, rngs=rngs)
        self.cond1 = nnx.Linear(d_cond, c.hidden, rngs=rngs)
        self.cond2 = nnx.Linear(c.hidden, c.hidden, rngs=rngs)
        self.blocks = nnx.List([_Block(c.hidden, rngs=rngs) for _ in range(c.n_blocks)])
        self.norm = nnx.LayerNorm(c.hidden, rngs=rngs)
        self.out = nnx.Linear(c.hidden, c.latent_dim, kernel_init=nnx.initializers.zeros,
                              rngs=rngs)

    def __call__(self, x_t: Float[Array, "batch latent"], t: Float[Array, " batch"],
                 z_pre: Float[Array, "batch latent"], features: Float[Array, "batch feat"]
                 ) -> Float[Array, "batch latent"]:
        ang = t[:, None] * self.freqs[...][None, :]
        temb = jnp.concatenate([jnp.sin(ang), jnp.cos(ang)], axis=-1)
        c = jnp.concatenate([z_pre, features, temb], axis=-1)
        c = self.cond2(jax.nn.gelu(self.cond1(c)))
        h = self.inp(x_t)
        for blk in self.blocks:
            h = blk(h, c)
        return self.out(jax.nn.gelu(self.norm(h)))


def diffusion_loss(model: Denoiser, x0, z_pre, features, x0_anchor, key: PRNGKeyArray,
                   config: DiffusionConfig):
    """``(total, (v_term, anchor_term))`` of one batch (see the module docstring).

    `x0`, `x0_anchor`: standardised changes (batch, D); `z_pre` standardised pre latents."""
    kt, ke = jax.random.split(key)
    b = x0.shape[0]
    t = jax.random.uniform(kt, (b,), minval=T_MIN, maxval=T_MAX)
    eps = jax.random.normal(ke, x0.shape)
    a, s = alpha_sigma(t)
    x_t = a[:, None] * x0 + s[:, None] * eps
    v = a[:, None] * eps - s[:, None] * x0
    v_hat = model(x_t, t, z_pre, features)
    v_term = jnp.mean((v_hat - v) ** 2)
    x0_hat = a[:, None] * x_t - s[:, None] * v_hat
    w = anchor_weight(t, config)
    anchor_term = jnp.mean(w[:, None] * (x0_hat - x0_anchor) ** 2)
    return v_term + anchor_term, (v_term, anchor_term)


def sample_latents(model: Denoiser, z_pre: Float[Array, "batch latent"],
                   features: Float[Array, "batch feat"], keys, *, steps: int,
                   eta: float = 0.0, x0_anchor: Float[Array, "batch latent"] | None = None,
                   guidance: float = 0.0, guidance_power: float = 1.0,
                   guidance_spread: float = 1.0, group_size: int = 1
                   ) -> Float[Array, "batch latent"]:
    """Draw one standardised change ``x0`` per row (one key per row): DDIM for ``eta = 0``,
    ancestral for ``eta = 1`` (``steps`` uniform steps in ``t`` from 1 to 0). With
    ``guidance > 0`` every step applies the anchor's proximal step toward `x0_anchor` (module
    docstring), which is then required. The rows come in consecutive groups of `group_size`
    rollouts of one condition (the batch a multiple of it); `guidance_spread` (``rho`` in [0,
    1]) sets how much the step shrinks a group's spread around its mean."""
    if int(steps) < 1:
        raise ValueError(f"steps must be >= 1 (got {steps})")
    guidance = float(guidance)
    if not guidance >= 0.0:
        raise ValueError(f"guidance must be >= 0 (got {guidance})")
    if guidance > 0.0 and x0_anchor is None:
        raise ValueError("guidance > 0 needs x0_anchor (the anchor's standardised change)")
    rho = float(guidance_spread)
    if not 0.0 <= rho <= 1.0:
        raise ValueError(f"guidance_spread must be in [0, 1] (got {guidance_spread})")
    group = int(group_size)
    if group < 1 or z_pre.shape[0] % group:
        raise ValueError(f"group_size must be >= 1 and divide the batch ({z_pre.shape[0]}); "
                         f"got {group_size}")
    ts = jnp.linspace(1.0, 0.0, int(steps) + 1)
    k0 = jax.vmap(lambda k: jax.random.split(k, 2))(keys)
    x = jax.vmap(lambda k: jax.random.normal(k, (z_pre.shape[-1],)))(k0[:, 0])
    step_keys = jax.vmap(lambda k: jax.random.split(k, int(steps)))(k0[:, 1])  # (B, steps, 2)

    def step(x, inp):
        i, t, s = inp
        a_t, s_t = alpha_sigma(t)
        a_s, s_s = alpha_sigma(s)
        a_s = jnp.where(s <= 0.0, 1.0, a_s)
        s_s = jnp.where(s <= 0.0, 0.0, s_s)
        v_hat = model(x, jnp.full((x.shape[0],), t), z_pre, features)
        x0 = a_t * x - s_t * v_hat
        eps = s_t * x + a_t * v_hat
        if guidance > 0.0:
            g = guidance * a_t ** (2.0 * guidance_power)
            if group == 1 or rho == 1.0:
                x0 = (x0 + g * x0_anchor) / (1.0 + g)
            else:
                xg = x0.reshape((-1, group) + x0.shape[1:])
                m = jnp.mean(xg, axis=1, keepdims=True)
                xa = jnp.mean(x0_anchor.reshape(xg.shape), axis=1, keepdims=True)
                xg = (m + g * xa) / (1.0 + g) + (xg - m) / (1.0 + rho * g)
                x0 = xg.reshape(x0.shape)
            eps = (x - a_t * x0) / s_t
        # DDIM's sigma_eta (Song et al. 2021, eq. 16) in terms of alpha, sigma
        ratio = (a_t ** 2) / (a_s ** 2)
        var = (s_s ** 2 / s_t ** 2) * (1.0 - ratio)
        c = eta * jnp.sqrt(jnp.maximum(var, 0.0))
        noise = jax.vmap(lambda k: jax.random.normal(k[i], (x.shape[-1],)))(step_keys)
        x_new = a_s * x0 + jnp.sqrt(jnp.maximum(s_s ** 2 - c ** 2, 0.0)) * eps + c * noise
        return x_new, None

    idx = jnp.arange(int(steps))
    x, _ = jax.lax.scan(step, x, (idx, ts[:-1], ts[1:]))
    return x
