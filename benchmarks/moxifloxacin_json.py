"""A drug outside the study, entered as JSON: moxifloxacin 400 mg through the calibrated map.

The entry (``tests/data/drugs_moxifloxacin.json``: label PK, unbound fraction, hERG IC50 with
its sources) is added to the package's drugs with ``load_drugs``; nothing is refitted. The
predicted population-mean peak ddQTcF at 400 mg (effect space, 512 virtual subjects with the
calibrated PK variability) is reported at both ends of the hERG IC50 range reported in the
literature (about 29 uM, Alexandrou AJ et al., Br J Pharmacol 2006;147:905-916, at 35 C; 129
uM, Kang J et al., Mol Pharmacol 2001;59:122-126) and at the entry's value, against the
thorough-QT literature's +10 to +14 ms at 400 mg (e.g. Florian JA et al., J Clin Pharmacol
2011;51:1152-1162).

Usage:
    python benchmarks/moxifloxacin_json.py
Output: ``benchmarks/results/calibration_ecgrdvq/moxifloxacin.md``.
"""

from __future__ import annotations

import json
import pathlib
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    import numpy as np

    from ecg_world import default_calibration, load_drugs
    from ecg_world.calibration import CohortDesign, simulate_effects
    from ecg_world.ecgrdvq import compute_targets

    entry = ROOT / "tests/data/drugs_moxifloxacin.json"
    targets = compute_targets(ROOT / "tests/data/ecgrdvq/SCR-002.Clinical.Data.dev.csv")
    raw = json.loads(entry.read_text())
    rows = []
    for label, ic50 in (("29 uM (Alexandrou 2006)", 29000.0),
                        ("entry", raw["drugs"]["moxifloxacin"]["potency"]["IKr"]["ic50_nM"]),
                        ("129 uM (Kang 2001)", 129000.0)):
        doc = json.loads(entry.read_text())
        doc["drugs"]["moxifloxacin"]["potency"]["IKr"]["ic50_nM"] = ic50
        with tempfile.TemporaryDirectory() as tmp:
            f = pathlib.Path(tmp) / "moxi.json"
            f.write_text(json.dumps(doc))
            cal = default_calibration().with_library(load_drugs(f))
        design = CohortDesign(targets, cal.library, cal.variability, 512, 0, ["moxifloxacin"])
        sim = simulate_effects(design, cal.library.table(), cal.emap, cal.variability,
                               targets.base_mean.to_series(), cal.sensitivity)
        m = sim.mean(axis=2)[0, :, 0]
        j = int(np.argmax(m))
        rows.append((label, ic50, float(m[j]), float(targets.time.values[j])))
    lines = ["# Moxifloxacin 400 mg entered as JSON (not refitted)", "",
             "Predicted population-mean peak ddQTcF (effect space, committed calibration, 512 "
             "virtual subjects) on the SCR-002 time grid. Literature: +10 to +14 ms. "
             "Command: `python benchmarks/moxifloxacin_json.py`.", "",
             "| hERG IC50 | nM | peak ddQTcF (ms) | at (h) |", "|---|---|---|---|"]
    lines += [f"| {a} | {b:.0f} | {c:.1f} | {d:g} |" for a, b, c, d in rows]
    entry_peak = next(c for a, _, c, _ in rows if a == "entry")
    inside = [a for a, _, c, _ in rows if 8.0 <= c <= 16.0]
    verdict = ("met" if 8.0 <= entry_peak <= 16.0 else "not met")
    lines += ["", f"Target of the ECG issue (+8 to +16 ms at the entry's IC50): {verdict} "
              f"({entry_peak:.1f} ms). Inside +8 to +16 ms: "
              f"{', '.join(inside) if inside else 'none of the three IC50s'}."]
    if verdict == "not met":
        lines += ["", "The shared map's hERG gain is set by dofetilide and quinidine, whose "
                  "simulated peaks already fall short of the observed ones; a weak blocker "
                  "(free Cmax / IC50 below 0.2) is predicted below the literature."]
    out = ROOT / "benchmarks/results/calibration_ecgrdvq/moxifloxacin.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
