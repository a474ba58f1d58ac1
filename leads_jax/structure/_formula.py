"""Readable equations of a structure, in plain text and LaTeX."""

from __future__ import annotations

from ._validate import reaction_class

_MODE_TEXT = {"free": "free", "per-region": "per region", "per-node": "per node"}


def _fmt(v: float) -> str:
    return f"{v:.6g}"


def _latex_name(name: str) -> str:
    greek = {"eps0": r"\epsilon_0", "mu1": r"\mu_1", "mu2": r"\mu_2", "tau": r"\tau"}
    if name in greek:
        return greek[name]
    if "_" in name:
        head, tail = name.split("_", 1)
        if head in ("tau", "theta", "mu", "alpha", "beta", "gamma", "u", "k"):
            head = "\\" + head if len(head) > 2 else head
            return f"{head}_{{\\mathrm{{{tail.replace('_', ',')}}}}}"
        return r"\mathrm{" + name.replace("_", r"\_") + "}"
    return name


def _latex_param(p) -> str:
    n = _latex_name(p.name)
    if p.mode == "free":
        return rf"\hat{{{n}}}"
    if p.mode == "per-region":
        return rf"\hat{{{n}}}_{{r(x)}}"
    if p.mode == "per-node":
        return rf"\hat{{{n}}}(x)"
    return rf"{n}={_fmt(p.value)}"


def formula(structure, latex: bool = False) -> str:
    """Equations of the canonical form of `structure`, one line per state.

    Plain text marks trainable parameters by mode (``free``, ``per region``, ``per node``)
    and lists fixed ones with their values; LaTeX hats trainable parameters, with
    ``_{r(x)}`` for per-region and ``(x)`` for per-node ones.
    """
    s = structure.canonical()
    cls = reaction_class(s.reaction)
    states = cls.state_names
    u = states[0]
    args = ", ".join(states)
    closures = {c.target: c for c in s.closures}
    d = s.diffusion
    lines = []
    for x in states:
        c = closures.get(x)
        if latex:
            lhs = rf"\frac{{d{_latex_name(x)}}}{{dt}}"
            if c is not None and c.kind == "gate":
                terms = [
                    rf"\frac{{g^{{\mathrm{{NN}}}}_{{\infty}}({u}) - {x}}}"
                    rf"{{\tau^{{\mathrm{{NN}}}}({u})}}"
                ]
            else:
                terms = [rf"f^{{\mathrm{{{cls.name}}}}}_{{{_latex_name(x)}}}({args};\,\theta)"]
            if c is not None and c.kind == "additive":
                inputs = args + (r",\, \bar{\Delta} " + u if c.neighbours else "")
                terms.append(
                    rf"s_{{{_latex_name(x)}}} \tanh\!\big(\mathrm{{NN}}_{{{_latex_name(x)}}}"
                    rf"({inputs})\big)"
                )
            if x == u:
                if d.kind == "laplacian":
                    terms.append(rf"\nabla\cdot(D\,\nabla {u})")
                elif d.kind == "neural-graph":
                    sigma = rf"\sigma^{{\mathrm{{NN}}}}({u}_i,{u}_j)"
                    terms.append(rf"\nabla\cdot\big(D\,{sigma}\,\nabla {u}\big)")
                terms.append(r"I_{\mathrm{stim}}(t)")
            lines.append(lhs + " &= " + " + ".join(terms))
        else:
            lhs = f"d{x}/dt"
            if c is not None and c.kind == "gate":
                terms = [f"(g_inf_NN({u}) - {x}) / tau_NN({u})"]
            else:
                terms = [f"f_{x}[{cls.name}]({args})"]
            if c is not None and c.kind == "additive":
                inputs = args + (f", mean_nbr({u}) - {u}" if c.neighbours else "")
                terms.append(
                    f"s_{x}*tanh(NN_{x}({inputs})) [|.| <= {_fmt(c.max_rate)}/ms]"
                )
            if x == u:
                if d.kind == "laplacian":
                    terms.append(f"div(D grad {u})")
                elif d.kind == "neural-graph":
                    terms.append(f"div(D sigma_NN({u}_i, {u}_j) grad {u})")
                terms.append("I_stim(t)")
            lines.append(f"{lhs} = " + " + ".join(terms))

    trainable = [p for p in s.parameters if p.mode != "fixed"]
    fixed = [p for p in s.parameters if p.mode == "fixed"]
    if latex:
        theta = ", ".join(_latex_param(p) for p in s.parameters)
        lines.append(rf"\theta &= ({theta})")
        return "\\begin{aligned}\n" + " \\\\\n".join(lines) + "\n\\end{aligned}"
    learnt = ", ".join(f"{p.name} ({_MODE_TEXT[p.mode]})" for p in trainable) or "none"
    lines.append(f"trainable: {learnt}")
    lines.append("fixed: " + (", ".join(f"{p.name}={_fmt(p.value)}" for p in fixed) or "none"))
    return "\n".join(lines)


__all__ = ["formula"]
