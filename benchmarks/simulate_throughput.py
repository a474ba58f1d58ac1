"""Simulation throughput on the heart mesh: leads-jax vs plain NumPy, and the catalog's
stable steps.

Problem: Aliev-Panfilov (catalog defaults, conductivity from
``leads_jax.datasets.default_conductivity``) on the generated ventricle mesh
(``Geometry.ventricle()``, ~1,830 nodes, cotangent Laplacian), paced at the apex,
2,000 explicit steps of ``dt`` ms with 101 saved frames.

Timed (compile time apart, best of ``--repeats``):

1. ``numpy-euler``: a plain NumPy forward-Euler loop (Laplacian by ``np.bincount``
   over the edge list, float64), one step at a time.
2. ``jax-euler``: ``leads_jax.simulate.simulate(..., solver="euler")`` jitted, the same
   scheme and step (float32) -- the like-for-like ratio.
3. ``jax-rk4``: the default solver (4 right-hand-side evaluations per step).
4. ``jax-euler-batch``: ``simulate`` vmapped over ``--batch`` parameter sets (per-member time).

Also printed: each catalog model's stable step (``stable_dt``) and the scheme it refers
to, read from the reaction catalog. Results go to
``benchmarks/results/simulate_throughput_<backend>.{nc,md}``.

Run: ``python benchmarks/simulate_throughput.py [--steps 2000] [--dt 0.05]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import equinox as eqx
import jax
import numpy as np
import xarray as xr

from leads_jax import enable_compilation_cache
from leads_jax.batching import stack_models
from leads_jax.compile import compile_structure, replace_parameters
from leads_jax.datasets import default_conductivity
from leads_jax.geometry import Geometry
from leads_jax.physics.reactions import REACTIONS
from leads_jax.simulate import simulate
from leads_jax.stimulus import Stimulus
from leads_jax.structure import Structure

HERE = os.path.dirname(os.path.abspath(__file__))


def numpy_aliev_panfilov(
    geo: Geometry,
    params: dict,
    D: float,
    stim_w: np.ndarray,
    amp: float,
    dur: float,
    dt: float,
    n_steps: int,
    save_every: int,
):
    """Plain NumPy forward Euler of Aliev-Panfilov + cotangent diffusion + stimulus."""
    e = np.asarray(geo.edges)
    i, j = e[:, 0], e[:, 1]
    w = np.asarray(geo.edge_weights, dtype=np.float64)
    m = np.asarray(geo.mass, dtype=np.float64)
    n = geo.n_nodes
    a, k, eps0, mu1, mu2, T = (params[x] for x in ("a", "k", "eps0", "mu1", "mu2", "time_scale"))
    u = np.zeros(n)
    v = np.zeros(n)
    out = [u.copy()]
    for step in range(n_steps):
        t = step * dt
        flux = w * (u[j] - u[i])
        lap = (np.bincount(i, flux, minlength=n) - np.bincount(j, flux, minlength=n)) / m
        du = (-k * u * (u - a) * (u - 1.0) - u * v) / T
        eps = eps0 + mu1 * v / (mu2 + u)
        dv = eps * (-v - k * u * (u - a - 1.0)) / T
        stim = amp * stim_w if t < dur else 0.0
        u = u + dt * (du + D * lap + stim)
        v = v + dt * dv
        if (step + 1) % save_every == 0:
            out.append(u.copy())
    return np.stack(out)


def _best(fn, repeats):
    times = []
    out = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--dt", type=float, default=0.05)
    p.add_argument("--frames", type=int, default=101)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--n-nodes", type=int, default=1862)
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    p.add_argument("--compile-cache", metavar="DIR", default=None,
                   help="JAX persistent compilation cache (default: $LEADS_JAX_CACHE_DIR, "
                        "else off)")
    args = p.parse_args(argv)
    enable_compilation_cache(args.compile_cache)
    if args.steps % (args.frames - 1):
        raise SystemExit("--steps must be a multiple of --frames - 1")
    backend = jax.default_backend()
    geo = Geometry.ventricle(args.n_nodes)
    D = default_conductivity(geo)
    stim = Stimulus.single(geo, "apex")
    t_end = args.steps * args.dt
    ts = np.linspace(0.0, t_end, args.frames)
    model = replace_parameters(
        compile_structure(Structure.make("aliev-panfilov"), geo, key=jax.random.PRNGKey(0)), D=D
    )
    params = {
        n: float(np.asarray(v)[0])
        for n, v in zip(model.params.names, np.asarray(model.params.values()), strict=True)
    }

    def jax_runner(solver):
        f = eqx.filter_jit(
            lambda m: (
                simulate(m, geo, stim, ts, solver=solver, dt=args.dt, check_bounds=False).observed
            )
        )
        t0 = time.perf_counter()
        jax.block_until_ready(f(model))
        compile_s = time.perf_counter() - t0
        sec, out = _best(lambda: jax.block_until_ready(f(model)), args.repeats)
        return compile_s, sec, np.asarray(out)

    results = {
        "backend": backend,
        "device": str(jax.devices()[0]),
        "platform": platform.platform(),
        "n_nodes": geo.n_nodes,
        "n_edges": geo.n_edges,
        "steps": args.steps,
        "dt_ms": args.dt,
        "frames": args.frames,
        "conductivity_cm2_per_ms": D,
    }
    comp_e, sec_e, obs_e = jax_runner("euler")
    comp_r, sec_r, _ = jax_runner("rk4")
    save_every = args.steps // (args.frames - 1)
    sec_np, u_np = _best(
        lambda: numpy_aliev_panfilov(
            geo,
            params,
            D,
            np.asarray(stim.sites, dtype=np.float64),
            float(stim.amplitude),
            float(stim.duration),
            args.dt,
            args.steps,
            save_every,
        ),
        max(1, args.repeats - 1),
    )
    max_diff_mV = float(np.nanmax(np.abs(obs_e - (-80.0 + 100.0 * u_np))))

    # batch of parameter sets (vmap), per-member cost
    ks = np.linspace(7.0, 9.0, args.batch)
    members = [replace_parameters(model, k=float(kk)) for kk in ks]
    stacked, _ = stack_models(members, size=args.batch)
    fb = eqx.filter_jit(
        eqx.filter_vmap(
            lambda m: (
                simulate(m, geo, stim, ts, solver="euler", dt=args.dt, check_bounds=False).observed
            )
        )
    )
    t0 = time.perf_counter()
    jax.block_until_ready(fb(stacked))
    comp_b = time.perf_counter() - t0
    sec_b, _ = _best(lambda: jax.block_until_ready(fb(stacked)), args.repeats)

    results.update(
        {
            "numpy_euler_s": sec_np,
            "jax_euler_s": sec_e,
            "jax_euler_compile_s": comp_e,
            "jax_rk4_s": sec_r,
            "jax_rk4_compile_s": comp_r,
            "jax_euler_batch": args.batch,
            "jax_euler_batch_s": sec_b,
            "jax_euler_batch_per_member_s": sec_b / args.batch,
            "jax_euler_batch_compile_s": comp_b,
            "speedup_jax_euler_vs_numpy": sec_np / sec_e,
            "speedup_jax_batch_per_member_vs_numpy": sec_np / (sec_b / args.batch),
            "max_abs_diff_jax_vs_numpy_mV": max_diff_mV,
            "stable_dt": {
                name: {
                    "stable_dt_ms": float(cls.stable_dt),
                    "scheme": getattr(cls, "stable_dt_scheme", "rk4"),
                }
                for name, cls in REACTIONS.items()
            },
        }
    )

    lines = [
        f"# simulate throughput ({backend}: {results['device']})",
        "",
        f"Aliev-Panfilov on the ventricle mesh ({geo.n_nodes} nodes, {geo.n_edges} edges), "
        f"{args.steps} steps of {args.dt} ms ({t_end:g} ms), {args.frames} saved frames, "
        f"D = {D:g} cm^2/ms, apex pacing. Best of {args.repeats}; compile time apart.",
        "",
        "| implementation | seconds | vs NumPy |",
        "|---|---|---|",
        f"| NumPy forward Euler (float64, bincount Laplacian) | {sec_np:.4f} | 1.0x |",
        f"| leads-jax simulate, euler (float32) | {sec_e:.4f} | {sec_np / sec_e:.1f}x |",
        f"| leads-jax simulate, rk4 (4 evaluations/step) | {sec_r:.4f} | {sec_np / sec_r:.1f}x |",
        f"| leads-jax simulate, euler, vmap batch {args.batch}: per member | "
        f"{sec_b / args.batch:.4f}"
        f" | {sec_np / (sec_b / args.batch):.1f}x |",
        "",
        f"Compile: euler {comp_e:.2f} s, rk4 {comp_r:.2f} s, batch {comp_b:.2f} s. "
        f"Max |JAX - NumPy| over the record: {max_diff_mV:.3g} mV (float32 vs float64).",
        "",
        "## Stable step of each catalog model (read from the catalog)",
        "",
        "| model | stable_dt (ms) | scheme |",
        "|---|---|---|",
    ]
    for name, d in results["stable_dt"].items():
        lines.append(f"| {name} | {d['stable_dt_ms']:g} | {d['scheme']} |")
    text = "\n".join(lines) + "\n"
    print(text)
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"simulate_throughput_{backend}")
    impl = ["numpy_euler", "jax_euler", "jax_rk4", f"jax_euler_vmap{args.batch}_per_member"]
    secs = [sec_np, sec_e, sec_r, sec_b / args.batch]
    models = list(results["stable_dt"])
    ds = xr.Dataset(
        {
            "seconds": ("implementation", np.asarray(secs), {"units": "s"}),
            "speedup_vs_numpy": ("implementation", sec_np / np.asarray(secs), {"units": "1"}),
            "compile_seconds": (
                "implementation", np.asarray([np.nan, comp_e, comp_r, comp_b]), {"units": "s"}
            ),
            "stable_dt": (
                "model", np.asarray([results["stable_dt"][m]["stable_dt_ms"] for m in models]),
                {"units": "ms", "scheme": "rk4, single cell at default parameters"},
            ),
        },
        coords={"implementation": impl, "model": models},
        attrs={k: (json.dumps(v) if isinstance(v, dict) else v)
               for k, v in results.items() if not isinstance(v, dict) or k != "stable_dt"},
    )
    tmp = stem + ".nc.tmp"
    ds.to_netcdf(tmp, engine="h5netcdf")
    os.replace(tmp, stem + ".nc")
    tmp = stem + ".md.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, stem + ".md")
    print(f"wrote {stem}.nc and {stem}.md")
    return results


if __name__ == "__main__":
    main()
