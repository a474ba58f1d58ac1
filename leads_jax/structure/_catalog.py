"""The catalog of terms a search may use, and its subsetting for misspecified experiments."""

from __future__ import annotations

import dataclasses

from ..physics.closures import closure_metadata
from ..physics.diffusion import DIFFUSION_KINDS, diffusion_metadata
from ..physics.reactions import REACTIONS
from ._structure import PARAMETER_MODES, ClosureTerm, Structure, StructureError
from ._validate import CLOSURE_KIND_NAMES, reaction_class


@dataclasses.dataclass(frozen=True)
class Catalog:
    """The terms a structure search may use.

    ``Catalog.default()`` holds every reaction model, diffusion kind, closure kind and
    parameter mode; ``catalog.without("bueno-orovio")`` removes terms by name (reaction
    aliases accepted), e.g. to run a search whose catalog lacks the true model.

    **Arguments:**

    - `reactions`: canonical reaction names.
    - `diffusions`: diffusion kinds (``"none"``, ``"laplacian"``, ``"neural-graph"``).
    - `closures`: closure kinds (``"additive"``, ``"gate"``).
    - `parameter_modes`: allowed parameter modes (``"fixed"`` is always allowed).
    """

    reactions: tuple[str, ...]
    diffusions: tuple[str, ...] = tuple(DIFFUSION_KINDS)
    closures: tuple[str, ...] = CLOSURE_KIND_NAMES
    parameter_modes: tuple[str, ...] = PARAMETER_MODES

    @classmethod
    def default(cls) -> Catalog:
        return cls(tuple(REACTIONS))

    def _resolve(self, name: str) -> tuple[str, str]:
        if name in DIFFUSION_KINDS:
            return "diffusions", name
        if name in CLOSURE_KIND_NAMES:
            return "closures", name
        if name in PARAMETER_MODES and name != "fixed":
            return "parameter_modes", name
        try:
            return "reactions", reaction_class(name).name
        except StructureError:
            raise ValueError(
                f"unknown catalog term {name!r}; valid terms are reactions "
                f"{self.reactions}, diffusion kinds {tuple(DIFFUSION_KINDS)}, closure kinds "
                f"{CLOSURE_KIND_NAMES}, parameter modes {PARAMETER_MODES[1:]}"
            ) from None

    def without(self, *names: str) -> Catalog:
        """The catalog without the named terms (unknown names raise ``ValueError``)."""
        new = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for n in names:
            field, canon = self._resolve(n)
            new[field] = tuple(x for x in new[field] if x != canon)
        if not new["reactions"]:
            raise ValueError("a catalog needs at least one reaction model")
        if not new["diffusions"]:
            raise ValueError("a catalog needs at least one diffusion kind")
        return Catalog(**new)

    def only(self, *names: str) -> Catalog:
        """The catalog restricted to the named reactions (and other named terms: a field
        none of whose terms is named is kept whole)."""
        keep: dict[str, list[str]] = {}
        for n in names:
            field, canon = self._resolve(n)
            keep.setdefault(field, []).append(canon)
        new = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for field, items in keep.items():
            new[field] = tuple(x for x in new[field] if x in items)
        return Catalog(**new)

    def check(self, structure: Structure) -> None:
        """Raise ``StructureError(rule="catalog")`` if `structure` uses a term outside."""
        name = reaction_class(structure.reaction).name
        if name not in self.reactions:
            raise StructureError(
                "catalog", f"reaction {name!r} is not in the catalog {self.reactions}"
            )
        if structure.diffusion.kind not in self.diffusions:
            raise StructureError(
                "catalog",
                f"diffusion {structure.diffusion.kind!r} is not in the catalog {self.diffusions}",
            )
        for c in structure.closures:
            if c.kind not in self.closures:
                raise StructureError(
                    "catalog", f"closure kind {c.kind!r} is not in the catalog {self.closures}"
                )
        for p in structure.parameters:
            if p.mode != "fixed" and p.mode not in self.parameter_modes:
                raise StructureError(
                    "catalog",
                    f"parameter mode {p.mode!r} is not in the catalog {self.parameter_modes}",
                )

    def allows(self, structure: Structure) -> bool:
        try:
            self.check(structure)
        except StructureError:
            return False
        return True

    def base_structures(self, free: str = "conductivity") -> list[Structure]:
        """One structure per (reaction, diffusion kind): no closures; with
        ``free="conductivity"`` the conductivity ``D`` is free, with ``"none"`` all fixed."""
        out = []
        for r in self.reactions:
            for d in self.diffusions:
                frees = ("D",) if (free == "conductivity" and d != "none") else ()
                out.append(Structure.make(r, d, free=frees))
        return out

    def metadata(self) -> dict:
        """JSON-able description of every term (rendered into the agent's prompt)."""
        reactions = {r: reaction_class(r).metadata() for r in self.reactions}
        diff = diffusion_metadata()
        clo = closure_metadata()
        return {
            "reactions": reactions,
            "diffusion": {k: diff[k] for k in self.diffusions},
            "closures": {k: clo[k] for k in self.closures},
            "parameter_modes": ["fixed", *[m for m in self.parameter_modes if m != "fixed"]],
        }


__all__ = ["Catalog", "ClosureTerm"]
