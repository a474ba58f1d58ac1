r"""The McSharry dynamical ECG model (ECGSYN) in JAX.

The model (McSharry et al. 2003) moves a point ``(x, y)`` round the unit limit
cycle at the angular speed ``omega = 2 pi / RR`` and lets the ECG ``z`` respond to
five Gaussian "events" P, Q, R, S, T placed at angles ``theta_i`` on the cycle:

.. math::

    \dot x &= \alpha x - \omega y, \qquad \dot y = \alpha y + \omega x,
    \qquad \alpha = 1 - \sqrt{x^2 + y^2},\\
    \dot z &= -\sum_{i \in \{P,Q,R,S,T\}} a_i\, \Delta\theta_i
              \exp\!\left(-\frac{\Delta\theta_i^2}{2 b_i^2}\right) - (z - z_0(t)),

with ``theta = atan2(y, x)``, ``dtheta_i = (theta - theta_i)`` wrapped to
``(-pi, pi]`` and the respiratory baseline ``z0(t) = A sin(2 pi f2 t)``
(``A = 0.005``, ``f2 = 0.25 Hz``).

**How it is solved here.** ECGSYN starts on the limit cycle, ``(x, y, z) =
(1, 0, 0.04)``, so ``alpha = 0`` for all time and ``theta`` is the integral of
``omega`` -- exact, no ODE needed. ``omega`` is piecewise constant (ECGSYN holds
it per internal sample), so within one step ``theta`` is linear in time, and
``z`` obeys a *linear* ODE with known forcing, solved here without a step-by-step
ODE solver. The forcing of wave ``i`` is the time derivative of the Gaussian
``G_i = (a_i b_i^2 / omega) exp(-dtheta_i^2 / (2 b_i^2))`` while ``omega`` is
constant, so over one step of length ``h``

.. math::

    z_{k+1} = e^{-h} z_k + \bigl[G(t_{k+1}) - e^{-h} G(t_k)\bigr]
              - \int_0^h e^{-(h-s)} G(t_k + s)\,ds
              + \int_0^h e^{-(h-s)} z_0(t_k + s)\,ds

(integration by parts): exact but for the smooth middle integral, taken by the
trapezoid rule (relative error ~ h^2 / (12 sigma), about 1e-5 at 500 Hz, far below
the 0.01 mV parity target); the baseline integral is exact. The five Gaussians
are evaluated once per sample (``G`` at a step's end is the next step's start value,
except where a beat starts: one correction per beat). Samples are grouped in blocks
of 32 (at most 64 ms, so a block holds at most one beat start and each sample picks
its beat's parameters with one comparison -- no per-sample search or gather); the
linear recurrence is one GEMM with a fixed 32 x 32 matrix inside the blocks and a
scan over the blocks. There is no step-by-step loop over time, so a batch of ECGs
is a few dense array operations (beats shorter than a block, RR below ~66 ms, give
NaN).

**Heart-rate scaling.** The wave parameters of a :class:`McSharryECG` describe the
beat at 60 bpm (RR = 1 s). Two ways to move to another rate:

- ``hr_scaling="ecgsyn"`` (exact parity with ECGSYN / neurokit2): with
  ``hrfact = sqrt(HR_mean / 60)``, ``b_i *= hrfact`` and ``theta_i *=
  [sqrt(hrfact), hrfact, 1, hrfact, sqrt(hrfact)]``, using the *mean* rate for the
  whole record. QT then grows roughly as RR^0.6 (steeper than any clinical
  correction) and QRS as RR^0.5.
- ``hr_scaling="physiological"`` (beat by beat, from the RR of the current cycle,
  ``r = RR / 1 s``): Q, R and S keep their *time* positions and widths (angles and
  widths scale as ``1/r``, amplitudes ``a_i`` as ``r`` so that the wave amplitudes
  ``~ a b^2 / omega`` stay fixed), so QRS does not depend on rate; the P and T
  waves are stretched in time about the QRS onset by ``r^(1/3)`` (position and
  width, amplitude kept), so that QT ~ RR^(1/3) (Fridericia: QTcF close to rate
  independent, verified by the tests on the reference fiducials) and PR shortens
  mildly with rate (~15% from 60 to 110 bpm; PR ~ RR^(1/3) means a PR/RR slope of
  PR/(3 RR), 0.055 ms/ms at PR 165 ms and RR 1 s, the mean intra-subject PQ/RR slope
  in Holter recordings of healthy subjects: Hnatkova K et al., J Electrocardiol
  2008;41:491-497). The QRS-onset anchor is estimated
  from the Q wave, ``theta_Q - 3 b_Q`` at 60 bpm. The waves adapt to the cycle
  they lie in, without the minutes-long QT/RR hysteresis of real hearts. Cohorts
  for the world model use this mode.

**Output scaling.** ``scale="ecgsyn"``: min-max to [-0.4, 1.2] mV over the
integrated record, as ECGSYN does; ``scale="none"``: raw ``z`` in model units
(fits to real beats use raw ``z`` with a fitted gain and offset).

**References.**

    McSharry PE, Clifford GD, Tarassenko L, Smith LA. A dynamical model for
    generating synthetic electrocardiogram signals. IEEE Trans Biomed Eng
    2003;50(3):289-294. doi:10.1109/TBME.2003.808805

    ECGSYN, https://physionet.org/content/ecgsyn/ (C and Matlab), and its Python
    translation in neurokit2 (``neurokit2.ecg_simulate(method="ecgsyn")``), the
    reference implementation the tests compare against.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._custom_types import Array, ArrayLike, Float, PRNGKeyArray

__all__ = [
    "ECGSYN_AI",
    "ECGSYN_BI",
    "ECGSYN_TI_DEGREES",
    "PAPER_TI_DEGREES",
    "WAVE_NAMES",
    "MULTILEAD_GAMMA",
    "McSharryECG",
    "ecg_waveform",
    "mcsharry_vector_field",
    "rr_process",
    "rr_to_beats",
    "simulate_ecg",
    "simulate_ecg_batch",
    "upsample_rr",
    "wave_parameters",
]

WAVE_NAMES: tuple[str, ...] = ("P", "Q", "R", "S", "T")
#: Wave angles in degrees of neurokit2 and the Matlab ecgsyn.m (the paper and the C
#: code use -60, -15, 0, 15, 90).
ECGSYN_TI_DEGREES: tuple[float, ...] = (-70.0, -15.0, 0.0, 15.0, 100.0)
PAPER_TI_DEGREES: tuple[float, ...] = (-60.0, -15.0, 0.0, 15.0, 90.0)
ECGSYN_AI: tuple[float, ...] = (1.2, -5.0, 30.0, -7.5, 0.75)
ECGSYN_BI: tuple[float, ...] = (0.25, 0.1, 0.1, 0.1, 0.4)
#: ECGSYN start state (x, y, z): on the limit cycle at theta = 0.
ECGSYN_Z_INIT = 0.04
RESP_AMPLITUDE = 0.005
RESP_FREQUENCY = 0.25

# "ecgsyn" | "physiological" and "ecgsyn" | "none"; plain str so that a wrong value
# reaches the ValueError that names the choices (not a runtime type-check error)
HrScaling = str
RealLike = float | int | np.number | Array
WaveLike = ArrayLike | Sequence
Scale = str
_TWO_PI = 2.0 * math.pi
_BLOCK = 32
_UNROLL = 8  # blocks per iteration of the carry scan (loop overhead at small batch)


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _check_wave_array(name: str, value, *, positive: bool = False):
    arr = jnp.asarray(value, dtype=float)
    if arr.ndim < 1 or arr.shape[-1] != 5:
        raise ValueError(
            f"{name} must have shape (5,) (or (..., 5)): one value per wave P, Q, R, S, T; "
            f"got shape {tuple(arr.shape)}."
        )
    if _is_concrete(arr):
        a = np.asarray(arr)
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{name} must be finite (no NaN or inf); got {a.tolist()}.")
        if positive and not np.all(a > 0):
            raise ValueError(f"{name} (Gaussian widths) must be > 0; got {a.tolist()}.")
    return arr


class McSharryECG(eqx.Module):
    """Wave parameters of the McSharry ECG model for the beat at 60 bpm.

    **Fields** (arrays of shape ``(5,)`` in the order P, Q, R, S, T, or ``(..., 5)``
    for a stacked batch of models):

    - `ti`: angles of the waves on the limit cycle, in **radians** (R at 0).
    - `ai`: amplitudes (model units of dz/dt per radian).
    - `bi`: Gaussian widths, radians (> 0).

    All three are differentiable array leaves: ``jax.grad`` of a loss of the
    waveform w.r.t. the module fits a beat.

    **Reference:** McSharry et al., IEEE Trans Biomed Eng 2003;50(3):289-294.
    """

    ti: Float[Array, "*batch 5"]
    ai: Float[Array, "*batch 5"]
    bi: Float[Array, "*batch 5"]

    def __init__(self, ti: WaveLike, ai: WaveLike, bi: WaveLike):
        self.ti = _check_wave_array("ti", ti)
        self.ai = _check_wave_array("ai", ai)
        self.bi = _check_wave_array("bi", bi, positive=True)

    @classmethod
    def default(cls) -> McSharryECG:
        """The parameters of neurokit2 / ecgsyn.m (angles -70, -15, 0, 15, 100 deg)."""
        return cls.from_degrees(ECGSYN_TI_DEGREES, ECGSYN_AI, ECGSYN_BI)

    @classmethod
    def paper(cls) -> McSharryECG:
        """The parameters of the 2003 paper and the C code (angles -60, -15, 0, 15, 90 deg)."""
        return cls.from_degrees(PAPER_TI_DEGREES, ECGSYN_AI, ECGSYN_BI)

    @classmethod
    def from_degrees(cls, ti: WaveLike, ai: WaveLike, bi: WaveLike) -> McSharryECG:
        """Build from angles in degrees (the convention of ECGSYN and neurokit2)."""
        ti = _check_wave_array("ti", ti)
        return cls(jnp.deg2rad(ti), ai, bi)

    @property
    def ti_degrees(self) -> Float[Array, "*batch 5"]:
        return jnp.rad2deg(self.ti)

    def vector_field(self, t, y, omega, z0):
        """``d(x, y, z)/dt``; see :func:`mcsharry_vector_field`."""
        return mcsharry_vector_field(t, y, self, omega, z0)


def _wrap(d):
    """Wrap angle differences to [-pi, pi] as ECGSYN does (``d - round(d / 2pi) 2pi``)."""
    return d - jnp.round(d / _TWO_PI) * _TWO_PI


def _forcing(theta, ti, ai, bi):
    """``-sum_i a_i dtheta_i exp(-dtheta_i^2 / (2 b_i^2))``; theta (...,), params (..., 5)."""
    d = _wrap(theta[..., None] - ti)
    return -jnp.sum(ai * d * jnp.exp(-0.5 * (d / bi) ** 2), axis=-1)


def mcsharry_vector_field(
    t: RealLike,
    y: Float[Array, "3"],
    model: McSharryECG,
    omega: RealLike,
    z0: RealLike,
) -> Float[Array, "3"]:
    """The right-hand side of the McSharry ODE at state ``y = (x, y, z)``.

    **Arguments:**

    - `t`: time in seconds (unused: the forcing enters through `omega` and `z0`;
      kept for the diffrax ``(t, y, args)`` convention).
    - `y`: state ``(x, y, z)``.
    - `model`: wave parameters, **already scaled** to the rate (see
      :func:`wave_parameters`).
    - `omega`: angular speed ``2 pi / RR`` in rad/s.
    - `z0`: baseline ``A sin(2 pi f2 t)`` at this time (model units).

    **Returns:** ``d(x, y, z)/dt``, identical to ECGSYN's ``derivsecgsyn``.
    """
    del t
    x1, x2, x3 = y[0], y[1], y[2]
    alpha = 1.0 - jnp.sqrt(x1**2 + x2**2)
    theta = jnp.arctan2(x2, x1)
    dz = _forcing(theta, model.ti, model.ai, model.bi) - (x3 - z0)
    return jnp.stack([alpha * x1 - omega * x2, alpha * x2 + omega * x1, dz])


def _wave(model: McSharryECG, i: int, rr, hr_scaling: str, mean_rr=None):
    """``(theta_i, a_i, b_i)`` of wave ``i`` at RR `rr` (seconds, any shape), elementwise.

    Written per wave, without ``(..., 5)`` temporaries, so that XLA fuses it into
    the per-sample loop of the integrator.
    """
    ti, ai, bi = model.ti[..., i], model.ai[..., i], model.bi[..., i]
    if hr_scaling == "ecgsyn":
        hrfact = jnp.sqrt(1.0 / (rr if mean_rr is None else mean_rr))
        tfac = (jnp.sqrt(hrfact), hrfact, 1.0, hrfact, jnp.sqrt(hrfact))[i]
        shape = jnp.shape(rr)
        return (jnp.broadcast_to(ti * tfac, shape), jnp.broadcast_to(ai, shape),
                jnp.broadcast_to(bi * hrfact, shape))
    if hr_scaling != "physiological":
        raise ValueError(
            f"hr_scaling must be 'ecgsyn' or 'physiological'; got {hr_scaling!r}."
        )
    h = 1.0 / rr  # HR / 60 bpm
    if i in (1, 2, 3):
        # Q, R, S: fixed time positions and widths; amplitude ~ a b^2 / omega fixed
        return ti * h, ai * rr, bi * h
    # P and T: stretched by (RR / 1 s)^(1/3) in time about the QRS-onset anchor
    # theta_Q - 3 b_Q (position and width), amplitude kept
    r3 = jnp.cbrt(rr)
    anchor = model.ti[..., 1] - 3.0 * model.bi[..., 1]
    return h * (anchor + (ti - anchor) * r3), ai * r3, bi * h * r3


def wave_parameters(
    model: McSharryECG,
    rr: RealLike | Float[Array, "*time"],
    *,
    hr_scaling: HrScaling = "physiological",
    mean_rr: RealLike | None = None,
):
    """The wave parameters ``(ti, ai, bi)`` in force at a given RR (seconds).

    **Arguments:**

    - `model`: the 60-bpm parameters.
    - `rr`: RR interval of the current cycle in seconds, any shape (e.g. one per
      time step). Used by ``"physiological"``.
    - `hr_scaling`: ``"ecgsyn"`` (scale by the mean rate, as ECGSYN) or
      ``"physiological"`` (beat by beat); see the module docstring.
    - `mean_rr`: the record's mean RR for ``"ecgsyn"`` (defaults to `rr`).

    **Returns:** ``(ti, ai, bi)``, each of shape ``rr.shape + (5,)`` (for an
    unbatched model).
    """
    rr = jnp.asarray(rr, dtype=float)
    waves = [_wave(model, i, rr, hr_scaling, mean_rr) for i in range(5)]
    return tuple(jnp.stack([w[j] for w in waves], axis=-1) for j in range(3))



# ----------------------------------------------------------------------------
# RR process (ECGSYN)
# ----------------------------------------------------------------------------


def rr_process(
    key: PRNGKeyArray | None,
    n: int,
    *,
    heart_rate: RealLike = 60.0,
    heart_rate_std: RealLike = 1.0,
    lfhfratio: RealLike = 0.5,
    flo: RealLike = 0.1,
    fhi: RealLike = 0.25,
    flostd: RealLike = 0.01,
    fhistd: RealLike = 0.01,
    sfrr: RealLike = 1.0,
    phases: Float[Array, " half"] | None = None,
) -> Float[Array, " n"]:
    """RR intervals (seconds) with ECGSYN's bimodal spectrum, sampled at `sfrr` Hz.

    The power spectrum is a sum of two Gaussians, at `flo` (Mayer waves, LF) and
    `fhi` (respiratory sinus arrhythmia, HF), widths `flostd`, `fhistd`, power
    ratio LF/HF = `lfhfratio`; random phases; inverse FFT; rescaled to mean
    ``60 / heart_rate`` and standard deviation ``60 heart_rate_std / heart_rate^2``
    (McSharry et al. 2003, section II; ecgsyn.m ``rrprocess``).

    **Arguments:**

    - `key`: PRNG key for the phases (ignored when `phases` is given).
    - `n`: number of samples (static, even).
    - `phases`: optional ``n/2 - 1`` phases in radians (to reproduce a given draw,
      e.g. neurokit2's ``2 pi rng.uniform(size=n/2 - 1)``).

    **Returns:** RR intervals in seconds, shape ``(n,)``.
    """
    n = int(n)
    if n < 4 or n % 2:
        raise ValueError(f"n must be an even integer >= 4; got {n}.")
    w1, w2 = _TWO_PI * flo, _TWO_PI * fhi
    c1, c2 = _TWO_PI * flostd, _TWO_PI * fhistd
    rrmean = 60.0 / jnp.asarray(heart_rate, dtype=float)
    rrstd = 60.0 * heart_rate_std / (jnp.asarray(heart_rate, dtype=float) ** 2)
    w = jnp.arange(n) * _TWO_PI * (sfrr / n)
    hw1 = lfhfratio * jnp.exp(-0.5 * ((w - w1) / c1) ** 2) / math.sqrt(_TWO_PI * c1**2)
    hw2 = 1.0 * jnp.exp(-0.5 * ((w - w2) / c2) ** 2) / math.sqrt(_TWO_PI * c2**2)
    hw = hw1 + hw2
    hw0 = jnp.concatenate([hw[: n // 2], hw[n // 2 - 1 :: -1]])
    sw = (sfrr / 2.0) * jnp.sqrt(hw0)
    if phases is None:
        phases = _TWO_PI * jax.random.uniform(key, (n // 2 - 1,))
    ph = jnp.concatenate([jnp.zeros(1), phases, jnp.zeros(1), -phases[::-1]])
    x = jnp.real(jnp.fft.ifft(sw * jnp.exp(1j * ph))) / n
    xstd = jnp.std(x)
    return rrmean + x * (rrstd / xstd)


def upsample_rr(rr: Float[Array, " n"], factor: int) -> Float[Array, " m"]:
    """Cubic B-spline upsampling by an integer `factor` (output ``n * factor`` samples).

    Reproduces ``scipy.ndimage.zoom(rr, factor)`` (order 3, mirror prefilter, end
    points aligned), which neurokit2's ``signal_resample`` uses to take the 1-Hz RR
    series to the internal rate -- except that ``zoom`` sets the very last sample
    to 0 by a rounding quirk of its ``constant`` mode; here it is the last RR.
    """
    return rr @ jnp.asarray(_zoom_matrix(rr.shape[-1], int(factor)), dtype=rr.dtype)


@functools.lru_cache(maxsize=32)
def _zoom_matrix(n: int, factor: int) -> np.ndarray:
    """``(n, n * factor)`` matrix of the linear map ``rr -> zoom(rr)`` (one GEMM)."""
    m = n * factor
    # prefilter: (c[i-1] + 4 c[i] + c[i+1]) / 6 = rr[i] with mirror ends
    a = np.zeros((n, n))
    for i in range(n):
        a[i, i] = 4.0 / 6.0
        for j in (i - 1, i + 1):
            jj = 1 if j == -1 else (n - 2 if j == n else j)
            a[i, jj] += 1.0 / 6.0
    inv = np.linalg.inv(a)  # c = inv @ rr
    # mirror-extended coefficients c[-1] = c[1], c[n] = c[n-2], c[n+1] = c[n-3]
    ext = np.concatenate([inv[1:2], inv, inv[n - 2 : n - 1], inv[n - 3 : n - 2]], axis=0)
    pos = np.arange(m) * (n - 1) / (m - 1)
    base = np.floor(pos).astype(int)
    out = np.zeros((m, n))
    for off in range(-1, 3):
        idx = base + off
        u = np.abs(pos - idx)
        wgt = np.where(u < 1, 2 / 3 - u**2 + u**3 / 2, np.where(u < 2, (2 - u) ** 3 / 6, 0.0))
        out += wgt[:, None] * ext[np.clip(idx, -1, n + 1) + 1]
    return out.T


def rr_to_beats(rr_int: Float[Array, " m"], dt: float, max_beats: int) -> Float[Array, " beat"]:
    """ECGSYN's beat construction: per-beat RR from an RR series at the internal rate.

    Beat ``k`` starts at sample ``i_k`` (``i_0 = 0``), lasts ``rr_int[i_k]`` seconds,
    and the next beat starts at ``round(sum of the RRs so far / dt)`` (the loop
    that builds ``rrn`` in ecgsyn.m). Returns ``max_beats`` RR values (beats past
    the end of `rr_int` repeat its last value).
    """
    m = rr_int.shape[-1]

    def step(carry, _):
        i, tecg = carry
        r = rr_int[jnp.minimum(i, m - 1)]
        tecg = tecg + r
        ip = jnp.round(tecg / dt).astype(jnp.int32)
        return (ip, tecg), r

    (_, _), rrs = jax.lax.scan(
        step, (jnp.int32(0), jnp.zeros((), rr_int.dtype)), None, length=max_beats
    )
    return rrs


def _rr_beats_from_knots(rr0: Float[Array, " n"], factor: int, dt: float,
                         max_beats: int) -> Float[Array, " beat"]:
    """:func:`rr_to_beats` of ``upsample_rr(rr0, factor)``, evaluating the upsampled
    series only at the ``max_beats`` samples the beat loop reads (a 16-term dot
    product each) instead of all ``n * factor`` of them. Same values up to float
    rounding of the dot products."""
    n = rr0.shape[-1]
    m = n * int(factor)
    zt = jnp.asarray(_zoom_matrix(n, int(factor)).T, dtype=rr0.dtype)  # (m, n)

    def step(carry, _):
        i, tecg = carry
        r = jnp.take(zt, jnp.minimum(i, m - 1), axis=0) @ rr0
        tecg = tecg + r
        ip = jnp.round(tecg / dt).astype(jnp.int32)
        return (ip, tecg), r

    (_, _), rrs = jax.lax.scan(
        step, (jnp.int32(0), jnp.zeros((), rr0.dtype)), None, length=max_beats
    )
    return rrs


# ----------------------------------------------------------------------------
# The exact-exponential integrator
# ----------------------------------------------------------------------------


def _block_len(dt: float) -> int:
    """Samples per block of the integrator: 32, or fewer so that a block spans <= 64 ms.

    A block may contain at most one beat start, so every beat must last at least
    this many samples (RR >= ~66 ms, i.e. HR <= ~900 bpm, at any sampling rate)."""
    return int(min(_BLOCK, max(1, math.floor(0.064 / dt + 1e-9))))


@functools.lru_cache(maxsize=64)
def _rec_matrix(b: int, lam: float) -> np.ndarray:
    """``T[i, j] = lam^(i - j)`` for ``i >= j``, else 0 (the step response inside a block)."""
    k = np.arange(b)
    expo = k[:, None] - k[None, :]
    return np.where(expo >= 0, float(lam) ** np.maximum(expo, 0), 0.0)


def _linear_recurrence(v: Float[Array, "*batch n"], lam: float, block: int = _BLOCK):
    """``z_k = sum_{i <= k} lam^(k - i) v_i`` along the last axis (``z_k = lam z_{k-1} + v_k``,
    zero start). Blocked: one GEMM with the ``(block, block)`` Toeplitz matrix inside
    blocks, the same recursively on the block ends (stable: only ``0 <= lam^k <= 1``)."""
    n = v.shape[-1]
    if n <= block:
        return v @ jnp.asarray(_rec_matrix(n, lam).T, v.dtype)
    nb = -(-n // block)
    vp = jnp.pad(v, [(0, 0)] * (v.ndim - 1) + [(0, nb * block - n)])
    local = vp.reshape(v.shape[:-1] + (nb, block)) @ jnp.asarray(
        _rec_matrix(block, lam).T, v.dtype)
    ends = _linear_recurrence(local[..., -1], float(lam) ** block, block)
    prev = jnp.concatenate([jnp.zeros_like(ends[..., :1]), ends[..., :-1]], axis=-1)
    lam_in = jnp.asarray(float(lam) ** (np.arange(block) + 1.0), v.dtype)
    z = local + prev[..., None] * lam_in
    return z.reshape(v.shape[:-1] + (nb * block,))[..., :n]


def _resp_weights(dt: float, resp_frequency):
    """``int_0^dt e^{-(dt-s)} sin(w (t + s)) ds = cs sin(w t) + cc cos(w t)`` (exact)."""
    w = _TWO_PI * jnp.asarray(resp_frequency)
    lam = math.exp(-dt)
    # (e^{i w dt} - e^{-dt}) / (1 + i w)
    re_n, im_n = jnp.cos(w * dt) - lam, jnp.sin(w * dt)
    den = 1.0 + w * w
    cs = (re_n + im_n * w) / den
    cc = (im_n - re_n * w) / den
    return w, cs, cc


def _beat_starts(rr_beats, dt: float):
    """ECGSYN's beat boundaries: beat ``j`` starts at sample ``s_j`` (``s_0 = 0``) and
    ends at ``s_{j+1} = round(sum_{i<=j} rr_i / dt)``. Returns ``(s_j, s_{j+1})``."""
    nxt = jnp.round(jnp.cumsum(rr_beats) / dt).astype(jnp.int32)
    starts = jnp.concatenate([jnp.zeros(1, jnp.int32), nxt[:-1]])
    return starts, nxt


def _gsum(theta, t, q, amp):
    """``sum_i amp_i exp(q_i wrap(theta - t_i)^2)`` (``q_i = -1 / (2 b_i^2)``); ``t, q, amp``
    broadcast against ``theta[..., None]`` or are given per wave as ``(..., 5)``."""
    g = 0.0
    for i in range(5):
        d = theta - t[..., i]
        d = d - jnp.round(d * (1.0 / _TWO_PI)) * _TWO_PI
        g = g + amp[..., i] * jnp.exp(q[..., i] * (d * d))
    return g


def _wave_table(model: McSharryECG, rr, hr_scaling: str, mean_rr):
    """Per-beat ``(t_i, q_i, A_i)``, each ``rr.shape + (5,)``: angle, ``-1/(2 b_i^2)`` and
    ``A_i = a_i b_i^2 / omega`` (``omega = 2 pi / rr``), so that
    ``G = sum_i A_i exp(q_i d_i^2)``."""
    ts, qs, amps = [], [], []
    for i in range(5):
        t, a, b = _wave(model, i, rr, hr_scaling, mean_rr)
        ts.append(t)
        qs.append(-0.5 / (b * b))
        amps.append(a * b * b * rr / _TWO_PI)
    return jnp.stack(ts, -1), jnp.stack(qs, -1), jnp.stack(amps, -1)


def _waveform_raw(
    model: McSharryECG,
    rr_beats: Float[Array, " beat"],
    n_steps: int,
    dt: float,
    *,
    hr_scaling: HrScaling,
    mean_rr,
    z_init,
    phase0,
    resp_amplitude,
    resp_frequency,
):
    """Raw z at the internal samples ``t_k = k dt``, k = 0..n_steps-1 (one ECG).

    Beat ``j`` (RR ``rr_j``) runs from sample ``s_j`` to ``s_{j+1} = round(sum_{i<=j}
    rr_i / dt)`` at ``omega_j = 2 pi / rr_j`` (ECGSYN's ``rrn``); the phase is
    continuous, ``theta_k = phi_j + omega_j (k - s_j) dt``. Over step ``k -> k+1`` (in
    beat ``j``) the forcing is ``dG_j/dt`` with ``G_j = sum_i (a_i b_i^2 / omega_j)
    exp(-dtheta_i^2 / (2 b_i^2))``, so by parts

        int_0^h e^{-(h-s)} G'(s) ds = G(h) - e^{-h} G(0) - int_0^h e^{-(h-s)} G(s) ds,

    exact except the last, smooth, integral, taken by the trapezoid rule (relative
    error ~ h^2 / (12 sigma), ~1e-5 at 500 Hz). The baseline term is exact. Hence
    ``z_{k+1} = lam z_k + alpha G_j(theta_{k+1}) - beta G_j(theta_k) + r_k`` with
    ``lam = e^{-h}``, ``alpha = 1 - h/2``, ``beta = lam (1 + h/2)``.

    Evaluation (no loop over time): ``G_k = G_{beat(k)}(theta_k)`` once per sample (five
    exponentials) on a grid of blocks of ``B`` samples (:func:`_block_len`); a block holds
    at most one beat start, so each sample picks its beat's parameters from the block's
    two candidates with one comparison (no per-sample search or gather). The response
    to ``alpha G_{k+1} - beta G_k`` inside a block is one GEMM with a fixed ``(B, B)``
    matrix; the block-to-block carry is a scan over blocks; where a beat starts, the
    step's end value uses the *previous* beat's ``G`` -- an impulse per beat, added in
    closed form; the baseline response is computed once for the batch. A beat shorter
    than ``B`` samples (RR below ~66 ms) gives NaN (divergence as data).
    """
    dtype = rr_beats.dtype
    if hr_scaling not in ("ecgsyn", "physiological"):
        raise ValueError(f"hr_scaling must be 'ecgsyn' or 'physiological'; got {hr_scaling!r}.")
    if hr_scaling == "ecgsyn" and mean_rr is None:
        mean_rr = jnp.mean(rr_beats)
    B = _block_len(dt)
    nbt = rr_beats.shape[-1]
    lam = math.exp(-dt)
    alpha, beta = 1.0 - 0.5 * dt, lam * (1.0 + 0.5 * dt)
    # --- per beat: start, phase, phase step, wave table, G at its start and end
    starts, nxt = _beat_starts(rr_beats, dt)
    n_in = (nxt - starts).astype(dtype)
    wdt = (_TWO_PI * dt) / rr_beats
    adv = jnp.mod(wdt * n_in, _TWO_PI)  # reduced mod 2 pi before accumulating (float32-safe)
    phi = jnp.mod(phase0 + jnp.concatenate([jnp.zeros(1, dtype), jnp.cumsum(adv)[:-1]]), _TWO_PI)
    t_b, q_b, a_b = _wave_table(model, rr_beats, hr_scaling, mean_rr)
    g_start = _gsum(phi, t_b, q_b, a_b)
    g_end = _gsum(phi + wdt * n_in, t_b, q_b, a_b)
    # impulse where beat j starts: the step into s_j ends with beat j-1's G
    imp = alpha * jnp.concatenate([jnp.zeros(1, dtype), g_end[:-1] - g_start[1:]])
    phys = hr_scaling == "physiological"
    if phys:
        feats = jnp.concatenate([phi[:, None], wdt[:, None], a_b, t_b, q_b], axis=1)
        t0 = q0 = a0 = None
    else:  # mean-rate scaling: angles and widths fixed, A_i = A0_i rr_j
        feats = jnp.stack([phi, wdt, rr_beats], axis=1)
        t0, q0, a0 = t_b[0], q_b[0], a_b[0] / rr_beats[0]
    # --- per block: the beat in force at its first sample and the next beat start
    nblk = -(-n_steps // B)
    n_pad = nblk * B
    b0 = jnp.arange(nblk, dtype=jnp.int32) * B
    # beat in force at each block start: the last beat with s_j <= b0 (a compare-and-count,
    # nblk x beats, rather than a scatter + cumsum, which XLA's CPU backend tiles into a
    # reduce-window that it may spend seconds constant-folding)
    jm = jnp.sum(starts[None, :] <= b0[:, None], axis=1, dtype=jnp.int32) - 1
    jm = jnp.clip(jm, 0, nbt - 1)
    jn = jnp.minimum(jm + 1, nbt - 1)
    f_m = jnp.take(feats, jm, axis=0, mode="clip")
    f_n = jnp.take(feats, jn, axis=0, mode="clip")
    s_next = jnp.concatenate([starts[1:], jnp.full((1,), 2**30, jnp.int32)])
    s_a = jnp.take(starts, jm, mode="clip")
    s_b = jnp.take(s_next, jm, mode="clip")
    # --- per sample: G_k (the only per-sample transcendental work)
    lane = jnp.arange(B, dtype=jnp.int32)
    k = b0[:, None] + lane[None, :]
    later = k >= s_b[:, None]

    def pick(c):
        return jnp.where(later, f_n[:, c : c + 1], f_m[:, c : c + 1])

    theta = pick(0) + pick(1) * (k - jnp.where(later, s_b[:, None], s_a[:, None])).astype(dtype)
    g = 0.0
    for i in range(5):
        t_i = pick(7 + i) if phys else t0[i]
        q_i = pick(12 + i) if phys else q0[i]
        a_i = pick(2 + i) if phys else a0[i]
        d = theta - t_i
        d = d - jnp.round(d * (1.0 / _TWO_PI)) * _TWO_PI
        g = g + a_i * jnp.exp(q_i * (d * d))
    if not phys:
        g = g * pick(2)
    # --- inside blocks: response to v_k = alpha G_k - beta G_{k-1} (one GEMM)
    t_mat = _rec_matrix(B, lam)
    t_shift = np.zeros_like(t_mat)
    t_shift[:, :-1] = t_mat[:, 1:]
    local = g @ jnp.asarray((alpha * t_mat - beta * t_shift).T, dtype)
    # --- per block: G at its last sample (block level, so G above has one consumer)
    k_last = b0 + (B - 1)
    later_l = k_last >= s_b
    f_l = jnp.where(later_l[:, None], f_n, f_m)
    th_l = f_l[:, 0] + f_l[:, 1] * (k_last - jnp.where(later_l, s_b, s_a)).astype(dtype)
    if phys:
        g_last = _gsum(th_l, f_l[:, 7:12], f_l[:, 12:17], f_l[:, 2:7])
    else:
        g_last = _gsum(th_l, t0, q0, a0) * f_l[:, 2]
    at_first = (s_a == b0) & (jm > 0)
    inside = s_b < b0 + B
    l_imp = jnp.where(at_first, 0, jnp.where(inside, s_b - b0, B))
    d_imp = jnp.where(at_first, jnp.take(imp, jm, mode="clip"),
                      jnp.where(inside, jnp.take(imp, jn, mode="clip"), 0.0))
    # a block may hold one beat start only: shorter beats -> NaN (divergence as data)
    if nbt > 1:
        ok = jnp.all(jnp.where(starts[:-1] < n_pad, nxt[:-1] - starts[:-1] >= B, True))
    else:
        ok = True
    z0 = jnp.asarray(z_init, dtype)
    head = jnp.concatenate([(z0 - alpha * g_start[0])[None], -beta * g_last[:-1]])
    head = jnp.where(ok, head, jnp.nan)
    lam_b1 = lam ** (B - 1)

    def carry(y, x):  # y: z at the last sample of the previous block (less baseline)
        loc_last, h, dd, li = x
        c = h + lam * y
        lif = li.astype(dtype)
        y = loc_last + lam_b1 * c + dd * jnp.exp(-dt * ((B - 1) - lif))
        return y, (c, dd * jnp.exp(dt * lif), lif + 0.0 * y)

    _, (c_blk, e_blk, l_blk) = jax.lax.scan(
        carry, jnp.zeros((), dtype), (local[:, B - 1], head, d_imp, l_imp), unroll=_UNROLL)
    # --- baseline: response to r_{k-1} (no batch dimension: computed once)
    w, cs, cc = _resp_weights(dt, resp_frequency)
    tp = (jnp.arange(n_pad, dtype=dtype) - 1.0) * dt
    r = resp_amplitude * (cs * jnp.sin(w * tp) + cc * jnp.cos(w * tp))
    z_resp = _linear_recurrence(jnp.where(jnp.arange(n_pad) == 0, 0.0, r).astype(dtype), lam)
    lam_l = jnp.asarray(lam ** np.arange(B), dtype)
    impulse = jnp.where(lane.astype(dtype)[None, :] >= l_blk[:, None], e_blk[:, None], 0.0)
    z = local + lam_l * (c_blk[:, None] + impulse) + z_resp.reshape(nblk, B)
    return z.reshape(-1)[:n_steps]


def _minmax(z, valid=None):
    if valid is None:
        zmin, zmax = jnp.min(z, axis=-1, keepdims=True), jnp.max(z, axis=-1, keepdims=True)
    else:
        zmin = jnp.min(jnp.where(valid, z, jnp.inf), axis=-1, keepdims=True)
        zmax = jnp.max(jnp.where(valid, z, -jnp.inf), axis=-1, keepdims=True)
    return (z - zmin) * 1.6 / (zmax - zmin) - 0.4


def ecg_waveform(
    model: McSharryECG,
    rr: RealLike | Float[Array, "*beat"] | None = None,
    *,
    heart_rate: RealLike | None = None,
    n_samples: int,
    sampling_rate: RealLike,
    hr_scaling: HrScaling = "physiological",
    scale: Scale = "none",
    mean_rr: RealLike | None = None,
    oversample: int = 1,
    z_init: RealLike = ECGSYN_Z_INIT,
    phase0: RealLike = 0.0,
    resp_amplitude: RealLike = RESP_AMPLITUDE,
    resp_frequency: RealLike = RESP_FREQUENCY,
) -> Float[Array, " time"]:
    """One noise-free McSharry ECG, pure JAX (jit / vmap / grad).

    **Arguments:**

    - `model`: wave parameters at 60 bpm.
    - `rr`: RR interval(s) in seconds: a scalar (constant rate) or one value per
      beat (beat ``k`` lasts ``rr[k]``; the last value is held). Or give
      `heart_rate` (bpm, constant) instead.
    - `n_samples` (static), `sampling_rate` (Hz, static): output grid
      ``t = k / sampling_rate``.
    - `hr_scaling`: ``"physiological"`` (default, beat by beat) or ``"ecgsyn"``
      (scaled by `mean_rr`, default the mean of `rr`).
    - `scale`: ``"none"`` (raw z, model units) or ``"ecgsyn"`` (min-max over the
      returned samples to [-0.4, 1.2] mV).
    - `oversample`: internal steps per output sample (ECGSYN's ``sfint / sfecg``).
      Each RR must last at least ``_block_len(dt) + 1`` internal samples (about 66 ms:
      HR below ~900 bpm): ``ValueError`` for concrete `rr`, NaN output when traced.
    - `z_init`, `phase0`: start state (ECGSYN: 0.04, phase 0 = the R-wave angle).
    - `resp_amplitude`, `resp_frequency`: baseline ``A sin(2 pi f t)``.

    **Returns:** ``z`` at the `n_samples` output times.
    """
    if rr is None:
        if heart_rate is None:
            raise ValueError("give rr (seconds) or heart_rate (bpm).")
        rr = 60.0 / jnp.asarray(heart_rate, dtype=float)
    if scale not in ("ecgsyn", "none"):
        raise ValueError(f"scale must be 'ecgsyn' or 'none'; got {scale!r}.")
    if hr_scaling not in ("ecgsyn", "physiological"):
        raise ValueError(f"hr_scaling must be 'ecgsyn' or 'physiological'; got {hr_scaling!r}.")
    rr_beats = jnp.atleast_1d(jnp.asarray(rr, dtype=float))
    dt_int = 1.0 / (float(sampling_rate) * int(oversample))
    rr_lo = (_block_len(dt_int) + 1) * dt_int
    if _is_concrete(rr_beats) and rr_beats.size and not float(jnp.min(rr_beats)) >= rr_lo:
        raise ValueError(
            f"rr must be >= {rr_lo:.4f} s (heart rate <= {60.0 / rr_lo:.0f} bpm) at this "
            f"sampling rate; got min {float(jnp.min(rr_beats)):.4g} s."
        )
    if mean_rr is None and rr_beats.shape[-1] == 1:
        mean_rr = rr_beats[0]
    f = lambda x: None if x is None else jnp.asarray(x, dtype=float)  # traced, not static
    return _ecg_waveform_jit(
        model, rr_beats, f(mean_rr), f(z_init), f(phase0), f(resp_amplitude), f(resp_frequency),
        n_samples=int(n_samples), sampling_rate=float(sampling_rate), hr_scaling=hr_scaling,
        scale=scale, oversample=int(oversample),
    )


@eqx.filter_jit
def _ecg_waveform_jit(
    model, rr_beats, mean_rr, z_init, phase0, resp_amplitude, resp_frequency, *, n_samples,
    sampling_rate, hr_scaling, scale, oversample,
):
    # compiled once per static configuration (op-by-op dispatch would be far slower);
    # inside a user's jit this is inlined
    q = oversample
    dt = 1.0 / (sampling_rate * q)
    n_steps = (n_samples - 1) * q + 1
    z = _waveform_raw(
        model,
        rr_beats,
        n_steps,
        dt,
        hr_scaling=hr_scaling,
        mean_rr=mean_rr,
        z_init=z_init,
        phase0=phase0,
        resp_amplitude=resp_amplitude,
        resp_frequency=resp_frequency,
    )[::q]
    if scale == "ecgsyn":
        return _minmax(z)
    return z


# ----------------------------------------------------------------------------
# User-facing simulation (mirrors neurokit2.ecg_simulate(method="ecgsyn"))
# ----------------------------------------------------------------------------


def _check_positive(name: str, value, unit: str, *, allow_zero=False):
    arr = np.asarray(value, dtype=float)
    bad = ~np.isfinite(arr) | ((arr < 0) if allow_zero else (arr <= 0))
    if np.any(bad):
        rng = ">= 0" if allow_zero else "> 0"
        raise ValueError(
            f"{name} must be finite and {rng} {unit}; got {arr.tolist()}."
        )
    return arr


def _ecgsyn_sizes(duration, sampling_rate, heart_rate, oversample):
    """Static sizes of ECGSYN's run (RR series length, internal samples)."""
    sfint = sampling_rate * oversample
    approx_beats = int(np.round(duration * (heart_rate / 60.0)))
    rrmean = 60.0 / heart_rate
    n = int(2 ** (np.ceil(np.log2(max(approx_beats, 1) * rrmean / 1.0))))
    n = max(n, 4)
    return n, int(round(n * sfint))


def _nt_constant(rr: float, n_int: int, dt: float) -> int:
    """ECGSYN's number of internal samples ``Nt`` for a constant RR."""
    tecg, i = 0.0, 0
    while i < n_int:
        tecg += rr
        i = int(np.round(tecg / dt))
    return i


def _nt_constant_batch(rr: np.ndarray, n_int: np.ndarray, dt: float) -> np.ndarray:
    """:func:`_nt_constant` for arrays of RRs and lengths (the same float operations)."""
    rr = np.asarray(rr, dtype=float)
    n_int = np.broadcast_to(np.asarray(n_int), rr.shape)
    tecg = np.zeros(rr.shape)
    i = np.zeros(rr.shape, dtype=np.int64)
    active = i < n_int
    while np.any(active):
        tecg = np.where(active, tecg + rr, tecg)
        i = np.where(active, np.round(tecg / dt).astype(np.int64), i)
        active = i < n_int
    return i


def _noise(key, z, sampling_rate, noise, n_valid):
    """neurokit2's ``signal_distort`` default: Laplace noise at 5, 10 and 100 Hz.

    For each frequency f with ``f <= 0.1 * sampling_rate`` and ``1/f <= duration``,
    ``int(duration f)`` Laplace draws of scale ``noise * std(signal)`` are
    interpolated (linearly here; cubic spline in neurokit2) to the signal length.
    """
    n = z.shape[-1]
    duration = n_valid / sampling_rate
    sd = jnp.std(z, axis=-1, ddof=1, keepdims=True)
    total = jnp.zeros_like(z)
    keys = jax.random.split(key, 3)
    for kf, f in zip(keys, (5.0, 10.0, 100.0), strict=True):
        if f > 0.1 * sampling_rate or 1.0 / f > duration:
            continue
        m = int(duration * f)
        draws = jax.random.laplace(kf, z.shape[:-1] + (m,), dtype=z.dtype)
        if m == 1:
            total = total + draws
            continue
        # linear interpolation as a banded matrix: chunks of the output times times the
        # few draws each chunk reads (static windows; no per-sample gather)
        win, wts = _interp_chunks(m, n, n_valid)
        d_win = jnp.take(draws, jnp.asarray(win), axis=-1)  # (..., chunk, width)
        part = jnp.einsum("...cw,cwt->...ct", d_win, jnp.asarray(wts, dtype=z.dtype))
        total = total + part.reshape(z.shape[:-1] + (-1,))[..., :n]
    return z + noise * sd * total


@functools.lru_cache(maxsize=64)
def _interp_chunks(m: int, n: int, n_valid: int, chunk: int = 256):
    """Linear interpolation of ``m`` points spread over ``n_valid`` samples, evaluated at
    samples ``0..n-1``, as per-chunk windows ``(n_chunk, width)`` of point indices and
    weights ``(n_chunk, width, chunk)`` (``pos = k (m-1)/(n_valid-1)``, ``lo = floor(pos)``
    clipped to ``[0, m-2]``, ``value = d[lo] (1 - w) + d[lo + 1] w``)."""
    n_chunk = -(-n // chunk)
    k = np.arange(n_chunk * chunk)
    pos = k * (m - 1) / max(n_valid - 1, 1)
    lo = np.clip(np.floor(pos).astype(np.int64), 0, m - 2)
    w = pos - lo
    lo_c, hi_c = lo.reshape(n_chunk, chunk), (lo + 1).reshape(n_chunk, chunk)
    start = lo_c.min(axis=1)
    width = int((hi_c.max(axis=1) - start).max()) + 1
    win = np.minimum(start[:, None] + np.arange(width)[None, :], m - 1)
    wts = np.zeros((n_chunk, width, chunk))
    rows = np.arange(n_chunk)[:, None]
    cols = np.arange(chunk)[None, :]
    np.add.at(wts, (rows, lo_c - start[:, None], cols), 1.0 - w.reshape(n_chunk, chunk))
    np.add.at(wts, (rows, hi_c - start[:, None], cols), w.reshape(n_chunk, chunk))
    return win.astype(np.int32), wts


def _prepare(
    duration, length, sampling_rate, heart_rate, heart_rate_std, ti, ai, bi, noise, lfhfratio,
    oversample, gamma,
):
    sampling_rate = float(_check_positive("sampling_rate", sampling_rate, "Hz"))
    if length is None:
        duration = float(_check_positive("duration", duration, "s"))
        length = int(np.ceil(duration * sampling_rate))
    else:
        length = int(_check_positive("length", length, "samples"))
        duration = length / sampling_rate if duration is None else float(
            _check_positive("duration", duration, "s")
        )
    hr = _check_positive("heart_rate", heart_rate, "bpm")
    if np.any(hr > 300):
        raise ValueError(f"heart_rate must lie in (0, 300] bpm; got {hr.tolist()}.")
    hrstd = _check_positive("heart_rate_std", heart_rate_std, "bpm", allow_zero=True)
    _check_positive("noise", noise, "(fraction of the signal SD)", allow_zero=True)
    _check_positive("lfhfratio", lfhfratio, "(LF/HF power ratio)")
    if int(oversample) != oversample or oversample < 1:
        raise ValueError(f"oversample must be an integer >= 1; got {oversample}.")
    arrs = {}
    for name, val, pos in (("ti", ti, False), ("ai", ai, False), ("bi", bi, True)):
        a = np.asarray(val, dtype=float)
        if a.ndim < 1 or a.shape[-1] != 5:
            raise ValueError(
                f"{name} must have shape (5,) (one value per wave P, Q, R, S, T) or "
                f"(n_ecg, 5); got shape {a.shape}."
            )
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{name} must be finite (no NaN or inf); got {a.tolist()}.")
        if pos and not np.all(a > 0):
            raise ValueError(f"{name} (Gaussian widths, rad) must be > 0; got {a.tolist()}.")
        arrs[name] = a
    if gamma is None:
        g = np.ones((1, 5))
    else:
        g = np.asarray(gamma, dtype=float)
        if g.ndim != 2 or g.shape[1] != 5 or not np.all(np.isfinite(g)):
            raise ValueError(f"gamma must be a finite (n_lead, 5) array; got shape {g.shape}.")
    return duration, length, sampling_rate, hr, hrstd, arrs, g


@eqx.filter_jit
def _batch_kernel(
    ti, ai, bi, gamma, rr_beats, mean_rr, nt, keys, noise, *, n_steps, dt, q, length,
    sampling_rate, hr_scaling, scale, add_noise,
):
    """(ecg, lead, time) waveforms; every ECG has its own parameters, RRs, Nt and key."""

    def one(ti1, ai1, bi1, rr1, mrr1, nt1, key1):
        def lead(g):
            model = McSharryECG(ti1, ai1 * g, bi1)
            z = _waveform_raw(
                model, rr1, n_steps, dt, hr_scaling=hr_scaling, mean_rr=mrr1,
                z_init=ECGSYN_Z_INIT, phase0=0.0, resp_amplitude=RESP_AMPLITUDE,
                resp_frequency=RESP_FREQUENCY,
            )[::q]
            if scale == "ecgsyn":
                valid = jnp.arange(z.shape[-1]) * q < nt1
                z = _minmax(z, valid)
            return z[:length]

        z = jax.vmap(lead)(gamma)
        if add_noise:
            ks = jax.random.split(key1, z.shape[0])
            z = jax.vmap(lambda zz, kk: _noise(kk, zz, sampling_rate, noise, length))(z, ks)
        return z

    return jax.vmap(one)(ti, ai, bi, rr_beats, mean_rr, nt, keys)


@eqx.filter_jit
def _rr_series(keys, hr, hrstd, lfhfratio, phases, *, n_rr: int, factor: int):
    """ECGSYN's RR series at the internal rate: RR process at 1 Hz, cubic zoom (batched)."""

    def one(key, h, sd, ph):
        rr0 = rr_process(key, n_rr, heart_rate=h, heart_rate_std=sd, lfhfratio=lfhfratio,
                         phases=ph)
        return upsample_rr(rr0, factor)

    return jax.vmap(one)(keys, hr, hrstd, phases)


@eqx.filter_jit
def _ecgsyn_beats(rr_int, *, dt: float, max_beats: int):
    """ECGSYN's beat loop (batched): per-beat RRs and ``Nt``, the samples it integrates."""

    def one(r):
        beats = rr_to_beats(r, dt, max_beats)
        nxt = jnp.round(jnp.cumsum(beats) / dt).astype(jnp.int32)
        nt = nxt[jnp.argmax(nxt >= r.shape[-1])]
        return beats, nt

    return jax.vmap(one)(rr_int)


def simulate_ecg_batch(
    duration: RealLike = 10,
    sampling_rate: RealLike = 1000,
    heart_rate: WaveLike = 70,
    heart_rate_std: WaveLike = 1,
    ti: WaveLike = ECGSYN_TI_DEGREES,
    ai: WaveLike = ECGSYN_AI,
    bi: WaveLike = ECGSYN_BI,
    *,
    key: PRNGKeyArray,
    n_ecg: int | None = None,
    length: int | None = None,
    noise: RealLike = 0.01,
    lfhfratio: RealLike = 0.5,
    oversample: int = 1,
    gamma: WaveLike | None = None,
    lead_names: Sequence[str] | None = None,
    hr_scaling: HrScaling = "ecgsyn",
    scale: Scale = "ecgsyn",
    rr_phases: WaveLike | None = None,
):
    """Many ECGSYN ECGs (different parameters, heart rates and keys) in one compiled call.

    Arguments as :func:`simulate_ecg`; `heart_rate`, `heart_rate_std` may be
    arrays of shape ``(n_ecg,)`` and `ti`, `ai`, `bi` of shape ``(n_ecg, 5)``
    (scalars / ``(5,)`` are broadcast). `n_ecg` defaults to the broadcast size.
    Each ECG gets its own key (split from `key`). `rr_phases` (``(n_ecg, n/2 - 1)``)
    overrides the random phases of the RR process, to reproduce a given draw.

    **Returns:** ``xarray.DataArray`` with dims ``(ecg, time)``, or ``(ecg, lead,
    time)`` when `gamma` gives several leads; time in seconds; attrs with units
    (``mV`` for ``scale="ecgsyn"``, ``model units`` for ``"none"``) and settings.
    """
    import xarray as xr

    if hr_scaling not in ("ecgsyn", "physiological"):
        raise ValueError(f"hr_scaling must be 'ecgsyn' or 'physiological'; got {hr_scaling!r}.")
    if scale not in ("ecgsyn", "none"):
        raise ValueError(f"scale must be 'ecgsyn' or 'none'; got {scale!r}.")
    duration, length, sampling_rate, hr, hrstd, arrs, g = _prepare(
        duration, length, sampling_rate, heart_rate, heart_rate_std, ti, ai, bi, noise,
        lfhfratio, oversample, gamma,
    )
    sizes = [np.size(hr), np.size(hrstd)]
    sizes += [a.shape[0] if a.ndim == 2 else 1 for a in arrs.values()]
    nb = int(n_ecg) if n_ecg is not None else max(sizes)
    if nb < 1:
        raise ValueError(f"n_ecg must be >= 1; got {nb}.")
    hr = np.broadcast_to(hr, (nb,)).astype(float)
    hrstd = np.broadcast_to(hrstd, (nb,)).astype(float)
    tib, aib, bib = (np.broadcast_to(arrs[k], (nb, 5)).astype(float) for k in ("ti", "ai", "bi"))
    q = int(oversample)
    sfint = sampling_rate * q
    dt = 1.0 / sfint
    # ECGSYN's RR series: n_rr (a power of two of seconds, from the mean rate) samples at
    # 1 Hz, zoomed to the internal rate; then its beat loop. Constant RR: done exactly
    # in numpy. Members are grouped by n_rr (one compiled call per group).
    n_rr_each = np.array([_ecgsyn_sizes(duration, sampling_rate, h, q)[0] for h in hr])
    keys = jax.random.split(key, nb)
    sub = jax.vmap(lambda k: jax.random.split(k, 2))(keys)
    k_rr, k_noise = sub[:, 0], sub[:, 1]
    factor = int(round(sfint))
    if factor != sfint:
        raise ValueError(
            f"sampling_rate * oversample must be an integer number of Hz; got {sfint}."
        )
    const_rr = 60.0 / hr
    nts = _nt_constant_batch(const_rr, n_rr_each.astype(np.int64) * factor, dt)
    groups = []  # (members, per-beat RRs, number of beats ECGSYN integrates)
    for n_rr in np.unique(n_rr_each[hrstd > 0]):
        sel = np.nonzero((n_rr_each == n_rr) & (hrstd > 0))[0]
        if rr_phases is None:
            ph = jax.vmap(lambda k, n=int(n_rr): _TWO_PI * jax.random.uniform(k, (n // 2 - 1,)))(
                jax.vmap(lambda k: jax.random.fold_in(k, 1))(k_rr[sel]))
        else:
            ph = np.asarray(rr_phases, dtype=float)
            if ph.shape[-1] != n_rr // 2 - 1:
                raise ValueError(
                    f"rr_phases must have n_rr/2 - 1 = {n_rr // 2 - 1} phases per ECG (n_rr = "
                    f"{n_rr} s of RR series); got shape {ph.shape}."
                )
            ph = jnp.asarray(np.broadcast_to(ph, (nb, n_rr // 2 - 1))[sel])
        rr_int = _rr_series(k_rr[sel], jnp.asarray(hr[sel]), jnp.asarray(hrstd[sel]),
                            lfhfratio, ph, n_rr=int(n_rr), factor=factor)
        rr_min = float(jnp.min(rr_int))
        if not rr_min >= (_block_len(dt) + 1) * dt:
            raise ValueError(
                "heart_rate_std is too large for heart_rate: the RR process reached "
                f"{rr_min:.3f} s (must stay >= {(_block_len(dt) + 1) * dt:.3f} s)."
            )
        max_beats = int(np.ceil(rr_int.shape[-1] * dt / rr_min)) + 2
        b, nt = _ecgsyn_beats(rr_int, dt=dt, max_beats=max_beats)
        b, nt = np.asarray(b), np.asarray(nt)
        # beats up to the first that ends at or after Nt (vectorised searchsorted)
        nb_sel = np.minimum((np.round(np.cumsum(b, axis=1) / dt) < nt[:, None]).sum(axis=1) + 1,
                            b.shape[1])
        nts[sel] = nt
        groups.append((sel, b, nb_sel))
    n_beats = max([1] + [int(g[2].max()) for g in groups])
    rr_pad = np.repeat(const_rr[:, None], n_beats, axis=1)  # last RR held (edge padding)
    for sel, b, nb_sel in groups:
        idx = np.minimum(np.arange(n_beats)[None, :], nb_sel[:, None] - 1)
        rr_pad[sel] = np.take_along_axis(b, idx, axis=1)
    mean_rr = 60.0 / hr
    n_out = max(-(-nt // q) for nt in nts)
    # pad to a multiple of 512 output samples so that nearby rates share one compile
    n_out = -(-max(n_out, length) // 512) * 512
    n_steps = (n_out - 1) * q + 1
    z = _batch_kernel(
        jnp.deg2rad(jnp.asarray(tib)), jnp.asarray(aib), jnp.asarray(bib), jnp.asarray(g),
        jnp.asarray(rr_pad), jnp.asarray(mean_rr), jnp.asarray(nts), k_noise,
        jnp.asarray(float(noise)),
        n_steps=int(n_steps), dt=float(dt), q=q, length=int(length),
        sampling_rate=float(sampling_rate),
        hr_scaling=hr_scaling, scale=scale, add_noise=bool(noise > 0),
    )
    z = np.asarray(z)
    # ECGSYN may integrate fewer samples than asked; mark them missing.
    for i, nt in enumerate(nts):
        n_valid = -(-nt // q)
        if n_valid < length:
            z[i, :, n_valid:] = np.nan
    t = np.arange(length) / sampling_rate
    attrs = {
        "units": "mV" if scale == "ecgsyn" else "model units",
        "long_name": "ECG (McSharry ECGSYN model)",
        "sampling_rate": sampling_rate,
        "hr_scaling": hr_scaling,
        "scale": scale,
        "noise": float(noise),
        "reference": "McSharry PE, Clifford GD, Tarassenko L, Smith LA, IEEE Trans Biomed Eng "
        "2003;50(3):289-294",
    }
    coords = {
        "time": ("time", t, {"units": "s"}),
        "heart_rate": ("ecg", hr, {"units": "bpm"}),
        "heart_rate_std": ("ecg", hrstd, {"units": "bpm"}),
    }
    if g.shape[0] == 1 and gamma is None:
        return xr.DataArray(z[:, 0], dims=("ecg", "time"), coords=coords, attrs=attrs)
    if lead_names is None:
        lead_names = (
            ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
            if g.shape[0] == 12 else [f"lead{i}" for i in range(g.shape[0])]
        )
    coords["lead"] = ("lead", list(lead_names))
    return xr.DataArray(z, dims=("ecg", "lead", "time"), coords=coords, attrs=attrs)


#: neurokit2's 12-lead gains on (P, Q, R, S, T) for method="multileads".
MULTILEAD_GAMMA = np.array(
    [
        [1, 0.1, 1, 1.2, 1],
        [2, 0.2, 0.2, 0.2, 3],
        [1, -0.1, -0.8, -1.1, 2.5],
        [-1, -0.05, -0.8, -0.5, -1.2],
        [0.05, 0.05, 1, 1, 1],
        [1, -0.05, -0.1, -0.1, 3],
        [-0.5, 0.05, 0.2, 0.5, 1],
        [0.05, 0.05, 1.3, 2.5, 2],
        [1, 0.05, 1, 2, 1],
        [1.2, 0.05, 1, 2, 2],
        [1.5, 0.1, 0.8, 1, 2],
        [1.8, 0.05, 0.5, 0.1, 2],
    ],
    dtype=float,
)


def simulate_ecg(
    duration: RealLike = 10,
    sampling_rate: RealLike = 1000,
    heart_rate: RealLike = 70,
    heart_rate_std: RealLike = 1,
    ti: WaveLike = ECGSYN_TI_DEGREES,
    ai: WaveLike = ECGSYN_AI,
    bi: WaveLike = ECGSYN_BI,
    *,
    key: PRNGKeyArray,
    length: int | None = None,
    noise: RealLike = 0.01,
    lfhfratio: RealLike = 0.5,
    oversample: int = 1,
    gamma: WaveLike | None = None,
    hr_scaling: HrScaling = "ecgsyn",
    scale: Scale = "ecgsyn",
    rr_phases: WaveLike | None = None,
):
    """Simulate one ECG with the McSharry model, like ``neurokit2.ecg_simulate(method="ecgsyn")``.

    Keyword names and defaults mirror neurokit2: `duration` (s), `sampling_rate`
    (Hz, also the internal rate unless `oversample` > 1, as neurokit2 uses
    ``sfint = sampling_rate``), `heart_rate` (bpm), `heart_rate_std` (bpm), `ti`
    (degrees), `ai`, `bi`, `length` (samples, overrides `duration`), `noise`
    (Laplace noise at 5/10/100 Hz scaled by the signal SD, as ``signal_distort``),
    `lfhfratio`. `gamma` (``(n_lead, 5)`` gains on the wave amplitudes, e.g.
    :data:`MULTILEAD_GAMMA`) adds a lead dimension. Randomness comes from the JAX
    `key` (the RR-process phases and the noise), not from numpy.

    As in ECGSYN, the record is integrated over the RR series' full length
    (a power of two of seconds) and min-max scaled over all of it, then cut to
    `length` samples.

    Extra: `hr_scaling` (``"ecgsyn"`` default, or ``"physiological"``), `scale`
    (``"ecgsyn"`` mV, or ``"none"`` raw model units), `rr_phases`.

    **Returns:** ``xarray.DataArray`` with dims ``(ecg, time)`` (``ecg`` of size 1;
    ``(ecg, lead, time)`` with `gamma`), time in seconds, ``units`` attrs.

    **Raises:** ``ValueError`` naming the argument and its valid range for a
    non-positive duration, sampling rate or heart rate, wrongly shaped or
    non-finite `ti`/`ai`/`bi`.
    """
    for name, val in (("heart_rate", heart_rate), ("heart_rate_std", heart_rate_std)):
        if np.ndim(val) != 0:
            raise ValueError(f"{name} must be a scalar for simulate_ecg (use simulate_ecg_batch).")
    for name, val in (("ti", ti), ("ai", ai), ("bi", bi)):
        if np.shape(val) != (5,):
            raise ValueError(
                f"{name} must have shape (5,) (one value per wave P, Q, R, S, T); "
                f"got shape {np.shape(val)}."
            )
    return simulate_ecg_batch(
        duration, sampling_rate, heart_rate, heart_rate_std, ti, ai, bi, key=key, n_ecg=1,
        length=length, noise=noise, lfhfratio=lfhfratio, oversample=oversample, gamma=gamma,
        hr_scaling=hr_scaling, scale=scale,
        rr_phases=None if rr_phases is None else np.asarray(rr_phases)[None],
    )
