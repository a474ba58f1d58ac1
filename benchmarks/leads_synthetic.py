"""Reproduce the LEADS experiments: known ground truths, misspecified cases, a scar on a
heart mesh and a detailed ionic model, for LEADS and every baseline and ablation.

Every method of :data:`leads_jax.agent.METHODS` runs through
:func:`leads_jax.agent.discover` with the **same fitting budget** (candidates x steps)
on every case and seed, in one process, so compiled programs are shared across seeds,
cases and methods (every case of one geometry has the same record shape).

Cases (the truth generates the data; the methods only ever see the noisy data):

- ``aliev-panfilov``, ``fitzhugh-nagumo``, ``mitchell-schaeffer``: ground truths from the
  catalog, at parameters away from the catalog defaults (the search starts there);
- ``bueno-orovio``, ``fenton-karma`` (**misspecified**): the true model is never in the
  catalog the methods may use (both are removed in every preset);
- ``scar`` (**heterogeneous**): Aliev-Panfilov on a heart mesh whose ``scar`` region
  (nodes within ``scar_radius`` cm of a point on the lateral wall) has a 5x lower
  conductivity and a raised excitation threshold ``a``; the truth is a per-region
  structure, to be found as a per-region choice;
- ``luo-rudy`` (**detailed ionic model**): a paced single-cell recording of the Luo-Rudy
  phase-1 model (Luo & Rudy, Circ Res 1991;68:1501-1526; eight states, six currents,
  written from the paper below with Rush-Larsen gates), imported through
  :func:`leads_jax.recording.from_recording` exactly as a user's recording is (split by
  beats; the observation map has a fitted gain and offset).

Metrics per (case, method, seed), all in ``results.nc`` (dims ``case, method, seed``):

- ``recovered``: the selected reaction model is the truth's (for ``scar`` also the
  per-region conductivity); n/a (NaN) for the misspecified cases and the ionic
  recording, where ``nearest`` names the selected catalog model instead;
- ``structure_distance``: the number of terms in which the selected structure differs
  from the truth's: reaction model, diffusion kind, each closure, and each parameter
  whose per-region choice differs (a non-grammar winner, an expression or neural model,
  counts as NaN);
- ``param_error``: the largest relative error of the truth's named parameters, where
  the reaction model matches (per region on ``scar``);
- ``test_rmse_clean`` (mV): the selected model rolled out on the **test pacing sites**
  (never seen by the fits or the selection) over the whole record (**3x the training
  horizon**), against the **noise-free** truth; ``late_rmse_clean``: the same beyond
  the training horizon only; ``test_rmse`` / ``val_rmse`` against the noisy data;
  ``extrap_ratio = test_rmse / val_rmse``;
- ``activation_error`` (ms, mean absolute over nodes that activate in both) and
  ``apd_error`` (ms, difference of median APD90) on the test site;
- ``stable``: the selected model passes the stability audit (3x horizon, unseen site);
- ``best_hybrid_test`` / ``best_physics_test`` (mV, clean): within a LEADS run, the
  best-by-validation candidate with / without a closure, scored like the winner;
- ``n_candidates``, ``wall_s``, ``compile_s`` (fit + observation compilations),
  ``train_s``, ``llm_tokens``, ``llm_cost``; ``trajectory`` (best validation RMSE vs
  candidates fitted).

Presets (each table states its noise, horizon and pacing sites):

- ``tiny``: CI; a 16-node cable, AP and FK, the grammar methods and the hand hybrid
  (:data:`TINY_METHODS`), a catalog without closures (the hand hybrid keeps its own),
  one seed, 4 candidates x 20 steps; about 2 minutes on 2 cores;
- ``quick``: a 32-node cable for the ground-truth and misspecified cases, a ~200-node
  ventricle for the scar (the neural and hybrid methods' cost grows with the nodes;
  pacing patches of 0.9 cm, a 120-ms training horizon: the scar case refuses data whose
  waves do not propagate or end after the horizon), the Luo-Rudy cell; 16 candidates x
  100 steps per method;
  3 seeds; the catalog holds Aliev-Panfilov, FitzHugh-Nagumo and Mitchell-Schaeffer
  (and every closure, diffusion kind and parameter mode);
- ``full``: the default ventricle (``Geometry.ventricle()``, 1,833 nodes) for every tissue case,
  five pacing sites, the full catalog except the misspecified truths, 32 candidates x
  300 steps, the scar over a 240-ms horizon (95% of the healthy tissue is activated from
  the apex by 222 ms); meant for GPUs/TPUs. The candidate axis is sharded over all local
  devices (``jax.sharding``, done by :func:`leads_jax.fit.fit` when there are several).
  ``--smoke`` runs it on one case and method, one round and three steps.

Usage::

    python benchmarks/leads_synthetic.py --preset quick [--seeds 0 1 2]
        [--cases ...] [--methods ...] [--policy offline|llm --llm-model M]
        [--smoke] [--runs DIR [--resume | --report-only]] [--compile-cache DIR]
        [--out benchmarks/results]

Results: ``benchmarks/results/leads_synthetic_<preset>.{nc,md}`` and figures
``leads_synthetic_<preset>_{activation,test_error,trajectory}.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import pathlib
import platform
import sys
import tempfile
import time
import warnings

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("MPLBACKEND", "Agg")
if "--compile-cache" in sys.argv or os.environ.get("LEADS_JAX_CACHE_DIR"):
    # JAX never caches a program with a host callback; equinox's checks are host
    # callbacks unless EQX_ON_ERROR is set before equinox is imported (leads_jax._cache)
    os.environ.setdefault("EQX_ON_ERROR", "nan")

import jax
import numpy as np
import xarray as xr

from leads_jax import enable_compilation_cache
from leads_jax.agent import METHODS, Budget, discover
from leads_jax.agent._data import discovery_data
from leads_jax.agent._loop import heldout_prediction
from leads_jax.agent._methods import resolve_method
from leads_jax.agent._report import compile_wall_seconds
from leads_jax.compile import bucket_size
from leads_jax.datasets import default_conductivity, make_dataset
from leads_jax.fit import FitConfig, load_candidate
from leads_jax.geometry import Geometry
from leads_jax.measure import activation_times, apd90
from leads_jax.recording import from_recording
from leads_jax.structure import Catalog, Structure

HERE = pathlib.Path(__file__).parent
RESULTS = HERE / "results"

GROUND_TRUTHS = ("aliev-panfilov", "fitzhugh-nagumo", "mitchell-schaeffer")
MISSPECIFIED = ("bueno-orovio", "fenton-karma")
CASES = (*GROUND_TRUTHS, *MISSPECIFIED, "scar", "luo-rudy")
ABLATIONS = ("no-structure", "one-round", "no-memory", "no-reflection")
TINY_METHODS = ("leads", "hand-hybrid", "random", "one-round", "no-memory", "no-reflection")
"""The tiny preset's methods: those whose programs a CI run can compile in its budget
(the expression and neural methods compile programs of their own; they run end to end
on tiny data in tests/test_agent_methods.py)."""
TRUE_PARAMETERS = {
    # away from the catalog defaults (the search starts at the defaults)
    "aliev-panfilov": {"a": 0.13, "k": 9.0},
    "fitzhugh-nagumo": {"a": 0.15, "c1": 0.24},
    "mitchell-schaeffer": {"tau_in": 0.33, "tau_out": 5.5},
    "bueno-orovio": {},
    "fenton-karma": {},
}
SCAR = {"D_factor": 0.2, "a": (0.13, 0.2), "k": 9.0}
"""Scar case: conductivity (healthy, scar) = (D0, 0.2 D0), AP threshold a per region."""


@dataclasses.dataclass(frozen=True)
class Preset:
    name: str
    cable_nodes: int | None  # None: the tissue cases run on the ventricle
    ventricle_nodes: int
    cases: tuple[str, ...]
    methods: tuple[str, ...]
    seeds: tuple[int, ...]
    budget: Budget
    steps: int
    t_train: float  # ms, tissue cases (cable / mesh)
    t_train_mesh: float
    save_every: float  # ms
    noise: float  # fraction of the clean signal's range
    dt_cable: float
    dt_mesh: float
    pacing_sites_mesh: tuple[str, ...]
    catalog_reactions: tuple[str, ...] | None  # None: the full catalog (minus MISSPECIFIED)
    closures: bool = True  # False: the catalog has no closures (tiny: fewer programs)
    shared_bucket: bool = False  # pad every fit to the whole budget: one program per
    # topology for every method (the one-round ablation fits the budget in one round)
    lr_beats: int = 4
    lr_period: float = 600.0  # ms
    scar_radius: float = 2.0  # cm (about 13% of the ventricle surface)
    # radius of the ventricle's pacing patches (cm): on the ~200-node mesh the default
    # 0.6 cm holds 2 nodes at the septum and lateral sites, too few to start a wave (4% and
    # 3% of the nodes activated); 0.9 cm holds 7 at each site and every sample propagates
    mesh_patch_radius: float = 0.6
    learning_rate: float = 0.03
    # the pure-neural baseline's step: Adam's default (Kingma & Ba, ICLR 2015), the usual
    # step for network weights. At the shared 0.03 (a step for physical parameters) every
    # network left its state bounds within 10-30 steps (every candidate, every seed, BO
    # and FK, 2026-12-03), so the baseline kept its initial, zero-output network
    neural_learning_rate: float = 1e-3

    def describe(self) -> str:
        geo = (f"{self.cable_nodes}-node cable (3 pacing sites: train / val / test)"
               if self.cable_nodes else
               f"ventricle of about {self.ventricle_nodes} nodes (sites "
               f"{', '.join(self.pacing_sites_mesh)}; the last two val / test)")
        cat = ", ".join(self.catalog_reactions) if self.catalog_reactions else \
            "every catalog reaction except " + ", ".join(MISSPECIFIED)
        return (f"preset `{self.name}`: tissue cases on a {geo}, training horizon "
                f"{self.t_train:g} ms, record {3 * self.t_train:g} ms; "
                f"scar on a ventricle of about {self.ventricle_nodes} nodes (sites "
                f"{', '.join(self.pacing_sites_mesh)}), horizon {self.t_train_mesh:g} ms; "
                f"Luo-Rudy cell: {self.lr_beats} beats at {self.lr_period:g} ms (split by beats); "
                f"samples every {self.save_every:g} ms, noise {100 * self.noise:g}% of the "
                f"signal range; budget per method: {self.budget.candidates} candidates "
                f"({self.budget.k} per round, <= {self.budget.rounds} rounds) x {self.steps} "
                f"steps; Adam, step {self.learning_rate:g} (pure-neural baseline "
                f"{self.neural_learning_rate:g}); catalog reactions: {cat}; seeds "
                f"{list(self.seeds)}")


PRESETS = {
    "tiny": Preset("tiny", cable_nodes=16, ventricle_nodes=402,
                   cases=("aliev-panfilov", "fenton-karma"), methods=TINY_METHODS, seeds=(0,),
                   budget=Budget(rounds=2, candidates=4, k=2, patience=None), steps=20,
                   t_train=24.0, t_train_mesh=60.0, save_every=2.0, noise=0.01,
                   dt_cable=0.2, dt_mesh=0.5, pacing_sites_mesh=("apex", "septum", "lateral"),
                   catalog_reactions=GROUND_TRUTHS, closures=False, shared_bucket=True),
    "quick": Preset("quick", cable_nodes=32, ventricle_nodes=200, cases=CASES,
                    methods=METHODS, seeds=(0, 1, 2),
                    budget=Budget(rounds=4, candidates=16, k=4, patience=None), steps=100,
                    t_train=36.0, t_train_mesh=120.0, save_every=2.0, noise=0.01,
                    dt_cable=0.25, dt_mesh=0.5,
                    pacing_sites_mesh=("apex", "septum", "lateral"),
                    catalog_reactions=GROUND_TRUTHS, mesh_patch_radius=0.9),
    "full": Preset("full", cable_nodes=None, ventricle_nodes=1862, cases=CASES,
                   methods=METHODS, seeds=(0, 1, 2),
                   budget=Budget(rounds=4, candidates=32, k=8, patience=None), steps=300,
                   t_train=60.0, t_train_mesh=240.0, save_every=2.0, noise=0.01,
                   dt_cable=0.5, dt_mesh=0.5,
                   pacing_sites_mesh=("apex", "septum", "lateral", "anterior", "posterior"),
                   catalog_reactions=None),
}


def smoke_preset() -> Preset:
    """The full configuration (ventricle, sites, catalog), one case and method, one round
    and three steps: checks on a CPU that the GPU/TPU preset runs unchanged."""
    return dataclasses.replace(PRESETS["full"], name="full-smoke", cases=("aliev-panfilov",),
                               methods=("leads",), seeds=(0,),
                               budget=Budget(rounds=1, candidates=4, k=4, patience=None),
                               steps=3, t_train=12.0, t_train_mesh=12.0)


# ---------------------------------------------------------------------------------------
# the Luo-Rudy phase-1 cell (written from the paper; not in any catalog)
# ---------------------------------------------------------------------------------------
def luo_rudy_1991(*, period=400.0, beats=4, t_end=None, dt=0.01, every=2.0, start=10.0,
                  amplitude=-40.0, duration=1.0):
    """A paced single-cell action-potential train of the Luo-Rudy (1991) model.

    Equations and constants from Luo & Rudy, *A model of the ventricular cardiac action
    potential*, Circ Res 1991;68:1501-1526 (Table 1 and the appendix): INa (m^3 h j),
    the slow inward current Isi (d f, E_si from [Ca]i), the time-dependent IK (X, Xi),
    the time-independent IK1 (K1 inf), the plateau IKp and the background Ib; [K]o 5.4
    mM, C = 1 uF/cm^2. Gates are integrated with the Rush-Larsen exponential step, V and
    [Ca]i with forward Euler, at `dt` ms (plain numpy, no package code).

    **Returns:** ``(t ms, V mV, stimulus onsets ms)`` sampled every `every` ms.
    """
    from math import exp, log, sqrt

    t_end = float(start + period * beats) if t_end is None else float(t_end)
    ko = 5.4
    gna, ena, gsi, gk, gk1, gkp, gb = 23.0, 54.4, 0.09, 0.282 * sqrt(ko / 5.4), \
        0.6047 * sqrt(ko / 5.4), 0.0183, 0.03921
    ek, ek1, ekp, eb = -77.0, -87.26, -87.26, -59.87

    def rates(v):
        am = 0.32 * (v + 47.13) / (1.0 - exp(-0.1 * (v + 47.13))) if abs(v + 47.13) > 1e-6 \
            else 3.2
        bm = 0.08 * exp(-v / 11.0)
        if v >= -40.0:
            ah = aj = 0.0
            bh = 1.0 / (0.13 * (1.0 + exp((v + 10.66) / -11.1)))
            bj = 0.3 * exp(-2.535e-7 * v) / (1.0 + exp(-0.1 * (v + 32.0)))
        else:
            ah = 0.135 * exp((80.0 + v) / -6.8)
            bh = 3.56 * exp(0.079 * v) + 3.1e5 * exp(0.35 * v)
            aj = ((-1.2714e5 * exp(0.2444 * v) - 3.474e-5 * exp(-0.04391 * v))
                  * (v + 37.78) / (1.0 + exp(0.311 * (v + 79.23))))
            bj = 0.1212 * exp(-0.01052 * v) / (1.0 + exp(-0.1378 * (v + 40.14)))
        ad = 0.095 * exp(-0.01 * (v - 5.0)) / (1.0 + exp(-0.072 * (v - 5.0)))
        bd = 0.07 * exp(-0.017 * (v + 44.0)) / (1.0 + exp(0.05 * (v + 44.0)))
        af = 0.012 * exp(-0.008 * (v + 28.0)) / (1.0 + exp(0.15 * (v + 28.0)))
        bf = 0.0065 * exp(-0.02 * (v + 30.0)) / (1.0 + exp(-0.2 * (v + 30.0)))
        ax = 0.0005 * exp(0.083 * (v + 50.0)) / (1.0 + exp(0.057 * (v + 50.0)))
        bx = 0.0013 * exp(-0.06 * (v + 20.0)) / (1.0 + exp(-0.04 * (v + 20.0)))
        return (am, bm), (ah, bh), (aj, bj), (ad, bd), (af, bf), (ax, bx)

    def currents(v, m, h, j, d, f, x, cai):
        esi = 7.7 - 13.0287 * log(cai)
        ina = gna * m**3 * h * j * (v - ena)
        isi = gsi * d * f * (v - esi)
        xi = (2.837 * (exp(0.04 * (v + 77.0)) - 1.0) / ((v + 77.0) * exp(0.04 * (v + 35.0)))
              if v > -100.0 and abs(v + 77.0) > 1e-6 else 1.0)
        ik = gk * x * xi * (v - ek)
        ak1 = 1.02 / (1.0 + exp(0.2385 * (v - ek1 - 59.215)))
        bk1 = ((0.49124 * exp(0.08032 * (v - ek1 + 5.476)) + exp(0.06175 * (v - ek1 - 594.31)))
               / (1.0 + exp(-0.5143 * (v - ek1 + 4.753))))
        ik1 = gk1 * ak1 / (ak1 + bk1) * (v - ek1)
        ikp = gkp * (v - ekp) / (1.0 + exp((7.488 - v) / 5.98))
        ib = gb * (v - eb)
        return ina + isi + ik + ik1 + ikp + ib, isi

    v, cai = -84.0, 2e-4
    gates = []
    for a, b in rates(v):
        gates.append(a / (a + b) if a + b > 0 else 0.0)
    m, h, j, d, f, x = gates
    onsets = start + period * np.arange(beats)
    onset_list = [float(o) for o in onsets]
    n = int(round(t_end / dt))
    k_every = int(round(every / dt))
    ts, vs = [], []
    for i in range(n + 1):
        t = i * dt
        if i % k_every == 0:
            ts.append(t)
            vs.append(v)
        stim = amplitude if any(o <= t < o + duration for o in onset_list) else 0.0
        iion, isi = currents(v, m, h, j, d, f, x, cai)
        new = []
        for g, (a, b) in zip((m, h, j, d, f, x), rates(v), strict=True):
            s = a + b
            ginf, tau = (a / s, 1.0 / s) if s > 0 else (g, math.inf)
            new.append(ginf + (g - ginf) * math.exp(-dt / tau))
        m, h, j, d, f, x = new
        cai += dt * (-1e-4 * isi + 0.07 * (1e-4 - cai))
        v += -dt * (iion + stim)
    return np.asarray(ts), np.asarray(vs), onsets


# ---------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------
def _catalog(preset: Preset) -> Catalog:
    cat = Catalog.default().without(*MISSPECIFIED)
    if preset.catalog_reactions is not None:
        cat = dataclasses.replace(cat, reactions=tuple(
            r for r in cat.reactions if r in preset.catalog_reactions))
    if not preset.closures:
        cat = dataclasses.replace(cat, closures=(), diffusions=("laplacian",))
    return cat


def _tissue_geometry(preset: Preset) -> Geometry:
    if preset.cable_nodes:
        return Geometry.cable(preset.cable_nodes)
    return Geometry.ventricle(preset.ventricle_nodes, patch_radius=preset.mesh_patch_radius)


def _scar_geometry(preset: Preset) -> Geometry:
    g = Geometry.ventricle(preset.ventricle_nodes, patch_radius=preset.mesh_patch_radius)
    v = np.asarray(g.vertices, float)
    centre = v[int(np.argmax(v[:, 0]))]  # on the lateral wall, at its widest
    labels = (np.linalg.norm(v - centre, axis=1) < preset.scar_radius).astype(int)
    return g.with_regions(labels, ("healthy", "scar"))


@dataclasses.dataclass
class CaseData:
    name: str
    kind: str  # ground-truth | misspecified | heterogeneous | ionic
    noisy: object  # what the methods see (xarray Dataset or FitData)
    clean: np.ndarray  # (sample, time, node) noise-free truth in mV
    truth: Structure | None
    truth_values: dict  # name -> scalar or per-region tuple
    dt: float
    description: str


def _check_scar_is_observable(ds, geo, preset: Preset) -> None:
    """The scar case tests whether a method finds the scar, so its data must show it:
    from every pacing site the wave must reach (nearly) all of the healthy tissue, and
    from the training site it must activate 95% of it within the training horizon, so
    that the training data hold the wave around and into the scar (whose nodes may
    activate late or never: slow conduction or block, both visible). Otherwise
    every method fits a resting tissue to noise and the comparison measures nothing: a
    quick preset once had 2-node patches that activated 3-4% of the mesh from two of its
    three sites, and a 45-ms horizon that ended before the wave reached the scar."""
    v, ts = ds["observed_clean"].values, ds["time"].values
    act = np.asarray(activation_times(v, ts).values, float)  # (sample, node)
    healthy = np.asarray(geo.regions) == 0
    reached = np.isfinite(act[:, healthy]).mean(axis=1)
    sites = [str(x) for x in ds["pacing_site"].values]
    if np.any(reached < 0.95):
        bad = [f"{s} {f:.0%}" for s, f in zip(sites, reached, strict=True) if f < 0.95]
        raise ValueError(f"scar case: pacing activates too little of the healthy tissue "
                         f"({', '.join(bad)}): raise mesh_patch_radius (now "
                         f"{preset.mesh_patch_radius:g} cm) or the mesh resolution")
    train = [i for i, sp in enumerate(ds["split"].values) if str(sp) == "train"]
    at = act[np.ix_(train, np.where(healthy)[0])]
    last = float(np.quantile(np.where(np.isfinite(at), at, np.inf), 0.95))
    if not last <= preset.t_train_mesh:
        raise ValueError(f"scar case: from the training site 95% of the healthy tissue is "
                         f"activated at {last:.0f} ms, after the {preset.t_train_mesh:g}-ms "
                         "training horizon: lengthen t_train_mesh")


def make_case(name: str, preset: Preset, seed: int, _lr_cache={}) -> CaseData:  # noqa: B006
    """The data of one case and seed (the noise realisation depends on the seed)."""
    if name in TRUE_PARAMETERS:
        geo = _tissue_geometry(preset)
        sites = None if preset.cable_nodes else list(preset.pacing_sites_mesh)
        ds = make_dataset(name, geo, pacing_sites=sites, t_train=preset.t_train,
                          save_every=preset.save_every, noise=preset.noise, seed=seed,
                          parameters=TRUE_PARAMETERS[name])
        kind = "ground-truth" if name in GROUND_TRUTHS else "misspecified"
        return CaseData(name, kind, ds, np.asarray(ds["observed_clean"].values, float),
                        Structure.from_json(ds.attrs["structure"]),
                        dict(TRUE_PARAMETERS[name]),
                        preset.dt_cable if preset.cable_nodes else preset.dt_mesh,
                        ds.attrs["description"])
    if name == "scar":
        geo = _scar_geometry(preset)
        d0 = default_conductivity(geo)
        values = {"D": (d0, SCAR["D_factor"] * d0), "a": SCAR["a"], "k": SCAR["k"]}
        ds = make_dataset("aliev-panfilov", geo, pacing_sites=list(preset.pacing_sites_mesh),
                          t_train=preset.t_train_mesh, save_every=preset.save_every,
                          noise=preset.noise, seed=seed,
                          parameters={k: list(v) if isinstance(v, tuple) else v
                                      for k, v in values.items()})
        _check_scar_is_observable(ds, geo, preset)
        return CaseData(name, "heterogeneous", ds, np.asarray(ds["observed_clean"].values, float),
                        Structure.from_json(ds.attrs["structure"]), values, preset.dt_mesh,
                        f"Aliev-Panfilov with a scar ({int(np.sum(np.asarray(geo.regions)))} of "
                        f"{geo.n_nodes} nodes): D {d0:.3g} -> {SCAR['D_factor'] * d0:.3g} "
                        f"cm^2/ms, a {SCAR['a'][0]} -> {SCAR['a'][1]}")
    if name == "luo-rudy":
        key = (preset.lr_period, preset.lr_beats, preset.save_every)
        if key not in _lr_cache:
            _lr_cache[key] = luo_rudy_1991(period=preset.lr_period, beats=preset.lr_beats,
                                           every=preset.save_every)
        t, vm, onsets = _lr_cache[key]
        rng = np.random.default_rng(seed)
        sigma = preset.noise * float(vm.max() - vm.min())
        noisy = vm + sigma * rng.standard_normal(vm.shape)
        fd = from_recording(noisy.astype(np.float32), time=t,
                            pacing={"times": onsets, "duration": 1.0},
                            name=f"luo-rudy-1991 seed {seed}")
        fd = dataclasses.replace(fd, provenance={**fd.provenance,
                                                 "noise_std_mV": f"{sigma:.6g}"})
        return CaseData(name, "ionic", fd, vm[None, :, None].astype(float), None, {}, 0.5,
                        f"Luo-Rudy 1991 cell, {preset.lr_beats} beats at "
                        f"{preset.lr_period:g} ms, noise {sigma:.2g} mV")
    raise ValueError(f"unknown case {name!r}; valid: {list(CASES)}")


# ---------------------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------------------
def _terms(s: Structure) -> set:
    c = s.canonical()
    out = {("reaction", c.reaction), ("diffusion", c.diffusion.kind)}
    out |= {("closure", t.target) for t in c.closures}
    out |= {("per-region", p.name) for p in c.parameters if p.mode == "per-region"}
    return out


def structure_distance(found, truth: Structure | None) -> float:
    if truth is None or not isinstance(found, Structure):
        return math.nan
    return float(len(_terms(found) ^ _terms(truth)))


def _region_values(model, name: str, geometry) -> list[float] | None:
    vals = model.fitted_values() if hasattr(model, "fitted_values") else {}
    if name not in vals:
        return None
    v = np.atleast_1d(np.asarray(vals[name], float))
    if v.size == 1:
        return [float(v[0])] * geometry.n_regions
    reg = np.asarray(geometry.regions)
    return [float(v[reg == r].mean()) for r in range(geometry.n_regions)]


def parameter_error(model, case: CaseData, found, structure_of_truth, geometry) -> float:
    """Largest relative error of the truth's named parameters (NaN when the reaction
    model differs or nothing is named). Parameters the winner left fixed are compared at
    their (catalog) values."""
    if not isinstance(found, Structure) or structure_of_truth is None:
        return math.nan
    if found.canonical().reaction != structure_of_truth.canonical().reaction:
        return math.nan
    errs = []
    fixed = {p.name: p.value for p in found.canonical().parameters}
    for name, true in case.truth_values.items():
        true = np.atleast_1d(np.asarray(true, float))
        got = _region_values(model, name, geometry)
        if got is None:
            if name not in fixed or fixed[name] is None:
                continue
            got = [float(fixed[name])] * len(true)
        got = np.asarray(got[: len(true)] if len(true) > 1 else got[:1], float)
        if len(true) > 1 and len(got) < len(true):
            got = np.full(len(true), got[0])
        errs.append(float(np.max(np.abs(got - true) / np.abs(true))))
    return max(errs) if errs else math.nan


def _activation(v, ts) -> np.ndarray:
    """First activation time per node (ms) of traces ``(time, node)``."""
    v = np.asarray(v, float)
    return np.asarray(activation_times(v, ts), float).reshape(-1, v.shape[-1])[0]


def _rollout_test(model, dd, config):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pred = heldout_prediction(model, dd, config)
    return None if pred is None else np.asarray(pred, float)


def _test_clean(case: CaseData, dd) -> np.ndarray:
    idx = np.asarray(dd.fit_data.splits["test"].samples)
    return case.clean[idx]


def clean_errors(pred, case: CaseData, dd) -> dict:
    out = {"test_rmse_clean": math.inf, "late_rmse_clean": math.inf,
           "activation_error": math.nan, "apd_error": math.nan}
    if pred is None:
        return out
    clean = _test_clean(case, dd)
    scored = np.asarray(dd.test.scored, bool)  # the test split's window (as test_rmse)
    out["test_rmse_clean"] = float(np.sqrt(np.mean((pred - clean)[:, scored] ** 2)))
    late = scored & (np.asarray(dd.test.ts) > dd.t_train + 1e-9)
    if late.any():
        out["late_rmse_clean"] = float(np.sqrt(np.mean((pred[:, late] - clean[:, late]) ** 2)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ta, pa = _activation(clean[0], dd.test.ts), _activation(pred[0], dd.test.ts)
        both = np.isfinite(ta) & np.isfinite(pa)
        if both.any():
            out["activation_error"] = float(np.mean(np.abs(ta[both] - pa[both])))
        at, ap = (np.nanmedian(np.asarray(apd90(x, dd.test.ts).values, float))
                  for x in (clean[0], pred[0]))
        out["apd_error"] = float(abs(at - ap)) if np.isfinite(at) and np.isfinite(ap) \
            else math.nan
    return out


def _load(run_dir: pathlib.Path, o, geometry):
    path = run_dir / f"round_{o.round:03d}" / "candidates" / f"candidate_{o.id:04d}.eqx"
    if not path.exists():
        return None
    _, model, _ = load_candidate(path, geometry)
    return model


def best_of_kind(res, run_dir, dd, case, config, *, hybrid: bool) -> float:
    """Clean test RMSE of the best-by-validation stable grammar candidate with
    (`hybrid`) or without a closure in one run."""
    pool = []
    for o in res.history:
        if not o.stable or not math.isfinite(o.val_rmse):
            continue
        try:
            s = Structure.from_json(o.spec)
        except Exception:  # a non-grammar candidate (expression or neural)
            continue
        if bool(s.closures) == hybrid:
            pool.append(o)
    if not pool:
        return math.nan
    o = min(pool, key=lambda x: x.val_rmse)
    model = res.model if o.id == res.best_id else _load(run_dir, o, dd.geometry)
    return clean_errors(_rollout_test(model, dd, config), case, dd)["test_rmse_clean"]


def _recovered(case: CaseData, found) -> float:
    if case.kind in ("misspecified", "ionic"):
        return math.nan
    if not isinstance(found, Structure):
        return 0.0
    c, t = found.canonical(), case.truth.canonical()
    ok = c.reaction == t.reaction
    if case.kind == "heterogeneous":
        ok = ok and any(p.name == "D" and p.mode == "per-region" for p in c.parameters)
    return float(ok)


def _nearest(found) -> str:
    if isinstance(found, Structure):
        return found.canonical().reaction
    if isinstance(found, dict):
        return str(found.get("kind", "?"))
    return "none"


def _trajectory(res, n: int) -> np.ndarray:
    out = np.full(n, np.nan)
    best = math.inf
    for i, o in enumerate(sorted(res.history, key=lambda x: x.id)[:n]):
        if o.stable and math.isfinite(o.val_rmse):
            best = min(best, o.val_rmse)
        out[i] = best
    return out


# ---------------------------------------------------------------------------------------
# one run and the whole preset
# ---------------------------------------------------------------------------------------
SCALARS = ("recovered", "structure_distance", "param_error", "test_rmse_clean",
           "late_rmse_clean", "test_rmse", "val_rmse", "extrap_ratio", "activation_error",
           "apd_error", "stable", "best_hybrid_test", "best_physics_test", "n_candidates",
           "wall_s", "compile_s", "train_s", "llm_tokens", "llm_cost")
TIMES = ("wall_s", "compile_s", "train_s")
UNITS = {"structure_distance": "terms", "param_error": "1", "test_rmse_clean": "mV",
         "late_rmse_clean": "mV", "test_rmse": "mV", "val_rmse": "mV", "extrap_ratio": "1",
         "activation_error": "ms", "apd_error": "ms", "best_hybrid_test": "mV",
         "best_physics_test": "mV", "wall_s": "s", "compile_s": "s", "train_s": "s",
         "llm_cost": "USD", "llm_tokens": "1", "n_candidates": "1", "recovered": "1",
         "stable": "1"}


def _policy(args_policy, llm_model, api_base):
    if args_policy == "offline":
        return "offline", None
    from leads_jax.agent import LLMPolicy

    kw = {"api_base": api_base} if api_base else {}
    return LLMPolicy(llm_model, **kw), None


def fit_config(preset: Preset, method: str, dt: float) -> FitConfig:
    """The fitting configuration of `method`: the same steps for every method (the budget
    is candidates x steps); the pure-neural baseline steps with
    ``preset.neural_learning_rate`` (network weights), every other method with
    ``preset.learning_rate``."""
    lr = preset.neural_learning_rate if resolve_method(method).kind == "neural" \
        else preset.learning_rate
    return FitConfig(steps=preset.steps, learning_rate=lr, eval_every=10, patience=None,
                     dt=dt, min_bucket=bucket_size(preset.budget.candidates)
                     if preset.shared_bucket else 1)


def run_one(case: CaseData, method: str, seed: int, preset: Preset, run_dir: pathlib.Path,
            policy="offline", resume: bool = False) -> dict:
    config = fit_config(preset, method, case.dt)
    cat = _catalog(preset)
    if method == "hand-hybrid":  # a fixed design, not a search: its closure is allowed
        cat = dataclasses.replace(cat, closures=Catalog.default().closures)
    t0 = time.perf_counter()
    res = discover(case.noisy, policy=policy, method=method, budget=preset.budget,
                   key=jax.random.key(seed), out=run_dir, catalog=cat,
                   config=config, progress=False, write_report=False,
                   resume=resume and (run_dir / "run.json").exists())
    wall = time.perf_counter() - t0
    dd = discovery_data(case.noisy)
    pred = _rollout_test(res.model, dd, config)
    row = dict(clean_errors(pred, case, dd))
    o = res.observation
    row["val_rmse"] = o.val_rmse if o is not None else math.nan
    row["test_rmse"] = res.test_rmse
    row["extrap_ratio"] = (res.test_rmse / o.val_rmse) if o is not None and o.val_rmse > 0 \
        else math.nan
    row["stable"] = float(bool(o is not None and o.stable))
    row["recovered"] = _recovered(case, res.best)
    row["structure_distance"] = structure_distance(res.best, case.truth)
    row["param_error"] = parameter_error(res.model, case, res.best, case.truth, dd.geometry)
    row["nearest"] = _nearest(res.best)
    row["formula"] = o.formula if o is not None else ""
    if method == "leads":
        row["best_hybrid_test"] = best_of_kind(res, run_dir, dd, case, config, hybrid=True)
        row["best_physics_test"] = best_of_kind(res, run_dir, dd, case, config, hybrid=False)
    else:
        row["best_hybrid_test"] = row["best_physics_test"] = math.nan
    row["n_candidates"] = float(len(res.history))
    row["wall_s"] = wall
    row["compile_s"] = float(sum(compile_wall_seconds(t) for t in res.timings))
    row["train_s"] = float(sum(t.get("train_seconds", 0.0) for t in res.timings))
    client = getattr(policy, "client", None)
    row["llm_tokens"] = float(client.total_prompt_tokens + client.total_completion_tokens) \
        if client is not None else 0.0
    row["llm_cost"] = float(client.total_cost) if client is not None else 0.0
    row["trajectory"] = _trajectory(res, preset.budget.candidates)
    row["_pred"] = pred
    return row


class _Checkpoint:
    """Finished runs of a benchmark, kept in ``runs/rows.jsonl`` (rewritten atomically)."""

    def __init__(self, runs: pathlib.Path, preset: Preset, resume: bool):
        self.runs = runs
        self.path = runs / "rows.jsonl"
        settings = runs / "preset.json"
        me = json.dumps(dataclasses.asdict(preset), sort_keys=True, default=str)
        self.rows: dict[str, dict] = {}
        if self.path.exists() and not resume:
            raise ValueError(f"{runs} already holds benchmark runs; pass --resume to continue "
                             "them or choose another --runs folder")
        if resume and settings.exists() and settings.read_text() != me:
            raise ValueError(f"--resume: the preset differs from the one in {settings}")
        _atomic_write(settings, me)
        if resume and self.path.exists():
            for line in self.path.read_text().splitlines():
                if line.strip():
                    r = json.loads(line)
                    self.rows[r["key"]] = r

    def get(self, key: str) -> dict | None:
        r = self.rows.get(key)
        if r is None:
            return None
        out = dict(r["row"])
        out["trajectory"] = np.asarray(out["trajectory"], float)
        npz = self.runs / (key.replace("/", "_") + "_pred.npz")
        out["_pred"] = np.load(npz, allow_pickle=False)["pred"] if npz.exists() else None
        return out

    def put(self, key: str, row: dict) -> None:
        keep = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in row.items()
                if not k.startswith("_")}
        self.rows[key] = {"key": key, "row": keep}
        if row.get("_pred") is not None:
            npz = self.runs / (key.replace("/", "_") + "_pred.npz")
            tmp = npz.with_suffix(".tmp.npz")
            np.savez(tmp, pred=np.asarray(row["_pred"], np.float32))
            os.replace(tmp, npz)
        _atomic_write(self.path, "".join(json.dumps(r) + "\n" for r in self.rows.values()))


CLEAR_ABOVE_GIB = 6.0  # resident memory above which run_preset frees JAX's caches
CLEAR_ABOVE_MAPS = 0.25  # ... or this share of the kernel's memory-map limit in use: LLVM
# maps every compiled executable's sections, and a run keeping many of them died with
# "LLVM ERROR: Unable to allocate section memory" while 23 GiB were free


def _map_share() -> float:
    """The share of ``vm.max_map_count`` this process uses (Linux ``/proc``; inf
    elsewhere, so the caches are then freed after every run)."""
    try:
        limit = int(pathlib.Path("/proc/sys/vm/max_map_count").read_text())
        with open("/proc/self/maps", "rb") as f:
            used = sum(1 for _ in f)
    except (OSError, ValueError):
        return math.inf
    return used / max(limit, 1)


def _resident_gib() -> float:
    """This process's resident memory in GiB (psutil; inf where it is unavailable, so
    the caches are then freed after every run, as before)."""
    try:
        import psutil
    except ImportError:
        return math.inf
    return psutil.Process().memory_info().rss / 2**30


def _cache_dir() -> str | None:
    return jax.config.jax_compilation_cache_dir


def _free_memory_if_needed() -> bool:
    """After a run: with a persistent compilation cache (every program is on disk), free
    JAX's in-memory executables once resident memory exceeds :data:`CLEAR_ABOVE_GIB`
    or the process holds :data:`CLEAR_ABOVE_MAPS` of the kernel's memory-map limit,
    so a long benchmark's memory does not grow with its topologies. Below it they are
    kept, and the next runs reuse the compiled topologies of the last ones (reloading
    one from disk costs about 2 s per topology and run; benchmarks/fit_compile.py).
    Returns whether the caches were freed."""
    if _cache_dir() and (_resident_gib() > CLEAR_ABOVE_GIB
                         or _map_share() > CLEAR_ABOVE_MAPS):
        jax.clear_caches()
        return True
    return False


def _atomic_write(path: pathlib.Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def run_preset(preset: Preset, *, runs: pathlib.Path | None = None, policy="offline",
               progress: bool = True, verbose: bool = False,
               resume: bool = False, report_only: bool = False) -> tuple[xr.Dataset, dict]:
    """Run every (case, method, seed) of `preset`; returns ``(results, figure data)``.

    With `runs` (a folder), every finished run is checkpointed there atomically
    (``rows.jsonl`` + the LEADS predictions for the figures, ``.npz``), and each
    discovery run writes its rounds under it; ``resume=True`` continues an interrupted
    benchmark without redoing a finished (case, method, seed) or round; with
    ``report_only=True`` nothing is run: the tables are built from the finished runs
    (the others are NaN, and ``n_finished`` says how many there are)."""
    from tqdm.auto import tqdm

    tmp = None
    if runs is None:
        tmp = tempfile.TemporaryDirectory(prefix="leads_synthetic_")
        runs = pathlib.Path(tmp.name)
    runs.mkdir(parents=True, exist_ok=True)
    done = _Checkpoint(runs, preset, resume or report_only)
    finished = 0
    cases, methods, seeds = preset.cases, preset.methods, preset.seeds
    shape = (len(cases), len(methods), len(seeds))
    arrays = {k: np.full(shape, np.nan) for k in SCALARS}
    nearest = np.full(shape, "", dtype=object)
    formula = np.full(shape, "", dtype=object)
    traj = np.full((*shape, preset.budget.candidates), np.nan)
    figs: dict = {"cases": {}}
    descriptions = {}
    bar = tqdm(total=int(np.prod(shape)), desc=f"leads_synthetic {preset.name}",
               disable=not progress)
    t_start = time.perf_counter()
    try:
        for s_i, seed in enumerate(seeds):
            for c_i, cname in enumerate(cases):
                keys = [f"{cname}/{m}/{seed}" for m in methods]
                if report_only and all(done.get(k) is None for k in keys):
                    bar.update(len(methods))
                    continue
                case = make_case(cname, preset, seed)
                descriptions[cname] = case.description
                for m_i, method in enumerate(methods):
                    bar.set_postfix(case=cname, method=method, seed=seed)
                    key = f"{cname}/{method}/{seed}"
                    row = done.get(key)
                    if row is None and report_only:
                        bar.update(1)
                        continue
                    if row is None:
                        row = run_one(case, method, seed, preset,
                                      runs / f"{cname}_{method}_s{seed}", policy, resume)
                        done.put(key, row)
                    finished += 1
                    for k in SCALARS:
                        arrays[k][c_i, m_i, s_i] = row[k]
                    nearest[c_i, m_i, s_i] = row["nearest"]
                    formula[c_i, m_i, s_i] = row["formula"]
                    traj[c_i, m_i, s_i] = row["trajectory"]
                    if s_i == 0 and method == "leads":
                        dd = discovery_data(case.noisy)
                        figs["cases"][cname] = {
                            "truth": _test_clean(case, dd)[0], "pred": row["_pred"],
                            "ts": np.asarray(dd.test.ts), "geometry": dd.geometry}
                    bar.update(1)
                    _free_memory_if_needed()
                    if verbose:
                        print(f"  {cname:<18} {method:<13} seed {seed}: wall "
                              f"{row['wall_s']:6.1f} s (compile {row['compile_s']:5.1f}, train "
                              f"{row['train_s']:5.1f}); selected {row['nearest']}, test "
                              f"{row['test_rmse_clean']:.3g} mV", flush=True)
    finally:
        bar.close()
        if tmp is not None:
            tmp.cleanup()
    total = time.perf_counter() - t_start
    coords = {"case": list(cases), "method": list(methods), "seed": list(seeds),
              "candidate": np.arange(1, preset.budget.candidates + 1)}
    dims = ("case", "method", "seed")
    ds = xr.Dataset({k: (dims, v, {"units": UNITS.get(k, "1")}) for k, v in arrays.items()},
                    coords=coords)
    ds["nearest"] = (dims, nearest.astype(str))
    ds["formula"] = (dims, formula.astype(str))
    ds["trajectory"] = ((*dims, "candidate"), traj,
                        {"units": "mV", "long_name": "best validation RMSE vs candidates"})
    ds["kind"] = ("case", [make_kind(c) for c in cases])
    ds.attrs.update({
        "preset": preset.name, "description": preset.describe(),
        "case_descriptions": json.dumps(descriptions),
        "catalog": json.dumps(dataclasses.asdict(_catalog(preset))),
        "policy": policy if isinstance(policy, str) else getattr(policy, "name", "llm"),
        "total_seconds": total, "n_devices": jax.device_count(),
        "n_runs": int(np.prod(shape)), "n_finished": finished,
        "device": jax.devices()[0].platform, "jax_version": jax.__version__,
        "cpu_count": os.cpu_count() or 0, "cpu": cpu_description(),
        "python": platform.python_version(),
        "command": "python benchmarks/leads_synthetic.py " + " ".join(sys.argv[1:]),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "source": "benchmarks/leads_synthetic.py (leads-jax)",
    })
    return ds, figs


def cpu_description() -> str:
    """The CPU model and its widest vector instruction set, e.g. ``'AMD EPYC (avx512f)'``.
    XLA compiles for the CPU it runs on, so sums can round differently on another
    machine, and fits of 100 steps amplify such differences: the same runs made in two
    sessions (machines) differed by up to 0.5 mV of test error (the FK hand hybrid),
    while one machine reproduced them bit for bit across processes and run orders."""
    model, flags = None, set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "Hardware") and value.strip():
                    model = value.strip()
                elif key in ("flags", "Features"):
                    flags = set(value.split())
                if model and flags:
                    break
    except OSError:
        pass
    model = model or platform.processor() or platform.machine()
    isa = next((f for f in ("avx512f", "avx2", "avx", "sve", "asimd", "neon") if f in flags),
               "")
    return f"{model} ({isa})" if isa else model


def merge(parts: list[xr.Dataset]) -> xr.Dataset:
    """Results of several runs of one preset over disjoint cases (e.g. run in parallel
    processes) as one Dataset; seeds missing from a part are NaN."""
    presets = {p.attrs["preset"] for p in parts}
    if len(presets) != 1:
        raise ValueError(f"--merge: the parts come from different presets {sorted(presets)}")
    # a part's cases without any finished run (e.g. left to another process) drop out
    parts = [p.isel(case=np.isfinite(p["n_candidates"].values).any(axis=(1, 2)))
             for p in parts]
    cases = [c for p in parts for c in p.case.values]
    if len(set(cases)) != len(cases):
        raise ValueError(f"--merge: a case appears in more than one part: {cases}")
    out = xr.concat(parts, dim="case", join="outer", data_vars="all", coords="minimal",
                    compat="override", combine_attrs="override")
    for name in ("nearest", "formula"):
        out[name] = out[name].fillna("").astype(str)
    for v in out.variables.values():
        # a part read from disk carries its string widths as encoding (e.g. '<U14' for
        # 'aliev-panfilov'); written with them, longer names of other parts were cut
        # ('fitzhugh-nagum')
        v.encoding = {}
    desc = {}
    for p in parts:
        desc.update(json.loads(p.attrs["case_descriptions"]))
    out.attrs["case_descriptions"] = json.dumps(desc)
    out.attrs["n_runs"] = int(out["recovered"].size)
    out.attrs["n_finished"] = int(np.isfinite(out["n_candidates"].values).sum())
    out.attrs["total_seconds"] = float(sum(p.attrs["total_seconds"] for p in parts))
    out.attrs["command"] = " + ".join(p.attrs["command"] for p in parts)
    out.attrs["cpu"] = " + ".join(dict.fromkeys(  # the parts may come from other machines
        p.attrs.get("cpu", "CPU not recorded") for p in parts))
    out.attrs["merged_from"] = len(parts)
    return out


def make_kind(name: str) -> str:
    if name in GROUND_TRUTHS:
        return "ground-truth"
    if name in MISSPECIFIED:
        return "misspecified"
    return {"scar": "heterogeneous", "luo-rudy": "ionic"}.get(name, "?")


def deterministic_view(ds: xr.Dataset) -> xr.Dataset:
    """The results without the timings (what must be identical for a seed)."""
    return ds.drop_vars([v for v in TIMES if v in ds]).drop_attrs()


# ---------------------------------------------------------------------------------------
# targets and tables
# ---------------------------------------------------------------------------------------
def _mean_spread(x) -> tuple[float, float]:
    """Mean and spread over seeds of the finished runs (NaN: not run). A run whose model
    diverged (inf) makes the mean inf."""
    x = np.asarray(x, float)
    x = x[~np.isnan(x)]
    if not x.size:
        return math.nan, math.nan
    if np.isinf(x).any():
        return math.inf, math.nan
    return float(x.mean()), float(x.max() - x.min()) if x.size > 1 else 0.0


def _spread_verdict(ok: bool, a: xr.Dataset, b: xr.Dataset, *cases: str) -> str:
    """The verdict of a target stated against the seed spread: ``n/a`` unless both methods
    finished at least 2 seeds on every case compared (one seed has no spread, and "within"
    or "worse by more than" a spread of 0 says nothing)."""
    def seeds(x, c):
        return int(np.sum(np.isfinite(x["n_candidates"].sel(case=c).values)))

    if not cases or min(min(seeds(a, c), seeds(b, c)) for c in cases) < 2:
        return "n/a (fewer than 2 seeds: no spread)"
    return "met" if ok else "missed"


def targets(ds: xr.Dataset) -> list[tuple[str, str, str]]:
    """``(target, measured, verdict)`` rows of the reproduction issue's acceptance."""
    rows = []
    methods = list(ds.method.values)
    cases = list(ds.case.values)
    if "leads" not in methods:
        return rows
    L = ds.sel({"method": "leads"})
    gts = [c for c in cases if c in GROUND_TRUTHS]
    ran = np.isfinite(L["n_candidates"].values)  # finished runs (all, unless partial)
    if gts:
        rec = L["recovered"].sel(case=gts).values
        rec = rec[np.isfinite(L["n_candidates"].sel(case=gts).values)]
        n_ok = int(np.nansum(rec))
        rows.append(("true reaction model recovered, every ground truth and seed",
                     f"{n_ok}/{rec.size}", "met" if n_ok == rec.size else "missed"))
    if "hand-hybrid" in methods:
        H = ds.sel({"method": "hand-hybrid"})
        for c in cases:
            if c in ("scar", "luo-rudy"):
                continue
            lm, ls = _mean_spread(L["test_rmse_clean"].sel(case=c).values)
            hm, hs = _mean_spread(H["test_rmse_clean"].sel(case=c).values)
            if c == "aliev-panfilov":
                spread = max((x for x in (ls, hs) if math.isfinite(x)), default=math.nan)
                ok = abs(lm - hm) <= spread if math.isfinite(spread) else False
                rows.append((f"{c}: LEADS test error within the seed spread of the hand hybrid",
                             f"{lm:.3g} vs {hm:.3g} mV (spread {spread:.2g})",
                             _spread_verdict(ok, L, H, c)))
            else:
                ok = lm <= 0.5 * hm
                rows.append((f"{c}: LEADS test error <= 1/2 the hand hybrid's (clean truth)",
                             f"{lm:.3g} vs {hm:.3g} mV ({lm / hm:.2f}x)" if hm > 0 else "n/a",
                             "met" if ok else "missed"))
    st = L["stable"].values[ran]
    rows.append(("every model LEADS returns passes the stability audit",
                 f"{int(np.nansum(st))}/{st.size}",
                 "met" if np.all(st == 1) else "missed"))
    ratio = L["extrap_ratio"].values[ran]
    fin = ratio[np.isfinite(ratio)]
    rows.append(("LEADS error on unseen sites x 3x horizon <= 2x its validation error",
                 f"max ratio {fin.max():.2f}, {int(np.sum(fin <= 2))}/{ratio.size} runs"
                 if fin.size else "n/a",
                 "met" if fin.size == ratio.size and np.all(fin <= 2) else "missed"))
    for c in cases:
        if c not in (*MISSPECIFIED, "luo-rudy"):
            continue
        hyb = _mean_spread(L["best_hybrid_test"].sel(case=c).values)[0]
        phys = _mean_spread(L["best_physics_test"].sel(case=c).values)[0]
        neu = (_mean_spread(ds["test_rmse_clean"].sel({"case": c, "method": "neural"}).values)[0]
               if "neural" in methods else math.nan)
        ok = math.isfinite(hyb) and hyb < phys and hyb < neu
        rows.append((f"{c}: best LEADS hybrid beats best physics-only and pure neural",
                     f"hybrid {hyb:.3g}, physics {phys:.3g}, neural {neu:.3g} mV",
                     "n/a (not run)" if math.isnan(neu) or math.isnan(hyb) and math.isnan(phys)
                     else "met" if ok else "missed"))
    six = [c for c in cases if c in (*GROUND_TRUTHS, *MISSPECIFIED, "scar")]
    for a in ABLATIONS:
        if a not in methods:
            continue
        worse, compared = [], []
        A = ds.sel({"method": a})
        for c in six:
            lm, ls = _mean_spread(L["test_rmse_clean"].sel(case=c).values)
            am, as_ = _mean_spread(A["test_rmse_clean"].sel(case=c).values)
            if math.isnan(am) or math.isnan(lm):
                continue  # not run
            compared.append(c)
            spread = max(x for x in (ls, as_, 0.0) if math.isfinite(x))
            if am - lm > spread:  # an ablation that diverged (inf) is worse
                worse.append(c)
        rows.append((f"ablation {a} worse than LEADS by > seed spread on >= 2 of "
                     f"{len(six)} datasets", f"{len(worse)}: {', '.join(worse) or '-'}",
                     _spread_verdict(len(worse) >= 2, L, A, *compared)))
    return rows


def _fmt(m, s, nd=3):
    if m == math.inf:
        return "diverged"
    if not math.isfinite(m):
        return "n/a"
    return f"{m:.{nd}g}" + (f" ± {s:.2g}" if math.isfinite(s) and s > 0 else "")


def markdown(ds: xr.Dataset, elapsed: float) -> str:
    lines = [f"# LEADS synthetic benchmark (`{ds.attrs['preset']}`)", "",
             ds.attrs["description"] + ".", "",
             f"Policy {ds.attrs['policy']}; {ds.attrs['n_devices']} {ds.attrs['device']} "
             f"device(s), {ds.attrs['cpu_count']} CPU cores "
             f"({ds.attrs.get('cpu', 'CPU not recorded')}), jax {ds.attrs['jax_version']}, "
             f"{ds.attrs['date']}. Command: `{ds.attrs['command']}`. Wall time "
             f"**{elapsed / 60:.1f} min** (summed over the processes when merged); "
             "summed over the runs "
             f"{float(np.nansum(ds['wall_s'])) / 60:.1f} min (compile "
             f"{float(np.nansum(ds['compile_s'])) / 60:.1f} min, train "
             f"{float(np.nansum(ds['train_s'])) / 60:.1f} min, the rest "
             "observation rollouts, scoring and data generation).", "",
             "Cases:", ""]
    if ds.attrs.get("n_finished", 0) < ds.attrs.get("n_runs", 0):
        lines[-2:-2] = [f"**Partial: {ds.attrs['n_finished']} of {ds.attrs['n_runs']} "
                        "(case, method, seed) runs finished** (`--report-only` on an "
                        "interrupted benchmark); the others are n/a below.", ""]
    for c, d in json.loads(ds.attrs["case_descriptions"]).items():
        lines.append(f"- `{c}` ({make_kind(c)}): {d}")
    lines += ["", "Mean over seeds ± spread (max - min). Test errors are on the test "
              "pacing sites over the whole record (3x the training horizon), against the "
              "noise-free truth. `recovered`: share of seeds whose selected reaction model "
              "is the truth's (n/a: misspecified / ionic; `nearest` names the selection).",
              ""]
    for c in ds.case.values:
        sub = ds.sel(case=c)
        lines += [f"## {c} ({make_kind(str(c))})", "",
                  "| method | recovered | nearest | distance | param err | test RMSE (mV) "
                  "| late RMSE (mV) | test/val | act. err (ms) | APD err (ms) | stable "
                  "| cands | compile (s) | train (s) | wall (s) |",
                  "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for m in ds.method.values:
            r = sub.sel({"method": m})

            def ms(name, nd=3, r=r):
                return _fmt(*_mean_spread(r[name].values), nd=nd)

            near = ", ".join(sorted(set(str(x) for x in r["nearest"].values) - {""}))
            lines.append(f"| {m} | {ms('recovered', 2)} | {near} | "
                         f"{ms('structure_distance', 2)} | {ms('param_error', 2)} | "
                         f"{ms('test_rmse_clean')} | {ms('late_rmse_clean')} | "
                         f"{ms('extrap_ratio', 2)} | {ms('activation_error', 2)} | "
                         f"{ms('apd_error', 2)} | {ms('stable', 2)} | {ms('n_candidates', 2)} | "
                         f"{ms('compile_s', 2)} | {ms('train_s', 2)} | {ms('wall_s', 2)} |")
        if "leads" in ds.method.values:
            L = sub.sel({"method": "leads"})
            lines += ["", "LEADS, within its runs: best hybrid test RMSE "
                      f"{_fmt(*_mean_spread(L['best_hybrid_test'].values))} mV, best "
                      f"physics-only {_fmt(*_mean_spread(L['best_physics_test'].values))} mV. "
                      "Selected (seed "
                      f"{int(ds.seed.values[0])}): `{str(L['formula'].values[0])[:300]}`"]
        lines.append("")
    rows = targets(ds)
    if rows:
        lines += ["## Targets (reproduction issue)", "", "| target | measured | verdict |",
                  "|---|---|---|"]
        lines += [f"| {a} | {b} | **{c}** |" for a, b, c in rows]
        lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# figures
# ---------------------------------------------------------------------------------------
def _save(fig, path: pathlib.Path) -> pathlib.Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _plain_log_labels(ax) -> None:
    """Label a log y axis in plain numbers (0.9, 12.5, 30), at 1-2-5 ticks when it spans
    more than a decade, at every tick when less."""
    from matplotlib import ticker

    def label(v, _pos):
        if not (v > 0 and math.isfinite(v)):
            return ""
        lo, hi = ax.get_ylim()
        lead = round(v / 10 ** math.floor(math.log10(v)), 6)
        return f"{v:g}" if hi / max(lo, 1e-300) <= 10 or lead in (1, 2, 5) else ""

    ax.yaxis.set_major_formatter(ticker.FuncFormatter(label))
    ax.yaxis.set_minor_formatter(ticker.FuncFormatter(label))


def figures(ds: xr.Dataset, figs: dict, out: pathlib.Path, stem: str) -> list[pathlib.Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    cases = list(figs["cases"])
    if cases:
        fig, axes = plt.subplots(len(cases), 2, figsize=(9, 2.6 * len(cases)), squeeze=False)
        for i, c in enumerate(cases):
            f = figs["cases"][c]
            ts, geo = f["ts"], f["geometry"]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                at = _activation(f["truth"], ts)
                am = (_activation(f["pred"][0], ts) if f["pred"] is not None
                      else np.full_like(at, np.nan))
            v = np.asarray(geo.vertices, float)
            if geo.n_nodes > 1 and geo.kind != "cable":
                lo = np.nanmin(at) if np.isfinite(at).any() else 0.0
                hi = np.nanmax(at) if np.isfinite(at).any() else 1.0
                for ax, a, title in ((axes[i, 0], at, "truth"), (axes[i, 1], am, "LEADS")):
                    sc = ax.scatter(v[:, 0], v[:, 2], c=a, s=6, cmap="viridis", vmin=lo,
                                    vmax=hi)
                    ax.set_title(f"{c}: activation time, {title}", fontsize=9)
                    ax.set_xlabel("x (cm)")
                    ax.set_ylabel("z (cm)")
                fig.colorbar(sc, ax=axes[i, 1], label="ms")
            elif geo.n_nodes > 1:
                axes[i, 0].plot(v[:, 0], at, "k-", label="truth")
                axes[i, 0].plot(v[:, 0], am, "C1--", label="LEADS")
                axes[i, 0].set_xlabel("x (cm)")
                axes[i, 0].set_ylabel("activation (ms)")
                axes[i, 0].legend(fontsize=8)
                axes[i, 0].set_title(f"{c}: activation time (test site)", fontsize=9)
                axes[i, 1].plot(ts, f["truth"][:, geo.n_nodes // 2], "k-", lw=1, label="truth")
                if f["pred"] is not None:
                    axes[i, 1].plot(ts, f["pred"][0][:, geo.n_nodes // 2], "C1--", lw=1,
                                    label="LEADS")
                axes[i, 1].set_title(f"{c}: mid-node trace (test site)", fontsize=9)
                axes[i, 1].set_xlabel("t (ms)")
                axes[i, 1].set_ylabel("mV")
            else:
                axes[i, 0].plot(ts, f["truth"][:, 0], "k-", lw=1, label="truth")
                if f["pred"] is not None:
                    axes[i, 0].plot(ts, f["pred"][0][:, 0], "C1--", lw=1, label="LEADS")
                axes[i, 0].set_title(f"{c}: single cell (test window)", fontsize=9)
                axes[i, 0].legend(fontsize=8)
                axes[i, 1].axis("off")
        paths.append(_save(fig, out / f"{stem}_activation.png"))

    fig, axes = plt.subplots(1, len(ds.case), figsize=(3.2 * len(ds.case), 3.4), squeeze=False)
    for ax, c in zip(axes[0], ds.case.values, strict=True):
        x = ds["test_rmse_clean"].sel(case=c).values
        mean = np.array([_mean_spread(r)[0] for r in x])
        lo = np.array([np.nanmin(r) if np.isfinite(r).any() else np.nan for r in x])
        hi = np.array([np.nanmax(r) if np.isfinite(r).any() else np.nan for r in x])
        pos = np.arange(len(ds.method))
        ax.bar(pos, mean, color=["C1" if m == "leads" else "C0" for m in ds.method.values])
        ax.errorbar(pos, mean, yerr=[mean - lo, hi - mean], fmt="none", ecolor="k", lw=1)
        ax.set_xticks(pos, ds.method.values, rotation=70, fontsize=7)
        if np.any(np.isfinite(mean) & (mean > 0)):  # nothing finished: no log axis
            ax.set_yscale("log")
            _plain_log_labels(ax)
        for i, r in enumerate(x):  # a bar of inf draws nothing: say why it is empty
            ran = r[~np.isnan(r)]
            if ran.size and not np.isfinite(ran).all():
                label = "diverged" if not np.isfinite(ran).any() else \
                    f"{int(np.sum(~np.isfinite(ran)))}/{ran.size} diverged"
                ax.annotate(label, (pos[i], 0.5), xycoords=("data", "axes fraction"),
                            rotation=90, ha="center", va="center", fontsize=7, color="C3")
        ax.set_xlim(-0.6, len(pos) - 0.4)
        ax.set_title(str(c), fontsize=9)
    axes[0, 0].set_ylabel("test RMSE vs clean truth (mV)")
    paths.append(_save(fig, out / f"{stem}_test_error.png"))

    fig, axes = plt.subplots(1, len(ds.case), figsize=(3.2 * len(ds.case), 3.2), squeeze=False)
    for ax, c in zip(axes[0], ds.case.values, strict=True):
        drawn = False
        for m in ds.method.values:
            tr = ds["trajectory"].sel({"case": c, "method": m}).values
            tr = np.where(np.isfinite(tr), tr, np.nan)
            if not np.isfinite(tr).any():  # no stable candidate in any seed
                ax.plot([], [], lw=1, label=f"{m} (none stable)")
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                y = np.nanmean(tr, axis=0)
                ax.plot(ds.candidate.values, y, label=str(m), lw=2 if m == "leads" else 1,
                        marker="o" if np.isfinite(y).sum() == 1 else None)  # one fit: a dot
            drawn = True
        if drawn:
            ax.set_yscale("log")
            _plain_log_labels(ax)
        ax.set_xlabel("candidates fitted")
        ax.set_title(str(c), fontsize=9)
    axes[0, 0].set_ylabel("best val. RMSE, stable (mV)")
    for ax in axes[0]:
        ax.legend(fontsize=6)
    paths.append(_save(fig, out / f"{stem}_trajectory.png"))
    return paths


# ---------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="quick")
    parser.add_argument("--smoke", action="store_true",
                        help="the full configuration, one case/method, one round, 3 steps")
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--seed", type=int, default=None, help="one seed (same as --seeds S)")
    parser.add_argument("--cases", nargs="+", choices=CASES, default=None)
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=None)
    parser.add_argument("--policy", choices=("offline", "llm"), default="offline")
    parser.add_argument("--llm-model", default=None, help="litellm model string (--policy llm)")
    parser.add_argument("--api-base", default=None, help="OpenAI-compatible base URL")
    parser.add_argument("--runs", default=None,
                        help="keep the run folders (and the benchmark checkpoint) here")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted benchmark in --runs")
    parser.add_argument("--out", default=str(RESULTS), help="results folder")
    parser.add_argument("--report-only", action="store_true",
                        help="build the tables from the finished runs in --runs; run nothing")
    parser.add_argument("--compile-cache", metavar="DIR", default=None,
                        help="JAX's persistent compilation cache (and the fitting engine's "
                        "exported programs) in DIR, so a resumed run does not compile again "
                        "(default: $LEADS_JAX_CACHE_DIR, else off)")
    parser.add_argument("--merge", nargs="+", metavar="NC", default=None,
                        help="merge result files of one preset over disjoint cases (runs in "
                        "parallel processes) into one table; runs nothing")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if (args.resume or args.report_only) and not args.runs:
        parser.error("--resume / --report-only need --runs DIR (the benchmark's folder)")
    if args.policy == "llm" and not args.llm_model:
        parser.error("--policy llm needs --llm-model (a litellm model string)")
    if args.merge:
        ds = merge([xr.load_dataset(p, engine="h5netcdf") for p in args.merge])
        out = pathlib.Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        stem = f"leads_synthetic_{ds.attrs['preset']}"
        ds.to_netcdf(out / f"{stem}.nc", engine="h5netcdf")
        md = markdown(ds, float(ds.attrs["total_seconds"]))
        paths = figures(ds, {"cases": {}}, out, stem)
        md += "\nFigures: " + ", ".join(f"`{p.name}`" for p in paths) + "\n"
        (out / f"{stem}.md").write_text(md)
        print(md)
        return 0
    cache = enable_compilation_cache(args.compile_cache)
    preset = smoke_preset() if args.smoke else PRESETS[args.preset]
    seeds = args.seeds if args.seeds is not None else ([args.seed] if args.seed is not None
                                                       else None)
    preset = dataclasses.replace(
        preset, seeds=tuple(seeds) if seeds else preset.seeds,
        cases=tuple(args.cases) if args.cases else preset.cases,
        methods=tuple(args.methods) if args.methods else preset.methods)
    policy, _ = _policy(args.policy, args.llm_model, args.api_base)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(preset.describe())
    print(f"devices: {jax.device_count()} x {jax.devices()[0].platform}; compilation cache "
          f"{cache or 'off'}")
    t0 = time.perf_counter()
    ds, figs = run_preset(preset, runs=None if args.runs is None else pathlib.Path(args.runs),
                          policy=policy, progress=not args.no_progress, verbose=True,
                          resume=args.resume, report_only=args.report_only)
    elapsed = time.perf_counter() - t0
    stem = f"leads_synthetic_{preset.name}"
    ds.to_netcdf(out / f"{stem}.nc", engine="h5netcdf")  # first: nothing lost to a table bug
    md = markdown(ds, elapsed)
    paths = figures(ds, figs, out, stem)
    md += "\nFigures: " + ", ".join(f"`{p.name}`" for p in paths) + "\n"
    (out / f"{stem}.md").write_text(md)
    print(md)
    print(f"wrote {out / (stem + '.nc')}, {out / (stem + '.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
