"""The grammar of hybrid cardiac models: typed structures, validation, canonical form,
JSON, formulas, a distance and catalog subsetting.

    >>> from leads_jax.structure import Structure, ClosureTerm
    >>> s = Structure.make("aliev-panfilov", "laplacian", free=("a", "k", "D"))
    >>> s = s.with_closure(ClosureTerm("v", "additive", hidden=(16,)))
    >>> Structure.from_json(s.to_json()) == s
    True
"""

from ._catalog import Catalog as Catalog
from ._distance import structure_distance as structure_distance
from ._structure import (
    PARAMETER_MODES as PARAMETER_MODES,
)
from ._structure import (
    ClosureTerm as ClosureTerm,
)
from ._structure import (
    DiffusionTerm as DiffusionTerm,
)
from ._structure import (
    ParameterChoice as ParameterChoice,
)
from ._structure import (
    Structure as Structure,
)
from ._structure import (
    StructureError as StructureError,
)
from ._validate import parameter_specs as parameter_specs
from ._validate import reaction_class as reaction_class
from ._validate import validate as validate
