"""leads-jax: JAX-native cardiac digital twins.

Two halves share one codebase:

* LEADS -- agent-driven discovery of hybrid model structures for cardiac
  electrophysiology: reaction catalogs (:mod:`leads_jax.physics.reactions`),
  diffusion operators and bounded neural closures, a grammar over them
  (:mod:`leads_jax.structure`), compilation to Equinox vector fields
  (:mod:`leads_jax.compile`), diffrax simulation (:mod:`leads_jax.simulate`),
  ground-truth data (:mod:`leads_jax.datasets`) and the batched fitting engine
  (:mod:`leads_jax.fit`).
* The ECG world model (package :mod:`ecg_world`), whose physiological anchor is
  the McSharry ECG ODE implemented once, in :mod:`leads_jax.physics.mcsharry`.

The names below are re-exported for convenience; every one also lives in the
module named next to it. (``simulate`` itself stays in :mod:`leads_jax.simulate`
so that the module name is not shadowed.)
"""

__version__ = "0.1.0"

from ._cache import cacheable_runtime_checks as cacheable_runtime_checks
from ._cache import enable_compilation_cache as enable_compilation_cache
from .codes import ResultCode as ResultCode
from .compile import AbstractCompiledModel as AbstractCompiledModel
from .compile import compile_structure as compile_structure
from .compile import compile_vector_field as compile_vector_field
from .datasets import FitData as FitData
from .datasets import load_dataset as load_dataset
from .datasets import make_dataset as make_dataset
from .datasets import save_dataset as save_dataset
from .fit import FitConfig as FitConfig
from .fit import FitResult as FitResult
from .fit import fit as fit
from .geometry import Geometry as Geometry
from .physics.mcsharry import McSharryECG as McSharryECG
from .physics.mcsharry import simulate_ecg as simulate_ecg
from .physics.mcsharry import simulate_ecg_batch as simulate_ecg_batch
from .physics.reactions import REACTIONS as REACTIONS
from .physics.reactions import get_reaction as get_reaction
from .recording import from_recording as from_recording
from .stimulus import Stimulus as Stimulus
from .structure import Catalog as Catalog
from .structure import ClosureTerm as ClosureTerm
from .structure import DiffusionTerm as DiffusionTerm
from .structure import Structure as Structure
from .structure import structure_distance as structure_distance
