"""ECG world model: action-conditioned simulation of a patient's ECG under a drug.

Built on the McSharry kernel of :mod:`leads_jax.physics.mcsharry` (one implementation).
"""

__version__ = "0.1.0"
