"""LUDB records with their cardiologists' delineation, and the tuning/reporting split.

The Lobachevsky University Electrocardiography Database (LUDB v1.0.1, PhysioNet, Open Data
Commons Attribution License; Kalyakulina AI, Yusipov II, Moskalenko VA, et al. "LUDB: a new
open-access validation tool for electrocardiogram delineation algorithms", IEEE Access
2020;8:186181-186190) holds 10-s, 500-Hz, 12-lead ECGs with manual P, QRS and T onsets, peaks
and offsets, annotated **per lead**: one WFDB annotation file per lead, named by the lead
(``1.ii`` for lead II of record 1). Symbols come in triplets ``(`` onset, peak (``p`` P wave,
``N`` QRS, ``t`` T wave), ``)`` offset.

:func:`read_ludb_record` returns the signals (:func:`ecg_world.records.read_record`, lead x
time in mV) and the annotations as an ``xarray.Dataset`` over (lead, beat). A *beat* of a lead
is one of its annotated QRS complexes; the P wave of a beat is the last P wave whose peak lies
between the previous QRS peak and this QRS onset (the conducted one), its T wave the first T
wave whose peak lies between this QRS offset and the next QRS peak. Robust to the traps of the
database: only the span between a lead's first and last annotation is annotated (the first and
last beats are not, ``annotated_start``/``annotated_stop``); a wave can be missing in a lead (a
P wave in atrial fibrillation, a T wave at the end): NaN; a triplet with a missing onset or
offset gives NaN for that point only; unknown symbols are skipped; a lead without annotation
file is all-NaN with ``beat_mask`` False and listed in ``attrs["leads_without_annotations"]``;
the sampling rate is read from the header. Rhythm, pacing and diagnoses come from the record's
own header comments (``#Rhythm: Sinus rhythm.``), not from a table of the shipped records.

:func:`ludb_split` assigns any record id (shipped or not) to ``"tuning"`` or ``"reporting"``
by a seeded hash, so that a method is tuned on one part and reported on the other, and records
added later fall into a split deterministically without a fixed list.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
import re

import numpy as np
import xarray as xr

from .records import _record_base, canonical_lead_name, read_record

__all__ = [
    "FIDUCIALS",
    "LudbRecord",
    "SPLIT_SEED",
    "TUNING_PERCENT",
    "is_sinus_rhythm",
    "ludb_record_ids",
    "ludb_split",
    "read_ludb_annotations",
    "read_ludb_record",
]

#: fiducial points per beat, in the order of the annotation triplets
FIDUCIALS = (
    "p_onset", "p_peak", "p_offset",
    "qrs_onset", "qrs_peak", "qrs_offset",
    "t_onset", "t_peak", "t_offset",
)
_WAVE = {"p": "p", "N": "qrs", "t": "t"}

#: seed of the tuning/reporting split (fixed: changing it changes which records are reported)
SPLIT_SEED = 0
#: share of record ids (percent of the hash range) that go to the tuning split; the rest,
#: at least half, is the reporting split
TUNING_PERCENT = 40


def _normalise_id(record_id) -> str:
    rid = pathlib.Path(str(record_id).strip()).name
    rid = re.sub(r"\.hea$", "", rid)
    return str(int(rid)) if rid.isdigit() else rid


def ludb_split(record_id, *, seed: int = SPLIT_SEED, tuning_percent: int = TUNING_PERCENT) -> str:
    """``"tuning"`` or ``"reporting"``: the split of a LUDB record, by a seeded hash of its id.

    ``int(sha256(f"{seed}:{id}").hexdigest(), 16) % 100 < tuning_percent`` -> ``"tuning"``.
    ``id`` is the record name without directory or extension, digits without leading zeros
    (``1``, ``"001"`` and ``"ludb/1.hea"`` are the same record). Any id, including records that
    do not ship with the project, falls into one split deterministically; with the default 40 %
    the reporting split holds at least half of any large set of records in expectation. Used by
    ``benchmarks/delineation_ludb.py`` for tuning and reporting alike.
    """
    if not 0 <= int(tuning_percent) <= 50:
        raise ValueError(
            f"tuning_percent must be in [0, 50] (at least half reported), got {tuning_percent}"
        )
    h = hashlib.sha256(f"{int(seed)}:{_normalise_id(record_id)}".encode()).hexdigest()
    return "tuning" if int(h, 16) % 100 < int(tuning_percent) else "reporting"


def ludb_record_ids(directory: str | os.PathLike) -> list[str]:
    """The record ids of a LUDB directory (every ``*.hea`` there), numerically sorted."""
    d = pathlib.Path(directory)
    if not d.is_dir():
        raise FileNotFoundError(f"no LUDB directory at {str(d)!r}")
    ids = [p.stem for p in d.glob("*.hea")]
    return sorted(ids, key=lambda s: (not s.isdigit(), int(s) if s.isdigit() else 0, s))


def _parse_header_comments(comments: list[str]) -> dict:
    info: dict = {"age": "", "sex": "", "rhythm": "", "diagnoses": []}
    for line in comments:
        s = line.strip()
        m = re.match(r"<(\w+)>:\s*(.*)", s)
        if m:
            key = m.group(1).lower()
            if key in ("age", "sex"):
                info[key] = m.group(2).strip()
            continue
        if not s:
            continue
        if s.lower().startswith("rhythm:"):
            info["rhythm"] = (info["rhythm"] + "; " if info["rhythm"] else "") + s[7:].strip(
                " ."
            )
        else:
            info["diagnoses"].append(s.rstrip(" ."))
    return info


def is_sinus_rhythm(rhythm: str, diagnoses=()) -> bool:
    """True if every rhythm statement is sinus (rhythm, bradycardia, tachycardia, arrhythmia)
    and no statement mentions fibrillation, flutter, a pacemaker or pacing (paced and AF
    records have no meaningful PR)."""
    statements = [s.strip().lower() for s in re.split(r"[;\n]", rhythm or "") if s.strip()]
    if not statements or not all(s.startswith("sinus") for s in statements):
        return False
    text = " ".join([*statements, *(d.lower() for d in diagnoses)])
    return not any(w in text for w in ("fibrillation", "flutter", "pacing", "pacemaker", "paced"))


def _lead_beats(samples: np.ndarray, symbols: list[str]) -> dict[str, np.ndarray]:
    """Per-QRS fiducials (samples, NaN = not annotated) of one lead's annotation."""
    waves = {"p": [], "qrs": [], "t": []}
    for i, sym in enumerate(symbols):
        if sym not in _WAVE:
            continue
        on = float(samples[i - 1]) if i > 0 and symbols[i - 1] == "(" else np.nan
        off = float(samples[i + 1]) if i + 1 < len(symbols) and symbols[i + 1] == ")" else np.nan
        waves[_WAVE[sym]].append((on, float(samples[i]), off))
    qrs = sorted(waves["qrs"], key=lambda w: w[1])
    out = {k: np.full(len(qrs), np.nan) for k in FIDUCIALS}
    p = sorted(waves["p"], key=lambda w: w[1])
    t = sorted(waves["t"], key=lambda w: w[1])
    for b, (on, pk, off) in enumerate(qrs):
        out["qrs_onset"][b], out["qrs_peak"][b], out["qrs_offset"][b] = on, pk, off
        prev_pk = qrs[b - 1][1] if b > 0 else -np.inf
        next_pk = qrs[b + 1][1] if b + 1 < len(qrs) else np.inf
        start = on if np.isfinite(on) else pk
        stop = off if np.isfinite(off) else pk
        cand = [w for w in p if prev_pk < w[1] < start]
        if cand:
            out["p_onset"][b], out["p_peak"][b], out["p_offset"][b] = cand[-1]
        cand = [w for w in t if stop < w[1] < next_pk]
        if cand:
            out["t_onset"][b], out["t_peak"][b], out["t_offset"][b] = cand[0]
    return out


def read_ludb_annotations(path: str | os.PathLike, leads=None) -> xr.Dataset:
    """The cardiologists' delineation of a LUDB record as a Dataset over (lead, beat).

    Variables: each of :data:`FIDUCIALS` in samples (float, NaN = not annotated) and the same
    with suffix ``_ms`` in ms from the record start; ``beat_mask``; ``annotated_start`` /
    ``annotated_stop`` (samples: the first and last annotation of the lead; only beats between
    them are annotated). ``attrs``: sampling rate, rhythm, sinus flag, diagnoses, age, sex.
    """
    import wfdb

    base = _record_base(path)
    header = wfdb.rdheader(str(base))
    fs = float(header.fs)
    names = list(header.sig_name)
    if leads is not None:
        wanted = [canonical_lead_name(n) for n in leads]
        canon = [canonical_lead_name(n) for n in names]
        missing = [n for n, c in zip(leads, wanted, strict=True) if c not in canon]
        if missing:
            raise KeyError(f"record {base.name!r} has no lead {missing}; it has {names}")
        names = [names[canon.index(c)] for c in wanted]
    per_lead, spans, without = [], [], []
    for name in names:
        ann_path = pathlib.Path(f"{base}.{name}")
        if not ann_path.is_file():
            without.append(canonical_lead_name(name))
            per_lead.append({k: np.zeros(0) for k in FIDUCIALS})
            spans.append((np.nan, np.nan))
            continue
        try:
            ann = wfdb.rdann(str(base), name)
        except Exception as err:  # wfdb raises assorted errors on a damaged file
            raise ValueError(
                f"LUDB annotation file {str(ann_path)!r} cannot be read ({err}); it is "
                "damaged or truncated"
            ) from err
        samples = np.asarray(ann.sample, dtype=np.int64)
        per_lead.append(_lead_beats(samples, list(ann.symbol)))
        spans.append((float(samples.min()), float(samples.max())) if samples.size else
                     (np.nan, np.nan))
    n_beat = max([len(d["qrs_peak"]) for d in per_lead] + [0])
    data = {}
    for k in FIDUCIALS:
        arr = np.full((len(names), n_beat), np.nan)
        for i, d in enumerate(per_lead):
            arr[i, : len(d[k])] = d[k]
        data[k] = arr
    mask = np.zeros((len(names), n_beat), dtype=bool)
    for i, d in enumerate(per_lead):
        mask[i, : len(d["qrs_peak"])] = True
    info = _parse_header_comments(list(header.comments or []))
    lead_c = [canonical_lead_name(n) for n in names]
    ds = xr.Dataset(
        coords={"lead": lead_c, "lead_original": ("lead", names), "beat": np.arange(n_beat)}
    )
    ds["beat_mask"] = (("lead", "beat"), mask)
    for k in FIDUCIALS:
        ds[k] = (("lead", "beat"), data[k], {"units": "samples"})
    for k in FIDUCIALS:
        ds[f"{k}_ms"] = (("lead", "beat"), data[k] * 1000.0 / fs, {"units": "ms"})
    ds["annotated_start"] = ("lead", [s[0] for s in spans], {"units": "samples"})
    ds["annotated_stop"] = ("lead", [s[1] for s in spans], {"units": "samples"})
    ds.attrs.update(
        record_name=base.name, sampling_rate=fs, rhythm=info["rhythm"],
        sinus_rhythm=int(is_sinus_rhythm(info["rhythm"], info["diagnoses"])),
        diagnoses="\n".join(info["diagnoses"]), age=info["age"], sex=info["sex"],
        leads_without_annotations=",".join(without),
        source="LUDB v1.0.1 (PhysioNet, ODC-By; Kalyakulina et al. IEEE Access 2020;8:186181)",
    )
    return ds


@dataclasses.dataclass(frozen=True)
class LudbRecord:
    """A LUDB record: ``ecg`` (lead, time) in mV and its ``annotations`` (lead, beat)."""

    ecg: xr.DataArray
    annotations: xr.Dataset

    @property
    def record_id(self) -> str:
        return str(self.annotations.attrs["record_name"])

    @property
    def split(self) -> str:
        return ludb_split(self.record_id)

    @property
    def sinus_rhythm(self) -> bool:
        return bool(self.annotations.attrs["sinus_rhythm"])


def read_ludb_record(path: str | os.PathLike, leads=None) -> LudbRecord:
    """Read a LUDB record (``path`` without extension, or its ``.hea``): signals and annotations.

    ``leads``: names to keep (aliases: ``"II"`` finds ``ii``). See the module docstring.
    """
    ecg = read_record(path, leads=leads)
    ann = read_ludb_annotations(path, leads=leads)
    return LudbRecord(ecg=ecg, annotations=ann)


#: the McSharry waves whose amplitudes :func:`wave_amplitudes` reads, in the kernel's order
WAVES = ("P", "Q", "R", "S", "T")


def wave_amplitudes(record: LudbRecord) -> xr.DataArray:
    """Median amplitude (mV) of the P, Q, R, S and T waves per lead of one record, read at the
    cardiologists' marks: relative to the beat's PR-segment level (median between P offset
    and QRS onset; the QRS onset sample where no P wave is marked), P the extreme between P
    onset and offset, R the maximum between QRS onset and offset, Q and S the minima before
    and after it, T the value at the T peak. NaN where a lead has no such wave marked."""
    x = np.asarray(record.ecg.values, float)
    a = record.annotations
    out = np.full((a.sizes["lead"], len(WAVES)), np.nan)
    for li in range(a.sizes["lead"]):
        v = x[li]
        po, pf, qo, qf, tp = (a[k].values[li] for k in
                              ("p_onset", "p_offset", "qrs_onset", "qrs_offset", "t_peak"))
        vals = {w: [] for w in WAVES}
        for b in range(a.sizes["beat"]):
            if not (np.isfinite(qo[b]) and np.isfinite(qf[b])):
                continue
            i0, i1 = int(qo[b]), int(qf[b])
            has_p = np.isfinite(po[b]) and np.isfinite(pf[b]) and i0 - int(pf[b]) > 2
            base = np.median(v[int(pf[b]):i0]) if has_p else v[i0]
            seg = v[i0:i1 + 1] - base
            k = int(np.argmax(seg))
            vals["R"].append(seg[k])
            vals["Q"].append(seg[:k + 1].min())
            vals["S"].append(seg[k:].min())
            if has_p:
                ps = v[int(po[b]):int(pf[b]) + 1] - base
                vals["P"].append(ps[int(np.argmax(np.abs(ps)))])
            if np.isfinite(tp[b]):
                vals["T"].append(v[int(tp[b])] - base)
        out[li] = [np.median(vals[w]) if vals[w] else np.nan for w in WAVES]
    return xr.DataArray(out, dims=("lead", "wave"),
                        coords={"lead": a.lead.values, "wave": list(WAVES)},
                        attrs={"units": "mV", "record_name": record.record_id})
