"""Interval measurement on many ECGs: `ecg_world.intervals.measure_intervals` vs neurokit2.

The world model reads clinical risk from intervals of thousands of rollouts, so this measures,
in one run and on the same ECGs, speed and accuracy of

- ours: :func:`ecg_world.intervals.measure_intervals` (one compiled call per batch; R peaks,
  delineation, per-beat and median-beat intervals) at batch 1, 64, 256 and 1024;
- neurokit2 (sequential, as users call it): ``ecg_clean`` + ``ecg_peaks`` + ``ecg_delineate``
  (``method="dwt"``), then per ECG the median over beats of PR (R onset - P onset), QRS
  (R offset - R onset) and QT (T offset - R onset).

ECGs: McSharry kernel (`leads_jax.physics.mcsharry.ecg_waveform`, physiological rate scaling,
scaled to [-0.4, 1.2] mV), 10 s at 500 Hz, one lead, heart rates uniform in 50-110 bpm, with
white noise of SD 0.03 mV and 0.1 mV baseline wander (numpy seed 0). Exact intervals come from
the kernel's reference fiducials (`leads_jax.physics.ecg_fiducials.reference_intervals`), so
accuracy is reported as the mean absolute error against them, for both methods.

Timing uses the default configuration; accuracy is given with ``KERNEL_CONVENTION`` (the
reference's own fiducial definitions) and with the default (LUDB cardiologists') convention.
Timing is interleaved (each round: a few neurokit2 ECGs, then one call per batch size) and
reported as medians of per-ECG process CPU time and wall time; compile time (first call) is
reported apart. Results: ``benchmarks/results/intervals_throughput_<platform>.{nc,md}``.

Usage: python benchmarks/intervals_throughput.py [--quick] [--rounds N]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import platform
import statistics
import time
import warnings

import jax
import numpy as np

from ecg_world import intervals
from leads_jax.physics.ecg_fiducials import reference_intervals
from leads_jax.physics.mcsharry import McSharryECG, ecg_waveform

HERE = pathlib.Path(__file__).parent
FS, DURATION = 500.0, 10.0
BATCHES = (1, 64, 256, 1024)
N_ACCURACY_NK = 64  # ECGs delineated by neurokit2 for the accuracy table


def make_ecgs(n: int, seed: int = 0):
    """(n, 1, time) noisy ECGs (mV) and their exact (RR, PR, QRS, QT) in ms."""
    rng = np.random.default_rng(seed)
    hr = rng.uniform(50.0, 110.0, n).astype(np.float32)
    model = McSharryECG.default()
    ns = int(FS * DURATION)
    waves = jax.jit(jax.vmap(lambda h: ecg_waveform(
        model, heart_rate=h, n_samples=ns, sampling_rate=FS, hr_scaling="physiological",
        scale="ecgsyn")))
    refs = jax.jit(jax.vmap(lambda h: reference_intervals(model, h)))
    x = np.asarray(waves(hr))
    r = jax.device_get(refs(hr))
    t = np.arange(ns) / FS
    x = x + 0.03 * rng.standard_normal(x.shape) + 0.1 * np.sin(
        2 * np.pi * 0.15 * t[None, :] + rng.uniform(0, 2 * np.pi, (n, 1)))
    exact = np.stack([r["RR"], r["PR"], r["QRS"], r["QT"]], axis=1)
    return x[:, None, :].astype(np.float32), exact, hr


def nk_intervals(x: np.ndarray) -> np.ndarray:
    """neurokit2: median (RR, PR, QRS, QT) in ms of one ECG (NaN where it found none)."""
    import neurokit2 as nk

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clean = nk.ecg_clean(x, sampling_rate=int(FS))
        rp = nk.ecg_peaks(clean, sampling_rate=int(FS))[1]["ECG_R_Peaks"]
        _, d = nk.ecg_delineate(clean, rp, sampling_rate=int(FS), method="dwt")

    def arr(k):
        return np.asarray(d.get(k, []), float)

    p_on, r_on, r_off, t_off = (arr(k) for k in ("ECG_P_Onsets", "ECG_R_Onsets",
                                                 "ECG_R_Offsets", "ECG_T_Offsets"))
    ms = 1000.0 / FS

    def med(v):
        v = v[np.isfinite(v)]
        return float(np.median(v)) * ms if v.size else np.nan

    m = min(p_on.size, r_on.size, r_off.size, t_off.size)
    rr = float(np.median(np.diff(rp))) * ms if len(rp) > 1 else np.nan
    return np.array([rr, med(r_on[:m] - p_on[:m]), med(r_off[:m] - r_on[:m]),
                     med(t_off[:m] - r_on[:m])])


def _timed(fn):
    c0, w0 = time.process_time(), time.perf_counter()
    out = fn()
    return time.perf_counter() - w0, time.process_time() - c0, out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 rounds, batches up to 256")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 5)")
    parser.add_argument("--nk-per-round", type=int, default=4)
    args = parser.parse_args(argv)
    rounds = args.rounds or (3 if args.quick else 5)
    batches = tuple(b for b in BATCHES if not (args.quick and b > 256))
    load_start = os.getloadavg()
    x, exact, _ = make_ecgs(max(batches))
    cfg = intervals.IntervalConfig.for_duration(FS, DURATION)

    def ours(b):
        res = intervals.measure_intervals(x[:b], cfg)
        return jax.block_until_ready(res.median)

    compile_s = {b: _timed(lambda b=b: ours(b))[0] for b in batches}
    nk_intervals(x[0, 0])  # imports
    nk_w, nk_c = [], []
    samples = {b: ([], []) for b in batches}
    k = 0
    for _ in range(rounds):
        for _ in range(args.nk_per_round):
            w, c, _ = _timed(lambda k=k: nk_intervals(x[k % x.shape[0], 0]))
            nk_w.append(w)
            nk_c.append(c)
            k += 1
        for b in batches:
            w, c, _ = _timed(lambda b=b: ours(b))
            samples[b][0].append(w / b)
            samples[b][1].append(c / b)
    load_end = os.getloadavg()
    nk_wall, nk_cpu = statistics.median(nk_w), statistics.median(nk_c)

    # accuracy on the same ECGs (ours on all, neurokit2 on the first N_ACCURACY_NK), ours
    # with the kernel reference's own fiducial definitions (KERNEL_CONVENTION) and, apart,
    # with the default (LUDB cardiologists') convention that the timing above used
    def _stack(med):
        return np.stack([med.rr[:, 0], med.pr[:, 0], med.qrs[:, 0], med.qt[:, 0]], axis=1)

    default = _stack(jax.device_get(ours(max(batches))))
    cfg_k = intervals.IntervalConfig.for_duration(FS, DURATION, **intervals.KERNEL_CONVENTION)
    mine = _stack(jax.device_get(intervals.measure_intervals(x[: max(batches)], cfg_k).median))
    n_nk = min(N_ACCURACY_NK, x.shape[0])
    theirs = np.stack([nk_intervals(x[i, 0]) for i in range(n_nk)])
    names = ("RR", "PR", "QRS", "QT")

    def mae(a, ref):
        ok = np.isfinite(a)
        return np.where(ok.any(0), np.nanmean(np.abs(a - ref), axis=0), np.nan), ok.mean(0)

    mae_ours, ok_ours = mae(mine[:n_nk], exact[:n_nk])
    mae_ours_all, _ = mae(mine, exact)
    mae_nk, ok_nk = mae(theirs, exact[:n_nk])
    mae_default, _ = mae(default[:n_nk], exact[:n_nk])

    print(f"neurokit2 (clean + peaks + dwt delineation), sequential: {nk_wall * 1e3:.1f} ms wall, "
          f"{nk_cpu * 1e3:.1f} ms CPU per 10-s ECG at {FS:g} Hz (median of {len(nk_c)})")
    rows = []
    for b in batches:
        wall, cpu = statistics.median(samples[b][0]), statistics.median(samples[b][1])
        rows.append((b, compile_s[b], wall, cpu))
        print(f"measure_intervals batch {b:5d}: {wall * 1e3:8.3f} ms wall/ECG "
              f"({nk_wall / wall:6.0f}x), {cpu * 1e3:8.3f} ms CPU/ECG ({nk_cpu / cpu:6.0f}x); "
              f"compile+first {compile_s[b]:.1f} s")
    print(f"MAE vs exact reference fiducials, first {n_nk} ECGs (ms): " + ", ".join(
        f"{n} ours {a:.1f} / nk {c:.1f}" for n, a, c in zip(names, mae_ours, mae_nk,
                                                               strict=True)))
    write(rows, nk_wall, nk_cpu, load_start, load_end, rounds, len(nk_c), names, mae_ours,
          ok_ours, mae_nk, ok_nk, mae_ours_all, n_nk, x.shape[0], mae_default)
    return 0


def write(rows, nk_wall, nk_cpu, load_start, load_end, rounds, n_nk_calls, names, mae_ours,
          ok_ours, mae_nk, ok_nk, mae_ours_all, n_nk, n_all, mae_default):
    import xarray as xr

    backend = jax.default_backend()
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
    b = np.array([r[0] for r in rows])
    wall = np.array([r[2] for r in rows])
    cpu = np.array([r[3] for r in rows])
    ds = xr.Dataset(
        {
            "compile_s": ("batch", np.array([r[1] for r in rows]), {"units": "s"}),
            "wall_s_per_ecg": ("batch", wall, {"units": "s"}),
            "cpu_s_per_ecg": ("batch", cpu, {"units": "s"}),
            "speedup_wall": ("batch", nk_wall / wall),
            "speedup_cpu": ("batch", nk_cpu / cpu),
            "mae_ours": ("interval", mae_ours, {"units": "ms", "n_ecg": n_nk}),
            "mae_ours_all": ("interval", mae_ours_all, {"units": "ms", "n_ecg": n_all}),
            "mae_neurokit2": ("interval", mae_nk, {"units": "ms", "n_ecg": n_nk}),
            "mae_ours_default": ("interval", mae_default, {"units": "ms", "n_ecg": n_nk,
                                 "convention": "default (LUDB cardiologists')"}),
            "found_ours": ("interval", ok_ours),
            "found_neurokit2": ("interval", ok_nk),
        },
        coords={"batch": b, "interval": list(names)},
        attrs={
            "task": f"intervals of one {DURATION:g}-s single-lead ECG at {FS:g} Hz",
            "neurokit2_wall_s_per_ecg": nk_wall,
            "neurokit2_cpu_s_per_ecg": nk_cpu,
            "method": f"medians over {rounds} interleaved rounds ({n_nk_calls} neurokit2 "
                      "ECGs); CPU = time.process_time, wall = time.perf_counter",
            "ecgs": "McSharry kernel, physiological scaling, 50-110 bpm, white noise 0.03 mV + "
                    "0.1 mV wander at 0.15 Hz, numpy seed 0",
            "backend": backend, "device": str(jax.devices()[0]), "machine": machine,
            "load_average_start": np.array(load_start), "load_average_end": np.array(load_end),
            "jax": jax.__version__,
        },
    )
    ds.to_netcdf(out / f"intervals_throughput_{backend}.nc", engine="h5netcdf")
    lines = [
        f"# Interval measurement throughput and accuracy ({backend})",
        "",
        f"One {DURATION:g}-s single-lead ECG at {FS:g} Hz ({ds.attrs['ecgs']}). neurokit2 "
        f"(`ecg_clean` + `ecg_peaks` + `ecg_delineate(method='dwt')`, sequential): "
        f"**{nk_wall * 1e3:.1f} ms wall, {nk_cpu * 1e3:.1f} ms CPU** per ECG (median of "
        f"{n_nk_calls}, interleaved with ours over {rounds} rounds).",
        f"Machine: {machine}, device {ds.attrs['device']}, jax {jax.__version__}; load average "
        f"{load_start[0]:.1f} at the start, {load_end[0]:.1f} at the end.",
        "",
        "| batch | compile+first (s) | ms wall / ECG | x neurokit2 (wall) | ms CPU / ECG "
        "| x neurokit2 (CPU) |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r[0]} | {r[1]:.1f} | {r[2] * 1e3:.3f} | {nk_wall / r[2]:.0f} | "
                     f"{r[3] * 1e3:.3f} | {nk_cpu / r[3]:.0f} |")
    lines += [
        "",
        f"Mean absolute error of the median-beat intervals against the kernel's exact "
        f"reference fiducials (ms), the same first {n_nk} ECGs for both (ours on all "
        f"{n_all} in the 'all' column). 'ours' uses `KERNEL_CONVENTION` (the reference's own "
        "definitions: 5 % of the peak slope, tangent T end); 'ours default' the default, "
        "LUDB-cardiologist convention (benchmarks/results/delineation_ludb.md), which marks "
        "the Gaussian waves' onsets and ends elsewhere, so its error here is largely "
        "definitional, as is part of neurokit2's (dwt).",
        "",
        "| interval | ours | neurokit2 dwt | ours found | neurokit2 found | "
        f"ours (all {n_all}) | ours default |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for i, n in enumerate(names):
        lines.append(f"| {n} | {mae_ours[i]:.1f} | {mae_nk[i]:.1f} | {ok_ours[i]:.0%} | "
                     f"{ok_nk[i]:.0%} | {mae_ours_all[i]:.1f} | {mae_default[i]:.1f} |")
    lines += ["", "Reproduce: `python benchmarks/intervals_throughput.py`."]
    (out / f"intervals_throughput_{backend}.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / f'intervals_throughput_{backend}.md'}")


if __name__ == "__main__":
    raise SystemExit(main())
