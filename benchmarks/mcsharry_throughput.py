"""Throughput of the McSharry (ECGSYN) kernel against neurokit2's ECGSYN.

Prints, in one run, seconds per 10-s ECG at 500 Hz for

- neurokit2 ``ecg_simulate(method="ecgsyn")``, called sequentially as users call it
  (defaults otherwise: 70 bpm, heart_rate_std 1, noise 0.01);
- this kernel at batch 1, 64, 256 and 1024: one compiled call doing what ECGSYN
  does per ECG -- the RR process (bimodal spectrum, random phases), its cubic
  upsampling to 500 Hz, ECGSYN's beat construction, the exact-exponential
  integration of 10 s at 500 Hz and the min-max scaling to mV -- for ECGs with
  different keys and heart rates (60-100 bpm). Compile time is reported apart;
- the user API ``simulate_ecg_batch`` (numpy/xarray wrapper, 16 s integrated as
  ECGSYN does, plus noise) at batch 1024, end to end.

Wall-clock medians over repeats, and the process CPU time (all threads) per ECG,
which is the fairer figure on a shared machine. Results:
``benchmarks/results/mcsharry_throughput_<platform>.{nc,md}``.

Usage: python benchmarks/mcsharry_throughput.py [--quick]
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
    _waveform_raw,
    rr_process,
    rr_to_beats,
    simulate_ecg_batch,
    upsample_rr,
)

HERE = pathlib.Path(__file__).parent
FS, DURATION = 500, 10.0
N_RR = 16  # ECGSYN's RR series for a 10-s record at 60-110 bpm: 16 s at 1 Hz


def _timeit(fn, repeats):
    walls, cpus = [], []
    for _ in range(repeats):
        c0, w0 = time.process_time(), time.perf_counter()
        fn()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    return statistics.median(walls), statistics.median(cpus)


def bench_neurokit(n_calls):
    import neurokit2 as nk

    nk.ecg_simulate(duration=DURATION, sampling_rate=FS, method="ecgsyn", random_state=0)
    walls, cpus = [], []
    for i in range(n_calls):
        c0, w0 = time.process_time(), time.perf_counter()
        nk.ecg_simulate(duration=DURATION, sampling_rate=FS, method="ecgsyn", random_state=i)
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    return statistics.median(walls), statistics.median(cpus)


def make_kernel(hr_scaling):
    """One ECG, ECGSYN's pipeline; vmapped and jitted by the caller."""
    model = McSharryECG.default()
    n = int(DURATION * FS)
    dt = 1.0 / FS
    max_beats = int(np.ceil(N_RR / 0.45)) + 2  # RR >= 0.45 s at <= 100 bpm +- variability

    def one(key, hr):
        rr0 = rr_process(key, N_RR, heart_rate=hr, heart_rate_std=1.0)
        rr_int = upsample_rr(rr0, FS)
        beats = rr_to_beats(rr_int, dt, max_beats)
        z = _waveform_raw(
            model, beats, n, dt, hr_scaling=hr_scaling, mean_rr=60.0 / hr, z_init=0.04,
            phase0=0.0, resp_amplitude=0.005, resp_frequency=0.25,
        )
        zmin, zmax = jnp.min(z), jnp.max(z)
        return (z - zmin) * 1.6 / (zmax - zmin) - 0.4

    return jax.jit(jax.vmap(one))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    args = parser.parse_args(argv)
    repeats = 3 if args.quick else 7
    batches = (1, 64, 256, 1024)

    nk_wall, nk_cpu = bench_neurokit(5 if args.quick else 15)
    print(f"neurokit2 ECGSYN (sequential): {nk_wall * 1e3:.1f} ms wall, "
          f"{nk_cpu * 1e3:.1f} ms CPU per 10-s ECG at {FS} Hz")

    rows = []
    for hr_scaling in ("ecgsyn", "physiological"):
        kernel = make_kernel(hr_scaling)
        for b in batches:
            keys = jax.random.split(jax.random.key(b), b)
            hrs = jnp.asarray(np.random.default_rng(b).uniform(60, 100, b))
            t0 = time.perf_counter()
            jax.block_until_ready(kernel(keys, hrs))
            compile_s = time.perf_counter() - t0
            run = lambda k=kernel, ks=keys, h=hrs: jax.block_until_ready(k(ks, h))  # noqa: E731
            wall, cpu = _timeit(run, repeats)
            rows.append((f"kernel ({hr_scaling})", hr_scaling, b, compile_s, wall / b, cpu / b))
            print(f"kernel hr_scaling={hr_scaling:13s} batch {b:5d}: "
                  f"{wall / b * 1e3:8.3f} ms wall/ECG ({nk_wall / (wall / b):7.0f}x), "
                  f"{cpu / b * 1e3:8.3f} ms CPU/ECG ({nk_cpu / (cpu / b):7.0f}x); "
                  f"compile+first {compile_s:.1f} s", flush=True)

    b = 1024
    hrs = np.random.default_rng(0).uniform(60, 100, b)
    call = lambda: simulate_ecg_batch(DURATION, FS, hrs, 1.0, key=jax.random.key(0))  # noqa: E731
    t0 = time.perf_counter()
    call()
    compile_s = time.perf_counter() - t0
    wall, cpu = _timeit(call, max(2, repeats // 2))
    rows.append(("simulate_ecg_batch (user API)", "ecgsyn", b, compile_s, wall / b, cpu / b))
    print(f"simulate_ecg_batch batch {b}: {wall / b * 1e3:.3f} ms wall/ECG "
          f"({nk_wall / (wall / b):.0f}x), {cpu / b * 1e3:.3f} ms CPU/ECG "
          f"({nk_cpu / (cpu / b):.0f}x); compile+first {compile_s:.1f} s")

    write(rows, nk_wall, nk_cpu)
    return 0


def write(rows, nk_wall, nk_cpu):
    import xarray as xr

    backend = jax.default_backend()
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
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
            "backend": backend,
            "device": str(jax.devices()[0]),
            "machine": f"{platform.processor() or platform.machine()}, {n_cpu} CPUs",
            "load_average_1min": load,
            "jax": jax.__version__,
        },
    )
    ds.to_netcdf(out / f"mcsharry_throughput_{backend}.nc", engine="h5netcdf")
    lines = [
        f"# McSharry kernel throughput ({backend})",
        "",
        f"One {DURATION:g}-s ECG at {FS} Hz. neurokit2 ECGSYN (sequential): "
        f"**{nk_wall * 1e3:.1f} ms wall, {nk_cpu * 1e3:.1f} ms CPU** per ECG.",
        f"Machine: {ds.attrs['machine']}, device {ds.attrs['device']}, jax {jax.__version__}, "
        f"1-min load average {load:.1f} during the run (a shared machine inflates wall times; "
        "CPU time is the fairer figure).",
        "",
        "| variant | batch | compile+first (s) | ms wall / ECG | x neurokit2 (wall) "
        "| ms CPU / ECG | x neurokit2 (CPU) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r[0]} | {r[2]} | {r[3]:.1f} | {r[4] * 1e3:.3f} | {nk_wall / r[4]:.0f} | "
            f"{r[5] * 1e3:.3f} | {nk_cpu / r[5]:.0f} |"
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
