"""The reaction (cell) model catalog.

Every model is an Equinox module whose fields are its named physical parameters
(see :class:`AbstractReactionModel`); time is in ms and each model maps its
voltage-like state to the common observed potential in mV.

``REACTIONS`` maps the canonical names to the classes; :func:`get_reaction` also
accepts aliases ("AP", "aliev_panfilov", "FHN", ...); :func:`catalog_metadata`
returns a JSON-able description of every model.
"""

from __future__ import annotations

from ._base import (
    AbstractReactionModel as AbstractReactionModel,
)
from ._base import (
    ParamSpec as ParamSpec,
)
from ._base import (
    from_unconstrained as from_unconstrained,
)
from ._base import (
    smooth_heaviside as smooth_heaviside,
)
from ._base import (
    to_unconstrained as to_unconstrained,
)
from ._single_cell import level_crossing_apd as level_crossing_apd
from ._single_cell import pace as pace
from .aliev_panfilov import AlievPanfilov as AlievPanfilov
from .bueno_orovio import BuenoOrovio as BuenoOrovio
from .fenton_karma import FentonKarma as FentonKarma
from .fitzhugh_nagumo import FitzHughNagumo as FitzHughNagumo
from .mitchell_schaeffer import MitchellSchaeffer as MitchellSchaeffer

REACTIONS: dict[str, type[AbstractReactionModel]] = {
    cls.name: cls
    for cls in (AlievPanfilov, FitzHughNagumo, MitchellSchaeffer, FentonKarma, BuenoOrovio)
}

_ALIASES = {
    "ap": "aliev-panfilov",
    "alievpanfilov": "aliev-panfilov",
    "fhn": "fitzhugh-nagumo",
    "fitzhughnagumo": "fitzhugh-nagumo",
    "rogersmcculloch": "fitzhugh-nagumo",
    "rm": "fitzhugh-nagumo",
    "ms": "mitchell-schaeffer",
    "mitchellschaeffer": "mitchell-schaeffer",
    "fk": "fenton-karma",
    "fentonkarma": "fenton-karma",
    "bo": "bueno-orovio",
    "buenoorovio": "bueno-orovio",
    "mv": "bueno-orovio",
    "minimalventricular": "bueno-orovio",
}


def _key(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def get_reaction(name: str) -> type[AbstractReactionModel]:
    """The catalog class for `name` (canonical name, class name or alias).

    Matching ignores case, ``-``, ``_`` and spaces. Unknown names raise ``KeyError``
    listing the valid ones.
    """
    if isinstance(name, str):
        key = _key(name)
        for canonical, cls in REACTIONS.items():
            if key in (_key(canonical), _key(cls.__name__)):
                return cls
        if key in _ALIASES:
            return REACTIONS[_ALIASES[key]]
    raise KeyError(
        f"unknown reaction model {name!r}; valid names are {sorted(REACTIONS)} "
        f"(aliases: {sorted(_ALIASES)})"
    )


def catalog_metadata() -> dict:
    """JSON-able description of every catalog model, keyed by canonical name.

    Each entry holds the states (first is voltage-like; gate states), each parameter
    with role, units, bounds, default and source, the citation, the equations in
    plain text, the stable step and the scheme it refers to, the switch steepness,
    the map to the observed potential with its physiological range (mV), and a
    supra-threshold stimulus.
    """
    return {name: cls.metadata() for name, cls in REACTIONS.items()}


__all__ = [
    "REACTIONS",
    "AbstractReactionModel",
    "AlievPanfilov",
    "BuenoOrovio",
    "FentonKarma",
    "FitzHughNagumo",
    "MitchellSchaeffer",
    "ParamSpec",
    "level_crossing_apd",
    "catalog_metadata",
    "from_unconstrained",
    "get_reaction",
    "pace",
    "smooth_heaviside",
    "to_unconstrained",
]
