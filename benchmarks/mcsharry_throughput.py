"""Throughput of the McSharry (ECGSYN) kernel against neurokit2's ECGSYN.

Prints, in one run, seconds per 10-s ECG at 500 Hz for

- neurokit2 ``ecg_simulate(method="ecgsyn")``, called sequentially as users call it
  (defaults otherwise: 70 bpm, heart_rate_std 1, noise 0.01);
- the pure kernel at batch 1, 64, 256 and 1024: one compiled call doing what ECGSYN
  does per ECG -- the RR process (bimodal spectrum, random phases), its cubic
  upsampling to 500 Hz (evaluated at the samples ECGSYN's beat loop reads),
  ECGSYN's beat construction, the exact-exponential integration of 10 s at 500 Hz
  and the min-max scaling to mV -- for ECGs with different keys and heart rates
  (60-100 bpm), in both heart-rate scalings;
- the user API ``simulate_ecg_batch`` (numpy/xarray wrapper, 16 s integrated as
  ECGSYN does, input checks, plus noise) at batch 1024, end to end.

Compile time (the first call) is reported apart. The machine may be shared, so
neurokit2 and the kernels are timed **interleaved**: each round times a few
neurokit2 calls, then one call of every kernel configuration, so that both see
the same load; the speed-ups are ratios of medians over all rounds, in process
CPU time (all threads; the fairer figure under load) and in wall time
(``time.perf_counter``), with ``jax.block_until_ready`` on every result. The load
average is recorded at the start and end. Results:
``benchmarks/results/mcsharry_throughput_<platform>.{nc,md}``.

Usage: python benchmarks/mcsharry_throughput.py [--quick] [--rounds N]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from leads_jax.physics.mcsharry import (
    McSharryECG,
    _rr_beats_from_knots,
    _waveform_raw,
    rr_process,
    simulate_ecg_batch,
)

HERE = pathlib.Path(__file__).parent
FS, DURATION = 500, 10.0
N_RR = 16  # ECGSYN's RR series for a 10-s record at 60-110 bpm: 16 s at 1 Hz
BATCHES = (1, 64, 256, 1024)
API_BATCH = 1024


def _timed(fn):
    c0, w0 = time.process_time(), time.perf_counter()
    fn()
    return time.perf_counter() - w0, time.process_time() - c0


def make_kernel(hr_scaling):
    """One ECG, ECGSYN's pipeline; vmapped and jitted."""
    model = McSharryECG.default()
    n = int(DURATION * FS)
    dt = 1.0 / FS
    max_beats = int(np.ceil(N_RR / 0.45)) + 2  # RR >= 0.45 s at <= 100 bpm +- variability

    def one(key, hr):
        rr0 = rr_process(key, N_RR, heart_rate=hr, heart_rate_std=1.0)
        beats = _rr_beats_from_knots(rr0, FS, dt, max_beats)
        z = _waveform_raw(
            model, beats, n, dt, hr_scaling=hr_scaling, mean_rr=60.0 / hr, z_init=0.04,
            phase0=0.0, resp_amplitude=0.005, resp_frequency=0.25,
        )
        zmin, zmax = jnp.min(z), jnp.max(z)
        return (z - zmin) * 1.6 / (zmax - zmin) - 0.4

    return jax.jit(jax.vmap(one))


def _nk_call(i):
    import neurokit2 as nk

    return nk.ecg_simulate(duration=DURATION, sampling_rate=FS, method="ecgsyn", random_state=i)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 7)")
    parser.add_argument("--nk-per-round", type=int, default=3,
                        help="neurokit2 calls per round (default 3)")
    args = parser.parse_args(argv)
    rounds = args.rounds or (3 if args.quick else 7)
    load_start = os.getloadavg()

    # --- compile (first call) of every configuration, timed apart
    configs = []  # (label, hr_scaling, batch, callable)
    for hr_scaling in ("ecgsyn", "physiological"):
        kernel = make_kernel(hr_scaling)
        for b in BATCHES:
            keys = jax.random.split(jax.random.key(b), b)
            hrs = jnp.asarray(np.random.default_rng(b).uniform(60, 100, b), jnp.float32)
            run = lambda k=kernel, ks=keys, h=hrs: jax.block_until_ready(k(ks, h))  # noqa: E731
            configs.append([f"kernel ({hr_scaling})", hr_scaling, b, run])
    hrs_api = np.random.default_rng(0).uniform(60, 100, API_BATCH)

    def api():
        out = simulate_ecg_batch(DURATION, FS, hrs_api, 1.0, key=jax.random.key(0))
        return np.asarray(out.values)

    configs.append(["simulate_ecg_batch (user API)", "ecgsyn", API_BATCH, api])
    compile_s = {}
    for label, _, b, run in configs:
        compile_s[(label, b)] = _timed(run)[0]
    _nk_call(0)  # neurokit2 warm-up (imports)

    # --- interleaved rounds
    nk_w, nk_c = [], []
    samples = {(c[0], c[2]): ([], []) for c in configs}
    for r in range(rounds):
        for i in range(args.nk_per_round):
            w, c = _timed(lambda s=1 + r * args.nk_per_round + i: _nk_call(s))
            nk_w.append(w)
            nk_c.append(c)
        for label, _, b, run in configs:
            w, c = _timed(run)
            samples[(label, b)][0].append(w / b)
            samples[(label, b)][1].append(c / b)
    load_end = os.getloadavg()
    nk_wall, nk_cpu = statistics.median(nk_w), statistics.median(nk_c)
    print(f"neurokit2 ECGSYN (sequential): {nk_wall * 1e3:.1f} ms wall, {nk_cpu * 1e3:.1f} ms CPU "
          f"per 10-s ECG at {FS} Hz (median of {len(nk_c)} calls interleaved with the kernels)")
    print(f"load average (1, 5, 15 min): start {load_start[0]:.1f} {load_start[1]:.1f} "
          f"{load_start[2]:.1f}, end {load_end[0]:.1f} {load_end[1]:.1f} {load_end[2]:.1f}; "
          f"{os.cpu_count()} CPUs")
    rows = []
    for label, hr_scaling, b, _ in configs:
        ws, cs = samples[(label, b)]
        wall, cpu = statistics.median(ws), statistics.median(cs)
        rows.append((label, hr_scaling, b, compile_s[(label, b)], wall, cpu))
        print(f"{label:30s} batch {b:5d}: {wall * 1e3:8.4f} ms wall/ECG ({nk_wall / wall:6.0f}x), "
              f"{cpu * 1e3:8.4f} ms CPU/ECG ({nk_cpu / cpu:6.0f}x); "
              f"compile+first {compile_s[(label, b)]:.1f} s", flush=True)
    write(rows, nk_wall, nk_cpu, load_start, load_end, rounds, len(nk_c))
    return 0


def write(rows, nk_wall, nk_cpu, load_start, load_end, rounds, n_nk):
    import xarray as xr

    backend = jax.default_backend()
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    n_cpu = os.cpu_count()
    ds = xr.Dataset(
        {
            "variant": ("run", [r[0] for r in rows]),
            "hr_scaling": ("run", [r[1] for r in rows]),
            "batch": ("run", np.array([r[2] for r in rows])),
            "compile_s": ("run", np.array([r[3] for r in rows]), {"units": "s"}),
            "wall_s_per_ecg": ("run", np.array([r[4] for r in rows]), {"units": "s"}),
            "cpu_s_per_ecg": ("run", np.array([r[5] for r in rows]), {"units": "s"}),
            "speedup_wall": ("run", nk_wall / np.array([r[4] for r in rows])),
            "speedup_cpu": ("run", nk_cpu / np.array([r[5] for r in rows])),
        },
        attrs={
            "task": f"one {DURATION:g}-s ECG at {FS} Hz",
            "neurokit2_wall_s_per_ecg": nk_wall,
            "neurokit2_cpu_s_per_ecg": nk_cpu,
            "method": f"medians over {rounds} interleaved rounds ({n_nk} neurokit2 calls); "
                      "CPU = time.process_time, wall = time.perf_counter",
            "backend": backend,
            "device": str(jax.devices()[0]),
            "machine": f"{platform.processor() or platform.machine()}, {n_cpu} CPUs",
            "load_average_start": np.array(load_start),
            "load_average_end": np.array(load_end),
            "jax": jax.__version__,
        },
    )
    ds.to_netcdf(out / f"mcsharry_throughput_{backend}.nc", engine="h5netcdf")
    lines = [
        f"# McSharry kernel throughput ({backend})",
        "",
        f"One {DURATION:g}-s ECG at {FS} Hz. neurokit2 ECGSYN (sequential): "
        f"**{nk_wall * 1e3:.1f} ms wall, {nk_cpu * 1e3:.1f} ms CPU** per ECG (median of {n_nk} "
        f"calls, interleaved with the kernels over {rounds} rounds).",
        f"Machine: {ds.attrs['machine']}, device {ds.attrs['device']}, jax {jax.__version__}; "
        f"load average (1/5/15 min) {load_start[0]:.1f}/{load_start[1]:.1f}/{load_start[2]:.1f} "
        f"at the start, {load_end[0]:.1f}/{load_end[1]:.1f}/{load_end[2]:.1f} at the end (a "
        "shared machine inflates wall times; CPU time is the fairer figure).",
        "",
        "| variant | batch | compile+first (s) | ms wall / ECG | x neurokit2 (wall) "
        "| ms CPU / ECG | x neurokit2 (CPU) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r[0]} | {r[2]} | {r[3]:.1f} | {r[4] * 1e3:.4f} | {nk_wall / r[4]:.0f} | "
            f"{r[5] * 1e3:.4f} | {nk_cpu / r[5]:.0f} |"
        )
    lines += [
        "",
        "Target >= 400x neurokit2 per ECG at batch 1024 (stretch 1000x).",
        "Reproduce: `python benchmarks/mcsharry_throughput.py`.",
    ]
    (out / f"mcsharry_throughput_{backend}.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / f'mcsharry_throughput_{backend}.md'}")


if __name__ == "__main__":
    raise SystemExit(main())
