"""The run's report: ``report.md``, ``results.nc`` and figures, rebuilt from the run folder.

:func:`write_final` (at the end of :func:`~leads_jax.agent.discover`) stores what the
report needs and only a finished run knows: ``final.json`` (winner, held-out score,
stop reason, notes) and ``best_traces.nc`` (the winner's predicted traces on a
validation and a test site, and activation times, next to the data). :func:`write_report`
then reads ONLY files of the folder, so ``leads report runs/NAME`` rebuilds an
identical ``report.md`` (and the figures) without JAX work. matplotlib is imported
lazily, inside the figure functions.
"""

from __future__ import annotations

import math
import pathlib

import numpy as np
import xarray as xr

from ..fit import load_results, save_dataset
from ..measure import activation_times
from . import _io
from ._data import fit_dt
from ._observe import Observation, predict

__all__ = ["results_dataset", "write_final", "write_report"]


def _history(outp: pathlib.Path):
    cands, obs, timings, transcript = [], [], [], []
    for r in _io.finished_rounds(outp):
        rd = _io.round_dir(outp, r)
        cands += _io.read_json(rd / "structures.json")
        obs += [Observation.model_validate(x) for x in _io.read_json(rd / "metrics.json")]
        timings.append(_io.read_json(rd / "timings.json"))
        transcript += _io.read_jsonl(rd / "transcript.jsonl")
    return cands, obs, timings, transcript


def results_dataset(observations, final: dict | None = None) -> xr.Dataset:
    """Every candidate of a run as an xarray Dataset over ``candidate``."""
    final = final or {}
    obs = sorted(observations, key=lambda o: o.id)
    sel = {row["id"]: row for row in final.get("selection", [])}

    def v(name, units="", desc="", f=None):
        vals = [f(o) if f else getattr(o, name) for o in obs]
        return xr.Variable(("candidate",), np.asarray(vals), {"units": units,
                                                              "description": desc})

    ds = xr.Dataset(
        {
            "round": v("round", "1", "round the candidate was proposed in"),
            "parent": v("parent", "1", "id of the candidate it edits (-1: none)",
                        lambda o: -1 if o.parent is None else o.parent),
            "reaction": v("reaction", "", "reaction model ('' for non-grammar models)",
                          lambda o: o.reaction or ""),
            "spec": v("spec", "", "structure JSON (or the spec of a non-grammar model)"),
            "origin": v("origin", "", "actions that produced it"),
            "n_params": v("n_params", "1", "number of fitted scalars"),
            "closure_rms": v("closure_rms", "state/ms", "RMS of the closures' contribution"),
            "stable": v("stable", "", "stability audit and rollout verdict",
                        lambda o: int(o.stable)),
            "train_rmse": v("train_rmse", "mV", "training sites, training horizon"),
            "val_rmse": v("val_rmse", "mV", "validation sites, training horizon (selection)"),
            "heldout_rmse": v("heldout_rmse", "mV", "validation sites beyond the training "
                              "horizon"),
            "ratio": v("ratio", "1", "held-out / train RMSE"),
            "verdict": v("verdict", "", "generalisation verdict"),
            "cv_model": v("cv_model", "cm/ms", "median conduction velocity of the model"),
            "apd_model": v("apd_model", "ms", "median APD90 of the model"),
            "within_noise": v("within_noise", "", "validation RMSE within noise of the best",
                              lambda o: int(bool(sel.get(o.id, {}).get("within_noise")))),
            "selected": v("selected", "", "the winner", lambda o: int(o.id == final.get(
                "best_id", -2))),
        },
        coords={"candidate": np.asarray([o.id for o in obs], dtype=int)},
        attrs={k: (str(vv) if not isinstance(vv, int | float | str) else vv)
               for k, vv in {
                   "best_id": final.get("best_id", -1) if final.get("best_id") is not None
                   else -1,
                   "test_rmse_mV": final.get("test_rmse", math.nan),
                   "stop_reason": final.get("stop_reason", ""),
                   "method": final.get("method", ""), "policy": final.get("policy", ""),
                   "selection_rule": final.get("selection_rule", ""),
                   "description": "LEADS discovery run: every fitted candidate",
               }.items()},
    )
    return ds


def write_final(outp, res, d, config, sel) -> None:
    """``final.json``, ``results.nc`` and ``best_traces.nc`` of a finished run."""
    outp = pathlib.Path(outp)
    final = {
        "best_id": res.best_id, "test_rmse": res.test_rmse, "stop_reason": res.stop_reason,
        "rounds": res.rounds, "method": res.method, "policy": res.policy,
        "notes": res.notes, "selection": res.selection,
        "noise_std_mV": d.noise_std, "noise_source": d.noise_source,
        "true_structure": d.true_structure,
        "selection_rule": f"simplest (fewest fitted scalars) among stable candidates with "
        f"val_rmse <= best + max({sel.rel_tol:g} * best, {sel.noise_tol:g} * noise); noise = "
        f"{d.noise_std:.4g} mV ({d.noise_source})",
        "best": (res.best.to_dict() if hasattr(res.best, "to_dict") else res.best),
    }
    _io.write_json(outp / "final.json", final)
    save_dataset(results_dataset(res.history, final), outp / "results.nc")
    if res.model is None:
        return
    dt = fit_dt(config, d, res.model)
    parts = {}
    for name, split in (("val", d.val), ("test", d.test)):
        if split is None:
            continue
        pred, _, _, _ = predict([res.model], d.geometry, split.stimuli, split.ts,
                                solver=config.solver, dt=dt, min_bucket=config.min_bucket)
        parts[name] = (pred[0][0], split.observed[0], split.ts)
    data_vars = {}
    for name, (p, o, ts) in parts.items():
        data_vars[f"{name}_model"] = xr.Variable(("time", "node"), np.asarray(p, float),
                                                 {"units": "mV"})
        data_vars[f"{name}_data"] = xr.Variable(("time", "node"), np.asarray(o, float),
                                                {"units": "mV"})
        for tag, x in (("model", p), ("data", o)):
            act = activation_times(np.nan_to_num(np.asarray(x, float), nan=-1e3), ts).values
            data_vars[f"{name}_act_{tag}"] = xr.Variable(("node",), act, {"units": "ms"})
    ts0 = next(iter(parts.values()))[2]
    ds = xr.Dataset(data_vars, coords={"time": ("time", ts0, {"units": "ms"}),
                                       "node": np.arange(d.geometry.n_nodes)})
    ds["vertices"] = xr.Variable(("node", "xyz"), np.asarray(d.geometry.vertices, float))
    if d.geometry.faces is not None:
        ds["faces"] = xr.Variable(("face", "corner"), np.asarray(d.geometry.faces, int))
    save_dataset(ds, outp / "best_traces.nc")


def _f(x, nd=4) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float):
        if math.isnan(x):
            return "n/a"
        if math.isinf(x):
            return "inf"
        return f"{x:.{nd}g}"
    return str(x)


def write_report(outp) -> dict:
    """Write ``report.md`` and ``figures/`` from the files of run folder `outp`.
    Returns ``{name: path}``."""
    outp = pathlib.Path(outp)
    run = _io.read_json(outp / "run.json")
    final = _io.read_json(outp / "final.json") if (outp / "final.json").exists() else {}
    cands, obs, timings, transcript = _history(outp)
    figs = _figures(outp, obs, final)
    by_id = {o.id: o for o in obs}
    best = by_id.get(final.get("best_id")) if final.get("best_id") is not None else None
    L = [f"# LEADS discovery run: {outp.name}", ""]
    L.append(f"- method: **{run['method']}**, policy: **{run['policy']}**")
    L.append(f"- data: {run['data']} -- {run['data_summary']}")
    b = run["budget"]
    L.append(f"- budget: {b['rounds']} rounds, {b['candidates']} candidates, {b['k']} per "
             f"round, wall time {_f(b['seconds'])} s, patience {_f(b['patience'])}; fitting: "
             f"{run['fit_config']['steps']} steps, lr {run['fit_config']['learning_rate']}, "
             f"{run['fit_config']['restarts']} restart(s)")
    L.append(f"- rounds run: {len(timings)}; candidates fitted: {len(obs)}; stopped: "
             f"{final.get('stop_reason', 'not finished')}")
    for n in final.get("notes", []):
        L.append(f"- note: {n}")
    L += ["", "## Selected model", ""]
    if best is None:
        L.append("No stable candidate.")
    else:
        L.append(f"Candidate **#{best.id}** (round {best.round}): validation RMSE "
                 f"{_f(best.val_rmse)} mV, {best.n_params} fitted scalars, {best.verdict} "
                 f"(held-out/train {_f(best.ratio)}).")
        L.append("")
        L.append(f"**Held-out test RMSE (test pacing sites, whole record; never used by "
                 f"selection): {_f(final.get('test_rmse'))} mV**")
        L += ["", "```", best.formula, "```", ""]
        if best.params:
            L.append("Fitted parameters: " + ", ".join(f"{k} = {_f(v)}" for k, v in
                                                        sorted(best.params.items())))
        ts = final.get("true_structure") or ""
        if ts:
            import json

            truth = json.loads(ts)
            L.append("")
            L.append(f"Data generated by: {truth.get('reaction')} "
                     f"({truth.get('diffusion', {}).get('kind')}); selected reaction: "
                     f"{best.reaction or 'n/a'} -> "
                     f"{'recovered' if best.reaction == truth.get('reaction') else 'differs'}")
    L += ["", f"Selection rule: {final.get('selection_rule', '')}", ""]
    L += ["## Best so far (stable candidates by validation RMSE)", "",
          "| id | round | model | trainable | params | train | val | held-out | verdict | "
          "within noise | selected |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in final.get("selection", [])[:10]:
        o = by_id[row["id"]]
        trainable = next((x[len("trainable: "):] for x in o.formula.splitlines()
                          if x.startswith("trainable:")), "")
        L.append(f"| {o.id} | {o.round} | {o.reaction or 'model'} | {trainable} | "
                 f"{o.n_params} | {_f(o.train_rmse)} | {_f(o.val_rmse)} | "
                 f"{_f(o.heldout_rmse)} | {o.verdict} | {'yes' if row['within_noise'] else ''}"
                 f" | {'**yes**' if row['selected'] else ''} |")
    L += ["", "## Rounds", "", "| round | candidates | fit s | compile s (fit, wall) | train s | "
          "observe s | compilations (programs / training) |", "|---|---|---|---|---|---|---|"]
    for t in timings:
        L.append(f"| {t['round']} | {t['n_candidates']} | {_f(t['fit_seconds'], 3)} | "
                 f"{_f(compile_wall_seconds(t, 'fit'), 3)} | {_f(t['train_seconds'], 3)} | "
                 f"{_f(t['observe_seconds'], 3)} | {t['fit_n_programs'] + t['observe_n_programs']}"
                 f" / {t['fit_n_train_programs']} |")
    tot_c = sum(compile_wall_seconds(t) for t in timings)
    tot_cpu = sum(t["fit_compile_seconds"] + t["observe_compile_seconds"] for t in timings)
    tot_t = sum(t["train_seconds"] for t in timings)
    L.append("")
    L.append(f"Total: compile {_f(tot_c, 3)} s, train {_f(tot_t, 3)} s. Compile seconds are "
             "the wall time during which at least one of JAX's backend compilations ran "
             "(a round's topology groups compile concurrently, in threads; summed over the "
             f"threads: {_f(tot_cpu, 3)} s); train = fit wall time - its compile wall time; "
             "'training' programs count one per newly compiled topology group.")
    L += ["", "## Reflections", ""]
    for t in transcript:
        if t.get("event") == "reflect":
            L.append(f"- round {t['round']}: " + t["text"].replace("\n", " / "))
    rej = [t for t in transcript if t.get("event") == "rejected"]
    fb = [t for t in transcript if t.get("event") == "fallback"]
    L += ["", f"## Rejected proposals ({len(rej)}) and fallbacks ({len(fb)})", ""]
    for t in rej[:30]:
        L.append(f"- round {t['round']}: {t.get('rule', '')} {t.get('field', '')}: "
                 f"{t.get('message', t.get('reason', ''))}")
    for t in fb:
        L.append(f"- round {t['round']}: fallback: {t['reason']}")
    L += ["", "## Figures", ""]
    for name, p in figs.items():
        L.append(f"![{name}](figures/{pathlib.Path(p).name})")
    text = "\n".join(L) + "\n"
    _io.atomic_write_text(outp / "report.md", text)
    return {"report": outp / "report.md", "results": outp / "results.nc", **figs}


def _figures(outp: pathlib.Path, obs, final) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figdir = outp / "figures"
    figdir.mkdir(exist_ok=True)
    out = {}
    # search tree with scores
    fig, ax = plt.subplots(figsize=(7, 4))
    by_id = {o.id: o for o in obs}
    def _y(o):
        return o.val_rmse if math.isfinite(o.val_rmse) and o.val_rmse > 0 else np.nan

    for o in obs:
        y = _y(o)
        if o.parent is not None and o.parent in by_id:
            ax.plot([by_id[o.parent].round, o.round], [_y(by_id[o.parent]), y], color="0.7",
                    lw=0.8, zorder=1)
        if math.isfinite(y):
            ax.scatter([o.round], [y], c="C0" if o.stable else "C3", s=18, zorder=2)
            ax.annotate(f"#{o.id}", (o.round, y), fontsize=6, xytext=(3, 2),
                        textcoords="offset points")
    if final.get("best_id") is not None and final["best_id"] in by_id:
        b = by_id[final["best_id"]]
        ax.scatter([b.round], [b.val_rmse], marker="*", s=140, c="C2", zorder=3,
                   label="selected")
        ax.legend(fontsize=7)
    finite = [o.val_rmse for o in obs if math.isfinite(o.val_rmse) and o.val_rmse > 0]
    if finite:
        ax.set_yscale("log")
    else:
        ax.text(0.5, 0.5, "no finite validation error", transform=ax.transAxes,
                ha="center")
    ax.set_xlabel("round")
    ax.set_ylabel("validation RMSE (mV)")
    ax.set_title("search tree (edges: parent -> child; red: unstable)", fontsize=9)
    fig.tight_layout()
    out["search_tree"] = figdir / "search_tree.png"
    fig.savefig(out["search_tree"], dpi=100, metadata={"Software": None})
    plt.close(fig)
    # error by model family
    fams: dict = {}
    for o in obs:
        fam = o.reaction or o.spec[:20]
        if o.stable and math.isfinite(o.val_rmse):
            fams[fam] = min(fams.get(fam, math.inf), o.val_rmse)
    if fams:
        fig, ax = plt.subplots(figsize=(6, 3))
        names = sorted(fams, key=fams.get)
        ax.bar(range(len(names)), [fams[n] for n in names], color="C0")
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=7)
        ax.set_ylabel("best validation RMSE (mV)")
        ax.set_title(f"error by model family (method {final.get('method', '')})", fontsize=9)
        fig.tight_layout()
        out["error_by_family"] = figdir / "error_by_family.png"
        fig.savefig(out["error_by_family"], dpi=100, metadata={"Software": None})
        plt.close(fig)
    tr = outp / "best_traces.nc"
    if tr.exists():
        ds = load_results(tr)
        split = "test" if "test_model" in ds else "val"
        fig, ax = plt.subplots(figsize=(7, 3.5))
        n = ds.sizes["node"]
        for j, node in enumerate(sorted({0, n // 2, n - 1})):
            ax.plot(ds["time"], ds[f"{split}_data"][:, node], color=f"C{j}", lw=0.8,
                    label=f"data node {node}")
            ax.plot(ds["time"], ds[f"{split}_model"][:, node], "--", color=f"C{j}", lw=1.0,
                    label=f"model node {node}")
        ax.set_xlabel("time (ms)")
        ax.set_ylabel("V (mV)")
        ax.set_title(f"selected model vs data ({split} site)", fontsize=9)
        ax.legend(fontsize=6, ncol=3)
        fig.tight_layout()
        out["best_traces"] = figdir / "best_traces.png"
        fig.savefig(out["best_traces"], dpi=100, metadata={"Software": None})
        plt.close(fig)
        fig, axes = plt.subplots(1, 2, figsize=(8, 3.2), sharey=True)
        xyz = ds["vertices"].values
        for ax, tag in zip(axes, ("data", "model"), strict=True):
            act = ds[f"{split}_act_{tag}"].values
            if "faces" in ds:
                tpc = ax.tripcolor(xyz[:, 0], xyz[:, 1], ds["faces"].values, act,
                                   shading="gouraud")
                fig.colorbar(tpc, ax=ax, label="ms")
            else:
                ax.plot(xyz[:, 0], act, "o-", ms=3)
                ax.set_xlabel("x (cm)")
            ax.set_title(f"activation time, {'truth' if tag == 'data' else 'model'}",
                         fontsize=9)
        axes[0].set_ylabel("ms" if "faces" not in ds else "y (cm)")
        fig.tight_layout()
        out["activation_map"] = figdir / "activation_map.png"
        fig.savefig(out["activation_map"], dpi=100, metadata={"Software": None})
        plt.close(fig)
    return out


def compile_wall_seconds(t: dict, phase: str = "both") -> float:
    """A round's compile wall time in `phase` (``"fit"``, ``"observe"`` or ``"both"``)
    from its timing record; rounds written before it was recorded give the sum over
    threads."""
    phases = ("fit", "observe") if phase == "both" else (phase,)
    return float(sum(t.get(f"{ph}_compile_wall_seconds", t[f"{ph}_compile_seconds"])
                     for ph in phases))
