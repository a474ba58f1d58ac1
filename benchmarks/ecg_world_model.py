"""ECG world model: four methods side by side on held-out virtual patients (issue 13).

Methods: the world model (latent diffusion + energy anchor), the same without the anchor,
the ODE-only baseline (fitted McSharry + pharmacology = the anchor's post strip), and a direct
regression (an MLP from (pre latent, action features) to the post latent, same autoencoder).

Reported on the cohort's ``test`` patients (never trained or tuned on): waveform RMSE and
correlation of the mean rollout against the true post strip, and of its R-aligned median beat
(lead II) against the truth's over one cycle and over the delineator's 1.7-s window
(ecg_world.world.evaluate.median_beat_scores), with the heart-rate error apart; QTcF and PR
MAE of the median rollout (intervals by ecg_world.intervals, median over leads); the coverage
of the true QTcF by the central 90% of the rollouts (randomised PIT, calibrated at any k:
ecg_world.world.evaluate.pit_central_coverage; and by the empirical 5-95% band of the k
rollouts, which a calibrated ensemble fills only to about 72% at k = 8 and 81% at k = 16) and
the CRPS of QTcF; sampling throughput (compile apart); hallucination rates by the rules of
ecg_world.world.evaluate (default and 10 steps, 2x the dose, LUDB reporting-split inputs) with
95% Wilson intervals; the autoencoder's reconstruction and decoded-interval errors. Two
reference rows bound the waveform scores: the pre strip copied unchanged (a model that
predicts no change), and a second realization of the true post strip (its beat-to-beat
variation redrawn by ``pairs_from_batch(..., post_realization=1)``; the morphology, U wave and
recording noise kept), which is as close as any model could come to the truth.

Usage (the committed table; the first two commands are what
``python benchmarks/ship_world_model.py --work W`` runs, and M is then the shipped model
``ecg_world/data/models/quick``)::

    ecg-world synth --n-patients 96 --seed 1 --duration 4.2 --out C.nc
    ecg-world train --data C.nc --out M --preset quick --seed 0 --ae-ludb ../shared/data/ludb
    ecg-world train --data C.nc --out M0 --preset quick --no-anchor --seed 0 \
        --ae-ludb ../shared/data/ludb
    python benchmarks/ecg_world_model.py --data C.nc --model M --model-no-anchor M0 -k 16

The LUDB strips the autoencoder may see are the tuning split's; the LUDB rows here are the
reporting split's. The preset's anchor guidance (its sampling-time settings) was chosen on the
validation patients by ``benchmarks/world_model_guidance.py``; ``--split val`` scores those
patients here instead.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import xarray as xr
from flax import nnx

from ecg_world.actions import Action
from ecg_world.batch import ECGBatch
from ecg_world.world.data import action_features, pairs_from_batch, strips_from_record
from ecg_world.world.evaluate import (
    crps_ensemble,
    median_beat_scores,
    pit_central_coverage,
    plausibility,
    strip_intervals,
    wilson_interval,
)
from ecg_world.world.model import load_model
from ecg_world.world.sample import rollouts
from ecg_world.world.train import prepare_data

RESULTS = pathlib.Path(__file__).parent / "results"


class Regressor(nnx.Module):
    def __init__(self, d_in, d_out, hidden, *, rngs):
        self.l1 = nnx.Linear(d_in, hidden, rngs=rngs)
        self.l2 = nnx.Linear(hidden, hidden, rngs=rngs)
        self.l3 = nnx.Linear(hidden, d_out, kernel_init=nnx.initializers.zeros, rngs=rngs)

    def __call__(self, x):
        return self.l3(jax.nn.gelu(self.l2(jax.nn.gelu(self.l1(x)))))


def latents(model, x):
    enc = nnx.jit(lambda m, v: m.encode(v))
    x = np.asarray(x)
    return np.concatenate([np.asarray(enc(model.autoencoder, jnp.asarray(x[i:i + 256])))
                           for i in range(0, len(x), 256)])


def decode(model, z):
    dec = nnx.jit(lambda m, v: m.decode(v))
    return np.concatenate([np.asarray(dec(model.autoencoder, jnp.asarray(z[i:i + 256])))
                           for i in range(0, len(z), 256)])


def train_regression(model, pairs, tr, steps, seed):
    z_pre, z_post = latents(model, pairs.pre), latents(model, pairs.post)
    zp = (z_pre - np.asarray(model.pre_mean)) / np.asarray(model.pre_std)
    x0 = (z_post - z_pre) / np.asarray(model.delta_std)
    inp = np.concatenate([zp, np.asarray(pairs.features)], axis=1).astype(np.float32)
    reg = Regressor(inp.shape[1], x0.shape[1], 256, rngs=nnx.Rngs(seed))
    opt = nnx.Optimizer(reg, optax.adam(1e-3), wrt=nnx.Param)

    @nnx.jit
    def step(reg, opt, a, b):
        loss, g = nnx.value_and_grad(lambda r: jnp.mean((r(a) - b) ** 2))(reg)
        opt.update(reg, g)
        return loss

    rng = np.random.default_rng(seed)
    for _ in range(steps):
        i = tr[rng.integers(0, tr.size, 64)]
        step(reg, opt, jnp.asarray(inp[i]), jnp.asarray(x0[i]))
    pred = np.asarray(reg(jnp.asarray(inp)))
    return decode(model, z_pre + pred * np.asarray(model.delta_std))


def anchor_strips_for(pre, action, pharm, spec, model):
    """The McSharry anchor's post strips and its fitted pre strips for pre strips and actions
    (one batched fit): ``(post, fit_pre)``."""
    from ecg_world.world.anchor import AnchorConfig, anchor_from_strips, anchor_pre_strips

    acfg = AnchorConfig(sampling_rate=spec.sampling_rate,
                        n_steps=int(model.meta.get("training", {}).get("anchor_steps", 600)))
    fit, post, _ = anchor_from_strips(jnp.asarray(pre, jnp.float32), action, pharm, acfg)
    return np.asarray(post), np.asarray(anchor_pre_strips(fit, n_samples=spec.n_samples,
                                                          config=acfg))


def waveform_scores(pred, truth):
    rmse = np.sqrt(np.mean((pred - truth) ** 2, axis=(-1, -2)))
    p = pred.reshape(len(pred), -1) - pred.reshape(len(pred), -1).mean(1, keepdims=True)
    t = truth.reshape(len(truth), -1) - truth.reshape(len(truth), -1).mean(1, keepdims=True)
    r = (p * t).sum(1) / np.sqrt((p * p).sum(1) * (t * t).sum(1))
    return float(np.mean(rmse)), float(np.median(r))


def beat_scores(pred, truth, fs, lead=0):
    """R-aligned median beat of `pred` against the truth's on one lead
    (:func:`ecg_world.world.evaluate.median_beat_scores`): Pearson r over one cycle (median
    over strips, and the share with r >= 0.95), over the delineator's 1.7-s window (which
    also scores the neighbouring beats' timing), and the heart-rate error (bpm, mean abs, from
    the median-beat RR) reported apart. An unreadable strip counts as r = -1."""
    s = median_beat_scores(pred, truth, fs, lead)
    rc = np.where(np.isfinite(s["r_cycle"]), s["r_cycle"], -1.0)
    rw = np.where(np.isfinite(s["r_window"]), s["r_window"], -1.0)
    return {"beat_r": float(np.median(rc)), "beat_r_ge_095": float(np.mean(rc >= 0.95)),
            "beat_r_window": float(np.median(rw)),
            "hr_mae_bpm": float(np.nanmean(np.abs(s["hr_error_bpm"])))}


def rate(rules):
    bad = ~rules["plausible"].ravel()
    k, n = int(bad.sum()), int(bad.size)
    lo, hi = wilson_interval(k, n)
    return {"rate": k / max(n, 1), "lo": lo, "hi": hi, "n": n,
            **{f"fail_{r}": float(np.mean(~rules[r])) for r in ("beats", "order", "ranges",
                                                                  "amplitude")}}


def time_course(model, pairs, te, anchor_post, anchor_pre, key, *, k, steps, out_png):
    """QTcF of k rollouts at every time after the dose for one held-out patient and drug
    (the first test patient's strongest hERG blocker present), drawn independently (the
    default) and with the start noise shared across the times; truth and ODE-only anchor
    for reference. Writes the figure; returns the per-mode step-to-step QTcF change SD (ms)
    of a rollout index, a measure of (in)coherence."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(pairs.drug_names)
    drug_of = np.asarray(pairs.drug)[te]
    pat = np.asarray(pairs.patient)[te]
    pick = next((d for d in ("dofetilide", "quinidine") if d in names), None)
    if pick is None:
        return {}
    rows = te[(pat == pat[0]) & (drug_of == names.index(pick))]
    rows = rows[np.argsort(np.asarray(pairs.time_h)[rows])]
    if rows.size < 2:
        return {}
    fs = pairs.spec.sampling_rate
    t = np.asarray(pairs.time_h)[rows]
    pre = np.asarray(pairs.pre)[rows]
    feats = np.asarray(pairs.features)[rows]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    out = {}
    for ax, shared in zip(axes, (False, True), strict=True):
        y = np.asarray(rollouts(model, pre, feats, key, k=k, steps=steps,
                                anchor_post=anchor_post[rows], anchor_pre=anchor_pre[rows],
                                shared_noise_across_rows=shared))
        q = strip_intervals(y, fs)["QTcF"]  # (time, k)
        for j in range(q.shape[1]):
            ax.plot(t, q[:, j], "-o", color="C0", alpha=0.45, lw=1, ms=3)
        ax.plot(t, np.asarray(pairs.truth_qtcf)[rows], "k-", lw=2, label="truth (exact)")
        ax.plot(t, strip_intervals(anchor_post[rows], fs)["QTcF"], "--", color="C3", lw=1.5,
                label="ODE-only anchor")
        label = "shared start noise" if shared else "independent (default)"
        ax.set_title(f"{label}: {k} rollouts")
        ax.set_xlabel(f"hours after {pick}")
        out[label] = float(np.nanstd(np.diff(q - np.nanmean(q, axis=1, keepdims=True),
                                             axis=0)))
    axes[0].set_ylabel("QTcF read off the rollout (ms)")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"one held-out patient (test index {int(pat[0])}), {pick}")
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=pathlib.Path, required=True)
    ap.add_argument("--model", type=pathlib.Path, required=True)
    ap.add_argument("--model-no-anchor", type=pathlib.Path, required=True)
    ap.add_argument("-k", type=int, default=16)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--regression-steps", type=int, default=1500)
    ap.add_argument("--ludb", type=pathlib.Path,
                    default=pathlib.Path(__file__).parents[2] / "shared" / "data" / "ludb")
    ap.add_argument("--out", type=pathlib.Path, default=RESULTS)
    ap.add_argument("--split", choices=["test", "val"], default="test",
                    help="the held-out patients scored (default test; val for tuning)")
    args = ap.parse_args(argv)
    models = {"world model": load_model(args.model),
              "no anchor": load_model(args.model_no_anchor)}
    m0 = models["world model"]
    seed = int(m0.meta.get("training", {}).get("seed", 0))
    prep = prepare_data(args.data, seed=seed,
                        anchor_steps=int(m0.meta.get("training", {}).get("anchor_steps", 600)))
    pairs = prep.pairs
    te, tr = pairs.split_index(args.split), pairs.split_index("train")
    fs = pairs.spec.sampling_rate
    lead_ii = list(pairs.spec.leads).index("II") if "II" in pairs.spec.leads else 0
    truth = np.asarray(pairs.post)[te]
    y_qtcf, y_pr = np.asarray(pairs.truth_qtcf)[te], np.asarray(pairs.truth_pr)[te]
    amp = np.median(np.ptp(np.asarray(pairs.post)[tr], axis=-1), axis=0)
    rows, halluc = {}, {}
    # the floor: intervals read off the true post strips vs the exact cohort intervals
    iv_truth = strip_intervals(truth, fs)
    floor_qtcf = float(np.nanmean(np.abs(iv_truth["QTcF"] - y_qtcf)))
    floor_pr = float(np.nanmean(np.abs(iv_truth["PR"] - y_pr)))
    key = jax.random.key(2026)
    pre = np.asarray(pairs.pre)[te]
    feats = np.asarray(pairs.features)[te]
    anc = np.asarray(prep.anchor_post)[te]
    apre = np.asarray(prep.anchor_pre)[te]
    a2 = Action(pairs.drug[te], 2.0 * pairs.dose_mg[te], pairs.time_h[te], check=False)
    f2 = np.asarray(action_features(prep.pharm, a2))
    anc2, apre2 = anchor_strips_for(pre, a2, prep.pharm, pairs.spec, m0)
    for name, m in models.items():
        rollouts(m, pre[:2], feats[:2], key, k=args.k, steps=args.steps,
                 anchor_post=anc[:2], anchor_pre=apre[:2])  # compile
        t0 = time.perf_counter()
        y = np.asarray(rollouts(m, pre, feats, key, k=args.k, steps=args.steps,
                                anchor_post=anc, anchor_pre=apre))
        dt = time.perf_counter() - t0
        iv = strip_intervals(y, fs)  # (n, k)
        q = iv["QTcF"]
        lo, hi = np.nanpercentile(q, 5, axis=1), np.nanpercentile(q, 95, axis=1)
        rmse, r = waveform_scores(y.mean(1), truth)
        rows[name] = {"rmse_mV": rmse, "r": r,
                      "qtcf_mae_ms": float(np.nanmean(np.abs(np.nanmedian(q, 1) - y_qtcf))),
                      "pr_mae_ms": float(np.nanmean(np.abs(np.nanmedian(iv["PR"], 1) - y_pr))),
                      "qtcf_cover90": float(np.mean((y_qtcf >= lo) & (y_qtcf <= hi))),
                      "qtcf_cover90_pit": float(np.mean(pit_central_coverage(q, y_qtcf))),
                      "qtcf_crps_ms": float(np.nanmean(crps_ensemble(q, y_qtcf))),
                      **beat_scores(y.mean(1), truth, fs, lead_ii),
                      "rollouts_per_s": y.shape[0] * y.shape[1] / dt}
        h = {"default": rate(plausibility(y, fs, amp))}
        y10 = np.asarray(rollouts(m, pre, feats, key, k=args.k, steps=10, anchor_post=anc,
                                  anchor_pre=apre))
        h["10 steps"] = rate(plausibility(y10, fs, amp))
        h["2x dose"] = rate(plausibility(np.asarray(rollouts(m, pre, f2, key, k=args.k,
                                                             steps=args.steps,
                                                             anchor_post=anc2,
                                                             anchor_pre=apre2)), fs, amp))
        halluc[name] = h
        print(name, rows[name], {k: round(v["rate"], 3) for k, v in h.items()}, file=sys.stderr)
    # ODE-only and direct regression (deterministic), and two references: the pre strip
    # copied (no change predicted), and a second realization of the truth (the post strips'
    # beat-to-beat variation redrawn, the rest kept): what a perfect model could match
    second = pairs_from_batch(ECGBatch.from_netcdf(args.data), prep.pharm, pairs.spec,
                              seed=seed, post_realization=1)
    for name, pred in (("ODE only", prep.anchor_post[te]),
                       ("direct regression", train_regression(m0, pairs, tr,
                                                              args.regression_steps, seed)[te]),
                       ("reference: copy pre strip", pre),
                       ("reference: truth, 2nd realization", np.asarray(second.post)[te])):
        iv = strip_intervals(pred, fs)
        rmse, r = waveform_scores(pred, truth)
        rows[name] = {"rmse_mV": rmse, "r": r,
                      "qtcf_mae_ms": float(np.nanmean(np.abs(iv["QTcF"] - y_qtcf))),
                      "pr_mae_ms": float(np.nanmean(np.abs(iv["PR"] - y_pr))),
                      "qtcf_cover90": float("nan"), "qtcf_cover90_pit": float("nan"),
                      "qtcf_crps_ms": float(np.nanmean(np.abs(iv["QTcF"] - y_qtcf))),
                      **beat_scores(pred, truth, fs, lead_ii),
                      "rollouts_per_s": float("nan")}
        if not name.startswith("reference"):
            halluc[name] = {"default": rate(plausibility(pred[:, None], fs, amp))}
    # the rules on the true post strips: what they flag where nothing is imagined
    halluc["reference: real strips"] = {"default": rate(plausibility(truth[:, None], fs, amp))}
    # autoencoder: held-out synthetic patients and the LUDB reporting split
    dec = decode(m0, latents(m0, truth))
    iv_dec = strip_intervals(dec, fs)
    ae = {"synthetic_rmse_mV": waveform_scores(dec, truth)[0],
          "synthetic_r": waveform_scores(dec, truth)[1]}
    for k in ("QTcF", "PR", "QRS"):
        ae[f"synthetic_{k}_mae_ms"] = float(np.nanmean(np.abs(iv_dec[k] - iv_truth[k])))
    ludb_note = "not run"
    if args.ludb.is_dir():
        from ecg_world.ludb import ludb_record_ids, read_ludb_record

        strips = []
        for rid in ludb_record_ids(args.ludb):
            rec = read_ludb_record(args.ludb / rid, leads=list(pairs.spec.leads))
            if rec.split != "reporting" or not rec.sinus_rhythm:
                continue
            x = rec.ecg.values
            strips.append(strips_from_record(x, pairs.spec.leads, rec.ecg.attrs["sampling_rate"],
                                             pairs.spec, start_s=0.5))
        if strips:
            xs = np.stack(strips)
            dx = decode(m0, latents(m0, xs))
            qa, qb = strip_intervals(xs, fs)["QT"], strip_intervals(dx, fs)["QT"]
            ae["ludb_rmse_mV"], ae["ludb_r"] = waveform_scores(dx, xs)
            ae["ludb_qt_within_15ms"] = float(np.mean(np.abs(qa - qb) <= 15.0))
            ae["ludb_n_records"] = len(strips)
            fl = np.zeros(feats.shape[1], np.float32)
            # LUDB inputs: dofetilide 500 ug at 2.5 h for every record
            from ecg_world.actions import make_action

            a = make_action("dofetilide", 500, "ug", 2.5, library=prep.pharm.library)
            fl = np.asarray(action_features(prep.pharm, a))
            fl = np.broadcast_to(fl, (len(xs), fl.shape[0]))
            al = Action(np.full(len(xs), int(a.drug)), np.full(len(xs), float(a.dose_mg),
                                                               np.float32),
                        np.full(len(xs), 2.5, np.float32), check=False)
            anc_l, apre_l = anchor_strips_for(xs, al, prep.pharm, pairs.spec, m0)
            amp_l = np.ptp(xs, axis=-1)[:, None, :]  # each rollout against its own input
            halluc.setdefault("reference: real strips", {})["LUDB inputs"] = rate(
                plausibility(xs[:, None], fs, amp_l))
            for name, m in models.items():
                yl = np.asarray(rollouts(m, xs, fl, key, k=args.k, steps=args.steps,
                                         anchor_post=anc_l, anchor_pre=apre_l))
                halluc[name]["LUDB inputs"] = rate(plausibility(yl, fs, amp_l))
            ludb_note = f"{len(strips)} sinus-rhythm records of the reporting split"
    args.out.mkdir(parents=True, exist_ok=True)
    tc_png = args.out / "ecg_world_model_time_course.png"
    tc = time_course(m0, pairs, te, prep.anchor_post, prep.anchor_pre, key, k=args.k,
                     steps=args.steps,
                     out_png=tc_png)
    methods = list(rows)
    metrics = list(rows[methods[0]])
    ds = xr.Dataset({"score": (("method", "metric"),
                               np.array([[rows[m][k] for k in metrics] for m in methods]))},
                    coords={"method": methods, "metric": metrics},
                    attrs={"data": str(args.data), "model": str(args.model),
                           "model_no_anchor": str(args.model_no_anchor), "k": args.k,
                           "steps": args.steps,
                           "split": f"{args.split} (held-out virtual patients)",
                           "n_pairs": int(te.size), "floor_qtcf_mae_ms": floor_qtcf,
                           "floor_pr_mae_ms": floor_pr, "autoencoder": json.dumps(ae),
                           "hallucination": json.dumps(halluc), "ludb": ludb_note,
                           "command": "python " + " ".join(sys.argv)})
    ds.to_netcdf(args.out / "ecg_world_model.nc", engine="h5netcdf")
    lines = ["# ECG world model: four methods on held-out virtual patients", "",
             f"Command: `python {' '.join(sys.argv)}`  ",
             f"{args.split.capitalize()} pairs: {te.size} "
             f"({np.unique(np.asarray(pairs.patient)[te]).size} patients), k = {args.k} "
             f"rollouts, {args.steps} DDIM steps. Floor (intervals read off the true post "
             f"strips vs the exact ones): QTcF {floor_qtcf:.1f} ms, PR {floor_pr:.1f} ms.", "",
             "| method | RMSE (mV) | r | QTcF MAE (ms) | PR MAE (ms) | QTcF 90% cover (PIT) | "
             "QTcF 5-95% band cover | QTcF CRPS (ms) | median-beat r (cycle) | "
             "cycle r >= 0.95 | median-beat r (1.7-s window) | HR MAE (bpm) | rollouts/s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for m in methods:
        v = rows[m]
        lines.append(f"| {m} | {v['rmse_mV']:.3f} | {v['r']:.3f} | {v['qtcf_mae_ms']:.1f} | "
                     f"{v['pr_mae_ms']:.1f} | {v['qtcf_cover90_pit']:.2f} | "
                     f"{v['qtcf_cover90']:.2f} | {v['qtcf_crps_ms']:.1f} "
                     f"| {v['beat_r']:.3f} | {v['beat_r_ge_095']:.2f} | "
                     f"{v['beat_r_window']:.3f} | {v['hr_mae_bpm']:.1f} "
                     f"| {v['rollouts_per_s']:.0f} |")
    lines += ["", "Hallucination rate (share of strips failing a plausibility rule; 95% "
              "Wilson CI; n strips; the failing share per rule). The reference rows apply the "
              "rules to the true post strips (default) and to the LUDB input records "
              "themselves: what the rules flag where nothing is imagined.", "",
              "| method | condition | rate | 95% CI | n | beats | order | ranges | amplitude |",
              "|---|---|---|---|---|---|---|---|---|"]
    for m, h in halluc.items():
        for c, v in h.items():
            lines.append(f"| {m} | {c} | {v['rate']:.3f} | {v['lo']:.3f}-{v['hi']:.3f} | "
                         f"{v['n']} | " + " | ".join(f"{v['fail_' + r]:.3f}" for r in
                                                     ("beats", "order", "ranges", "amplitude"))
                         + " |")
    lines += ["", f"Autoencoder (held-out synthetic strips; LUDB: {ludb_note}): "
              + ", ".join(f"{k} {v:.3g}" for k, v in ae.items()), "",
              "Rollouts at different times after the dose are drawn independently (no shared "
              "noise), so they do not form one coherent time course per patient."]
    if tc:
        lines += ["", "Time course of one held-out patient (left: the default independent "
                  "draws; right: `rollouts(..., shared_noise_across_rows=True)`, one start "
                  "noise per rollout index across the times). SD of a rollout's step-to-step "
                  "QTcF deviation from the rollout mean: " + ", ".join(
                      f"{k} {v:.1f} ms" for k, v in tc.items()) + ".", "",
                  f"![time course]({tc_png.name})"]
    (args.out / "ecg_world_model.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
