"""The catalog's documentation, rendered from the code into the agent's context.

Everything here is read from :meth:`leads_jax.structure.Catalog.metadata` (the reaction
classes' ``ParamSpec`` s, equations and citations, the diffusion and closure metadata)
and from the grammar's rule list, so a prompt never names a term that does not exist,
and never misses one that does.
"""

from __future__ import annotations

import json

from ..structure import Catalog
from ..structure import _validate as _rules

__all__ = ["grammar_rules", "render_catalog_doc"]


def grammar_rules() -> list[str]:
    """The grammar's validation rules, one line each (from ``leads_jax.structure``)."""
    doc = _rules.__doc__ or ""
    out, cur = [], None
    for line in doc.splitlines():
        t = line.strip()
        if t.startswith("- ``"):
            if cur:
                out.append(cur)
            cur = t[2:].replace("``", "")
        elif cur is not None and t:
            cur += " " + t.replace("``", "")
        elif cur is not None and not t:
            out.append(cur)
            cur = None
    if cur:
        out.append(cur)
    return out


def _fmt(x) -> str:
    return f"{x:.6g}" if isinstance(x, float) else str(x)


def render_catalog_doc(catalog: Catalog | None = None) -> str:
    """Markdown description of every term of `catalog` (default: the full catalog):
    each reaction model (summary, states, gates, equations, every parameter with its
    physical role, units, bounds and default, citation), each diffusion operator, each
    closure kind, the parameter modes and the grammar rules."""
    cat = Catalog.default() if catalog is None else catalog
    meta = cat.metadata()
    lines = ["# Catalog of terms", "", "## Reaction models (cell models)", ""]
    for name, m in meta["reactions"].items():
        lines.append(f"### {name}")
        lines.append(m["summary"])
        gates = ", ".join(m["gate_states"]) or "none"
        lines.append(f"- states: {', '.join(m['states'])} (voltage-like: {m['voltage_state']}; "
                     f"gate states: {gates})")
        lines.append(f"- observed potential: {m['observed']['map']} mV")
        lines.append("- equations:")
        lines += [f"    {eq}" for eq in m["equations"].splitlines()]
        lines.append("- parameters (name: role [units], bounds (lower, upper), default):")
        for p in m["parameters"]:
            lines.append(f"  - {p['name']}: {p['role']} [{p['units']}], "
                         f"({_fmt(p['lower'])}, {_fmt(p['upper'])}), default {_fmt(p['default'])}")
        lines.append(f"- stable explicit step: {m['stable_dt_ms']} ms")
        lines.append(f"- citation: {m['citation']}")
        lines.append("")
    lines += ["## Diffusion operators (set_diffusion)", ""]
    for kind, d in meta["diffusion"].items():
        lines.append(f"### {kind}")
        lines.append(f"- form: {d['form']}")
        if d.get("role"):
            lines.append(f"- role: {d['role']}")
        for p in d.get("parameters", []):
            lines.append(f"- parameter {p['name']}: {p['role']} [{p['units']}], "
                         f"({_fmt(p['lower'])}, {_fmt(p['upper'])}), default {_fmt(p['default'])}")
        if d.get("bounds"):
            lines.append(f"- bounds: {json.dumps(d['bounds'])}")
        lines.append("")
    lines += ["## Closures (add_closure / resize_closure / remove_closure)", ""]
    for kind, c in meta["closures"].items():
        lines.append(f"### {kind}")
        for k in ("form", "role", "inputs"):
            if c.get(k):
                lines.append(f"- {k}: {c[k]}")
        if c.get("bounds"):
            lines.append(f"- bounds: {json.dumps(c['bounds'])}")
        lines.append("")
    lines += ["## Parameter modes (set_parameter)", ""]
    mode_doc = {
        "fixed": "held at its value (catalog default unless given); not fitted",
        "free": "one fitted value for the whole tissue",
        "per-region": "one fitted value per mesh region (heterogeneity, e.g. a scar)",
        "per-node": "one fitted value per node (most flexible, most parameters)",
    }
    for mode in meta["parameter_modes"]:
        lines.append(f"- {mode}: {mode_doc.get(mode, '')}")
    lines += ["", "## Grammar rules (a proposal breaking one is rejected with its name)", ""]
    lines += [f"- {r}" for r in grammar_rules()]
    return "\n".join(lines) + "\n"
