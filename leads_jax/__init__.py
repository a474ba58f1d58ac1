"""leads-jax: JAX-native cardiac digital twins.

Two halves share one codebase:

* LEADS -- agent-driven discovery of hybrid model structures for cardiac
  electrophysiology (reaction catalogs, diffusion operators, bounded neural
  closures, a grammar over them, and a batched fitting engine).
* The ECG world model (package :mod:`ecg_world`), whose physiological anchor is
  the McSharry ECG ODE implemented once, in :mod:`leads_jax.physics.mcsharry`.
"""

__version__ = "0.1.0"
