"""ECG world model: action-conditioned simulation of a patient's ECG under a drug.

Built on the McSharry kernel of :mod:`leads_jax.physics.mcsharry` (one implementation).
Layers, from data to artifacts (each imports only the ones above it):

* :mod:`ecg_world.drugs` -- drugs as data (JSON), :class:`DrugLibrary` and its stacked table;
* :mod:`ecg_world.actions` -- typed interventions (:class:`Action`, :func:`make_action`);
* :mod:`ecg_world.pharmacology` -- pure-JAX PK -> block -> shared map -> McSharry parameters
  (:class:`Pharmacology`, :func:`apply_action`; the pharmacology is always an argument);
* :mod:`ecg_world.batch` -- the typed hand-off to the world model (:class:`ECGBatch`);
* :mod:`ecg_world.twin` -- virtual twins from measured intervals;
* :mod:`ecg_world.calibrated` -- the frozen calibrated artifact (:class:`Calibration`, read
  from JSON; :func:`default_pharmacology`);
* :mod:`ecg_world.calibration` -- fitting it to the SCR-002 table;
  :mod:`ecg_world.calibration_report` -- reporting on it;
* :mod:`ecg_world.cohort` -- synthetic cohorts (``ecg-world synth``);
* :mod:`ecg_world.intervals`, :mod:`ecg_world.records` -- measuring real ECGs.

The names below are re-exported for convenience; every one also lives in the module named
next to it.
"""

__version__ = "0.1.0"

from .actions import Action as Action
from .actions import make_action as make_action
from .actions import stack_actions as stack_actions
from .actions import study_actions as study_actions
from .batch import ECGBatch as ECGBatch
from .batch import ECGCells as ECGCells
from .batch import Intervals as Intervals
from .batch import RiskLabels as RiskLabels
from .calibrated import Calibration as Calibration
from .calibrated import default_calibration as default_calibration
from .calibrated import default_pharmacology as default_pharmacology
from .cohort import read_cohort as read_cohort
from .cohort import synthesize as synthesize
from .cohort import synthesize_batch as synthesize_batch
from .cohort import write_cohort as write_cohort
from .drugs import DrugLibrary as DrugLibrary
from .drugs import default_library as default_library
from .drugs import load_drugs as load_drugs
from .pharmacology import PatientParams as PatientParams
from .pharmacology import Pharmacology as Pharmacology
from .pharmacology import apply_action as apply_action
from .twin import patient_intervals as patient_intervals
from .twin import twin_from_intervals as twin_from_intervals
