"""Fitting throughput: seconds per candidate per training step.

Named problem ("cable64-ap-mlp"): a 64-node cable (dx = 0.025 cm, no-flux ends),
Aliev-Panfilov reaction + an additive MLP closure 2-16-16-1 on the u equation
(inputs: the local state (u, v)), Laplacian diffusion; 2,000 fixed RK4 steps of 0.05
Aliev-Panfilov time units (0.645 ms at 12.9 ms per unit, so 1,290 ms), 101 saved
points; conductivity D = 2e-4 cm^2/ms (stable for RK4 at that step); one paced
sample (left end). A training step = forward solve + reverse-mode gradient of the
trajectory MSE w.r.t. (a, k, eps0, D, MLP weights and scale) + one Adam update.

Measured, in one run:

(a) a sequential Python loop over candidates calling the engine's jitted
    single-candidate step (``batched=False``);
(b) the batched engine (vmap over candidates, per-candidate Adam and clipping) at 8,
    32 and 128 candidates;
(c) the same hybrid as published hybrid-EP code writes it: PyTorch + torchdiffeq
    ``odeint(method="rk4", step_size=...)``, one candidate at a time (skipped, with a
    message, when torch/torchdiffeq are absent: ``pip install -e .[bench]``).

Compile time is reported apart. Results: benchmarks/results/fit_throughput_<device>.{nc,md}.

Usage: python benchmarks/fit_throughput.py [--sizes 8 32 128] [--repeats 2] [--torch-steps 2]
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import pathlib
import platform
import sys
import time

import numpy as np

HERE = pathlib.Path(__file__).parent
RESULTS = HERE / "results"

N_NODES = 64
DX = 0.025
TIME_SCALE = 12.9  # ms per Aliev-Panfilov time unit
DT_AU = 0.05
N_STEPS = 2000
N_SAVE = 101
DT = DT_AU * TIME_SCALE  # ms
T_END = N_STEPS * DT
D_TRUE = 2e-4
HIDDEN = (16, 16)
PROBLEM = (
    f"cable64-ap-mlp: {N_NODES}-node cable (dx {DX} cm), Aliev-Panfilov + additive MLP closure "
    f"2-{HIDDEN[0]}-{HIDDEN[1]}-1 on u, Laplacian diffusion (D {D_TRUE} cm^2/ms); {N_STEPS} RK4 "
    f"steps of {DT_AU} time units ({DT:.3f} ms), {N_SAVE} saved points; 1 paced sample; "
    "step = forward + reverse-mode gradient + Adam update"
)


def _structure(i: int, n: int):
    from leads_jax.structure import ClosureTerm, Structure

    rng = np.random.default_rng(i)
    f = rng.uniform(0.85, 1.15, 4)
    values = {"a": 0.15 * f[0], "k": 8.0 * f[1], "eps0": 0.01 * f[2], "D": D_TRUE * f[3]}
    return Structure.make("aliev-panfilov", free=("a", "k", "eps0", "D"), values=values,
                          closures=(ClosureTerm("u", "additive", hidden=HIDDEN),))


def _problem():
    import jax
    import jax.numpy as jnp

    from leads_jax.compile import compile_structure, replace_parameters
    from leads_jax.fit import SplitData
    from leads_jax.fit._fit import SimulateRollout
    from leads_jax.geometry import Geometry
    from leads_jax.simulate import simulate
    from leads_jax.stimulus import Stimulus
    from leads_jax.structure import Structure

    geo = Geometry.cable(N_NODES, dx=DX)
    ts = jnp.linspace(0.0, T_END, N_SAVE)
    stim = Stimulus.single(geo, "left")  # 0.5 per ms for 2 ms on nodes 0-2
    truth = compile_structure(Structure.make("aliev-panfilov"), geo, key=jax.random.key(0))
    truth = replace_parameters(truth, eps0=0.01, D=D_TRUE)
    traj = simulate(truth, geo, stim, ts, dt=DT)
    assert not bool(traj.diverged), traj.reason_text()
    stacked_stim = jax.tree.map(lambda x: x[None], stim)
    data = SplitData(stacked_stim, traj.observed[None], ts)
    rollout = SimulateRollout("rk4", DT, N_STEPS + 2, True)
    return geo, data, rollout, compile_structure


def bench_jax(sizes, repeats):
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    from leads_jax.fit import FitConfig, MemberStatus, stack_members
    from leads_jax.fit._engine import _chunk_fn, _engine_optimizer, _init_fn, _loss_args, _tx_spec

    geo, data, rollout, compile_structure = _problem()
    cfg = FitConfig(learning_rate=1e-2, clip_norm=1.0, aphynity_weight=1e-3)
    tx = _engine_optimizer(cfg)  # the learning rate lives in the optimizer state
    lr = jnp.asarray(cfg.learning_rate, jnp.float32)
    la = _loss_args(cfg)
    one = jnp.asarray(1, jnp.int32)
    n_max = max(sizes)
    models = [compile_structure(_structure(i, n_max), geo, key=jax.random.key(i))
              for i in range(n_max)]
    spec = models[0].trainable_filter()
    rows = {}

    # (a) sequential loop, jitted single-candidate step
    n_seq = min(8, n_max)
    step1 = _chunk_fn(_tx_spec(cfg), rollout, 1, False)
    states = []
    for m in models[:n_seq]:
        p, r = eqx.partition(m, spec)
        states.append([p, _init_fn(tx, False)(p, lr),
                       jax.tree.map(lambda x: x[0], MemberStatus.init(1)), r])
    t0 = time.perf_counter()
    out = step1(*states[0][:3], states[0][3], geo, data, one, la)
    jax.block_until_ready(out)
    compile_a = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for s in states:
            p, o, st, loss = step1(s[0], s[1], s[2], s[3], geo, data, one, la)
            s[0], s[1], s[2] = p, o, st
        jax.block_until_ready(s[0])
        times.append((time.perf_counter() - t0) / n_seq)
    rows["a_sequential"] = dict(n=n_seq, per_cand=min(times), compile=compile_a)
    print(f"(a) sequential jitted single-candidate step: {min(times):.3f} s/candidate/step "
          f"(compile {compile_a:.1f} s, {n_seq} candidates)", flush=True)

    # (b) batched engine
    stepb = _chunk_fn(_tx_spec(cfg), rollout, 1, True)
    for n in sizes:
        stacked = stack_members(models[:n])
        p, r = eqx.partition(stacked, spec)
        o = _init_fn(tx, True)(p, lr)
        st = MemberStatus.init(n)
        t0 = time.perf_counter()
        out = stepb(p, o, st, r, geo, data, one, la)
        jax.block_until_ready(out)
        compile_b = time.perf_counter() - t0
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            p, o, st, loss = stepb(p, o, st, r, geo, data, one, la)
            jax.block_until_ready(p)
            times.append((time.perf_counter() - t0) / n)
        alive = int(np.sum(np.asarray(st.alive)))
        rows[f"b_batched_{n}"] = dict(n=n, per_cand=min(times), compile=compile_b)
        print(f"(b) batched engine, {n:4d} candidates: {min(times):.4f} s/candidate/step "
              f"(compile {compile_b:.1f} s; {alive}/{n} alive)", flush=True)
    return rows


def bench_torch(n_steps):
    try:
        import torch
        from torchdiffeq import odeint
    except ImportError:
        print("(c) skipped: torch/torchdiffeq are not installed (pip install -e '.[bench]')")
        return {}
    # 64-node tensors: one thread is fastest (more threads only add synchronisation).
    torch.set_num_threads(1)
    torch.manual_seed(0)
    from leads_jax.geometry import Geometry

    geo = Geometry.cable(N_NODES, dx=DX)
    lap = torch.tensor(np.asarray(geo.dense_laplacian()), dtype=torch.float32)

    class HybridAP(torch.nn.Module):
        """Aliev-Panfilov + Laplacian + bounded MLP closure, as hybrid-EP code writes it."""

        def __init__(self, a, k, eps0, d):
            super().__init__()
            self.raw = torch.nn.Parameter(torch.tensor([a, k, eps0, d], dtype=torch.float32).log())
            self.mlp = torch.nn.Sequential(
                torch.nn.Linear(2, HIDDEN[0]), torch.nn.Tanh(),
                torch.nn.Linear(HIDDEN[0], HIDDEN[1]), torch.nn.Tanh(),
                torch.nn.Linear(HIDDEN[1], 1),
            )
            torch.nn.init.zeros_(self.mlp[-1].weight)
            torch.nn.init.zeros_(self.mlp[-1].bias)
            self.raw_scale = torch.nn.Parameter(torch.zeros(()))
            stim = torch.zeros(N_NODES)
            stim[:3] = 0.5
            self.register_buffer("stim", stim)

        def forward(self, t, y):
            a, k, eps0, d = self.raw.exp()
            u, v = y[0], y[1]
            du = -k * u * (u - a) * (u - 1.0) - u * v
            eps = eps0 + 0.2 * v / (0.3 + u)
            dv = eps * (-v - k * u * (u - a - 1.0))
            x = torch.stack([(u - 0.5) / 1.0, (v - 2.25) / 2.75], dim=-1)
            closure = 0.1 * torch.sigmoid(self.raw_scale) * torch.tanh(self.mlp(x))[..., 0]
            du = du / TIME_SCALE + d * (lap @ u) + closure + self.stim * (t < 2.0)
            return torch.stack([du, dv / TIME_SCALE])

    ts = torch.linspace(0.0, T_END, N_SAVE)
    y0 = torch.zeros(2, N_NODES)
    with torch.no_grad():
        truth = HybridAP(0.15, 8.0, 0.01, D_TRUE)
        target = odeint(truth, y0, ts, method="rk4", options={"step_size": DT})[:, 0] * 100 - 80
    model = HybridAP(0.15 * 1.1, 8.0 * 0.9, 0.011, D_TRUE * 0.9)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    times = []
    for i in range(n_steps + 1):
        t0 = time.perf_counter()
        opt.zero_grad()
        pred = odeint(model, y0, ts, method="rk4", options={"step_size": DT})[:, 0] * 100 - 80
        loss = (((pred - target) / 100.0) ** 2).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if i > 0:  # the first step warms up allocators
            times.append(time.perf_counter() - t0)
        print(f"    torch step {i}: {time.perf_counter() - t0:.2f} s", flush=True)
    per = min(times)
    print(f"(c) PyTorch + torchdiffeq (rk4), one candidate at a time: {per:.3f} s/candidate/step "
          f"(torch {torch.__version__})", flush=True)
    return {"c_torch": dict(n=1, per_cand=per, compile=0.0)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[8, 32, 128])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--torch-steps", type=int, default=2)
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--compile-cache", metavar="DIR", default=None,
                        help="JAX persistent compilation cache (default: $LEADS_JAX_CACHE_DIR, "
                             "else off); compile times below then measure cache reads")
    args = parser.parse_args(argv)

    import jax

    from leads_jax import enable_compilation_cache

    enable_compilation_cache(args.compile_cache)

    device = jax.devices()[0].platform
    load0 = os.getloadavg()[0]
    print(PROBLEM)
    print(f"device: {device} ({jax.devices()[0].device_kind}), {os.cpu_count()} CPU cores, "
          f"jax {jax.__version__}", flush=True)
    rows = bench_torch(args.torch_steps)
    rows.update(bench_jax(args.sizes, args.repeats))
    write(rows, device, pathlib.Path(args.out), (load0, os.getloadavg()[0]))
    return 0


def write(rows, device, out: pathlib.Path, load=(math.nan, math.nan)):
    import jax
    import xarray as xr

    from leads_jax.fit._io import atomic_write_bytes

    names = list(rows)
    torch_per = rows.get("c_torch", {}).get("per_cand", math.nan)
    seq_per = rows["a_sequential"]["per_cand"]
    ds = xr.Dataset(
        {
            "seconds_per_candidate_step": ("method", [rows[k]["per_cand"] for k in names],
                                           {"units": "s"}),
            "compile_seconds": ("method", [rows[k]["compile"] for k in names], {"units": "s"}),
            "n_candidates": ("method", [rows[k]["n"] for k in names]),
            "speedup_vs_torch": ("method", [torch_per / rows[k]["per_cand"] for k in names]),
            "speedup_vs_sequential": ("method", [seq_per / rows[k]["per_cand"] for k in names]),
        },
        coords={"method": names},
        attrs={
            "problem": PROBLEM,
            "device": f"{device} ({jax.devices()[0].device_kind})",
            "cpu_cores": os.cpu_count() or 0,
            "platform": platform.platform(),
            "python": sys.version.split()[0],
            "jax": jax.__version__,
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "load_average_1min": f"{load[0]:.1f} at start, {load[1]:.1f} at end",
        },
    )
    atomic_write_bytes(out / f"fit_throughput_{device}.nc", bytes(ds.to_netcdf(engine="h5netcdf")))
    lines = [
        f"# Fitting throughput ({device})",
        "",
        PROBLEM + ".",
        "",
        f"Device: {ds.attrs['device']}, {ds.attrs['cpu_cores']} CPU cores, jax {jax.__version__}, "
        f"{ds.attrs['date']}; 1-min load average {ds.attrs['load_average_1min']} (a shared "
        "machine: a load above the core count inflates every time here).",
        "",
        "| method | candidates | s / candidate / step | compile (s) | vs torch | vs sequential |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    label = {"a_sequential": "(a) sequential loop, jitted single-candidate step",
             "c_torch": "(c) PyTorch + torchdiffeq rk4, one at a time"}
    for k in names:
        r = rows[k]
        lab = label.get(k, f"(b) batched engine (vmap) x{r['n']}")
        vs_torch = "n/a" if math.isnan(torch_per) else f"{torch_per / r['per_cand']:.1f}x"
        lines.append(
            f"| {lab} | {r['n']} | {r['per_cand']:.4f} | {r['compile']:.1f} | "
            f"{vs_torch} | {seq_per / r['per_cand']:.2f}x |"
        )
    if "c_torch" not in rows:
        lines += ["", "(c) skipped: torch/torchdiffeq not installed."]
    atomic_write_bytes(out / f"fit_throughput_{device}.md", ("\n".join(lines) + "\n").encode())
    print("\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
