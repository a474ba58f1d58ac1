"""1-D convolutional autoencoder between ECG strips and a compact latent (Flax NNX).

A strip ``(lead, time)`` (mV; 1024 samples, see :mod:`ecg_world.world.data`) goes through a
7-tap convolution and five stride-2 convolutions (1024 -> 32 positions) with GELU, then a
3-tap convolution to ``latent_channels`` (8) channels: a latent of 32 x 8 = 256 numbers,
kept as a flat vector. The decoder mirrors it with stride-2 transposed convolutions. No
normalisation layers (the map is deterministic and identical in training and inference).
The loss is the mean squared error in mV^2 (plus nothing else: the diffusion model, not the
autoencoder, is regularised toward physiology).

Fully convolutional autoencoders of this shape are the usual latent front-end of latent
diffusion (Rombach R et al., High-resolution image synthesis with latent diffusion models,
CVPR 2022), here in 1-D as in ECG compression autoencoders (e.g. Yildirim O et al., An
efficient compression of ECG signals using deep convolutional autoencoders, Cogn Neurodyn
2018;12:597-606).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float

__all__ = ["AEConfig", "ECGAutoencoder", "reconstruction_loss"]


@dataclasses.dataclass(frozen=True)
class AEConfig:
    """Shapes of the autoencoder (hashable; saved in the model's JSON config)."""

    n_leads: int = 2
    n_samples: int = 1024
    channels: tuple[int, ...] = (16, 32, 32, 64, 64)
    latent_channels: int = 8
    stem_channels: int = 16

    def __post_init__(self):
        if self.n_samples % (2 ** len(self.channels)):
            raise ValueError(f"n_samples {self.n_samples} must be divisible by "
                             f"2^{len(self.channels)}")

    @property
    def latent_positions(self) -> int:
        return self.n_samples // 2 ** len(self.channels)

    @property
    def latent_dim(self) -> int:
        return self.latent_positions * self.latent_channels

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["channels"] = list(self.channels)
        return d

    @classmethod
    def from_dict(cls, d) -> AEConfig:
        d = dict(d)
        d["channels"] = tuple(d["channels"])
        return cls(**d)


class ECGAutoencoder(nnx.Module):
    """Strip ``(batch, lead, time)`` <-> latent ``(batch, latent_dim)``."""

    def __init__(self, config: AEConfig, *, rngs: nnx.Rngs):
        self.config = config
        c = config
        self.stem = nnx.Conv(c.n_leads, c.stem_channels, kernel_size=(7,), rngs=rngs)
        downs, c_in = [], c.stem_channels
        for ch in c.channels:
            downs.append(nnx.Conv(c_in, ch, kernel_size=(5,), strides=(2,), rngs=rngs))
            c_in = ch
        self.downs = nnx.List(downs)
        self.to_latent = nnx.Conv(c_in, c.latent_channels, kernel_size=(3,), rngs=rngs)
        self.from_latent = nnx.Conv(c.latent_channels, c_in, kernel_size=(3,), rngs=rngs)
        ups = []
        outs = list(reversed(c.channels[:-1])) + [c.stem_channels]
        for ch in outs:
            ups.append(nnx.ConvTranspose(c_in, ch, kernel_size=(4,), strides=(2,), rngs=rngs))
            c_in = ch
        self.ups = nnx.List(ups)
        self.head = nnx.Conv(c_in, c.n_leads, kernel_size=(7,), rngs=rngs)

    def encode(self, x: Float[Array, "batch lead time"]) -> Float[Array, "batch latent"]:
        h = jnp.swapaxes(x, -1, -2)  # (batch, time, lead): flax convolves the middle axis
        h = jax.nn.gelu(self.stem(h))
        for conv in self.downs:
            h = jax.nn.gelu(conv(h))
        z = self.to_latent(h)
        return z.reshape(z.shape[0], -1)

    def decode(self, z: Float[Array, "batch latent"]) -> Float[Array, "batch lead time"]:
        c = self.config
        h = z.reshape(z.shape[0], c.latent_positions, c.latent_channels)
        h = jax.nn.gelu(self.from_latent(h))
        for conv in self.ups:
            h = jax.nn.gelu(conv(h))
        return jnp.swapaxes(self.head(h), -1, -2)

    def __call__(self, x: Float[Array, "batch lead time"]) -> Float[Array, "batch lead time"]:
        return self.decode(self.encode(x))


def reconstruction_loss(model: ECGAutoencoder, x: Float[Array, "batch lead time"]):
    """Mean squared reconstruction error (mV^2)."""
    return jnp.mean((model(x) - x) ** 2)
