"""A distance between structures: the number of terms added, removed or swapped."""

from __future__ import annotations


def _slots(structure) -> dict:
    """The structure as a map slot -> content; absent slots are default (no term / fixed)."""
    s = structure.canonical()
    slots = {("reaction",): s.reaction, ("diffusion",): (s.diffusion.kind, s.diffusion.hidden)}
    for c in s.closures:
        slots[("closure", c.target)] = (c.kind, c.hidden, c.neighbours)
    for p in s.parameters:
        if p.mode == "fixed":
            continue
        # Reaction parameters belong to their model; the conductivity to the tissue.
        owner = "tissue" if p.name == "D" else s.reaction
        slots[("parameter", owner, p.name)] = p.mode
    return slots


def structure_distance(a, b) -> int:
    """Number of slots in which `a` and `b` differ (a Hamming distance, hence a metric).

    Slots: the reaction model; the diffusion term (kind and network size); one closure
    slot per state name (kind, size and inputs); one slot per trainable parameter (its
    mode; a fixed parameter is an empty slot). Adding, removing or swapping a term each
    count 1; freeing, fixing or localising a parameter counts 1. Swapping the reaction
    model counts 1 plus the trainable parameters of either model (they are different
    parameters). Values (initial or fixed) and closure bounds are data and do not count.
    """
    sa, sb = _slots(a), _slots(b)
    return sum(sa.get(k) != sb.get(k) for k in set(sa) | set(sb))


__all__ = ["structure_distance"]
