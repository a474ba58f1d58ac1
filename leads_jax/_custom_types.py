"""Shape-annotated array aliases shared across the package (jaxtyping)."""

from jaxtyping import Array, ArrayLike, Bool, Float, Int, PRNGKeyArray

Scalar = Float[Array, ""]
ScalarLike = float | Float[ArrayLike, ""]
NodeArray = Float[Array, "node"]
StateArray = Float[Array, "state node"]
ParamArray = Float[Array, "param *node"]
Edges = Int[Array, "edge 2"]
EdgeWeights = Float[Array, "edge"]
Times = Float[Array, "time"]

__all__ = [
    "Array",
    "ArrayLike",
    "Bool",
    "Edges",
    "EdgeWeights",
    "Float",
    "Int",
    "NodeArray",
    "ParamArray",
    "PRNGKeyArray",
    "Scalar",
    "ScalarLike",
    "StateArray",
    "Times",
]
