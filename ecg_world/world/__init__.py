"""The ECG world model (issue 13): latent diffusion of post-intervention ECG strips, regularised
by a McSharry-ODE energy anchor. Networks in Flax NNX; flax is imported here only, never by
``import ecg_world`` or ``import leads_jax``.

Modules: :mod:`.data` (strips, pairs, truth perturbations, action features), :mod:`.anchor`
(McSharry fit + pharmacology), :mod:`.autoencoder`, :mod:`.diffusion`, :mod:`.model` (model
directory), :mod:`.train` (``ecg-world train``), :mod:`.sample` (``ecg-world simulate``).
"""

from .anchor import AnchorConfig as AnchorConfig
from .anchor import AnchorFit as AnchorFit
from .anchor import fit_anchor as fit_anchor
from .anchor import simulate_strip as simulate_strip
from .data import PairSet as PairSet
from .data import StripSpec as StripSpec
from .data import action_features as action_features
from .data import pairs_from_batch as pairs_from_batch
from .model import ModelFormatError as ModelFormatError
from .model import WorldModel as WorldModel
from .model import load_model as load_model
from .model import save_model as save_model
