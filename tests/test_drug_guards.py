"""No silent wrong drug, no silent absurd output (issue 10, part 2): the drug library travels
with the pharmacology; misuse is an error outside traced code and a flag (NaN) inside it."""

import json
import pathlib

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ecg_world import (
    Action,
    Calibration,
    apply_action,
    default_calibration,
    default_pharmacology,
    load_drugs,
    make_action,
    patient_intervals,
    twin_from_intervals,
)
from ecg_world.batch import PLAUSIBLE_RANGES

MOXI = pathlib.Path(__file__).parent / "data" / "drugs_moxifloxacin.json"
PHARM = default_pharmacology()


@pytest.fixture(scope="module")
def patient():
    params, _ = twin_from_intervals([1000.0], [160.0], [95.0], [400.0])
    return jax.tree_util.tree_map(lambda x: x[0], params)


@jax.jit
def _intervals(p, action, pharm):
    return patient_intervals(apply_action(p, action, pharm=pharm))


def test_user_drug_never_becomes_another_drug(patient):
    lib = load_drugs(MOXI)
    moxi = make_action("moxifloxacin", 400, "mg", 2.0, library=lib)
    assert int(moxi.drug) == 5 and moxi.library == lib.names
    with pytest.raises(ValueError, match="needs a pharmacology"):
        apply_action(patient, moxi)
    with pytest.raises(ValueError, match="refers to drug library"):
        apply_action(patient, moxi, pharm=PHARM)  # the 5-drug table would clamp id 5
    with pytest.raises(ValueError, match="refers to drug library"):
        _intervals(patient, moxi, PHARM)  # static check: also under jit
    # with its own library the drug is itself: a weak hERG blocker, small QTcF change
    pharm = default_calibration().with_library(lib).pharmacology
    assert pharm.library.names[5] == "moxifloxacin"
    q = _intervals(patient, moxi, pharm)
    q0 = _intervals(patient, make_action("placebo", 0, "mg", 2.0, library=lib), pharm)
    d = float(q.qtcf - q0.qtcf)
    assert 0.5 < d < 40.0
    for k, (lo, hi) in PLAUSIBLE_RANGES.items():
        assert lo <= float(getattr(q, k)) <= hi


def test_bare_ids_outside_the_table(patient):
    with pytest.raises(ValueError, match="outside the drug table"):
        Action(99, 1.0, 1.0, library=PHARM.library)
    with pytest.raises(ValueError, match="outside the pharmacology's drug table"):
        apply_action(patient, Action(99, 1.0, 1.0), pharm=PHARM)
    with pytest.raises(ValueError, match="integer"):
        Action(1.5, 1.0, 1.0)
    with pytest.raises(ValueError, match="outside the drug table"):
        Action(-1, 1.0, 1.0)


@pytest.mark.parametrize("dose, t", [(-5.0, 1.0), (np.nan, 1.0), (np.inf, 1.0), (1.0, -2.0),
                                     (1.0, np.nan)])
def test_negative_or_nan_doses_and_times(patient, dose, t):
    with pytest.raises(ValueError, match="finite and >= 0"):
        Action(1, dose, t)
    a = make_action("dofetilide", time_h=1.0)
    if np.isfinite(t) and t < 0:
        with pytest.raises(ValueError, match="time_h must be finite"):
            apply_action(patient, a, t=t, pharm=PHARM)


def test_unit_slips_are_named():
    with pytest.raises(ValueError, match=r"dofetilide: dose 500 mg .* did you mean 500 ug"):
        make_action("dofetilide", 500, "mg")
    with pytest.raises(ValueError, match="did you mean 0.4 g"):
        make_action("quinidine", 0.4, "mg")
    with pytest.raises(ValueError, match="plausible range"):
        apply_action(jax.tree_util.tree_map(lambda x: x[0], twin_from_intervals(
            [1000.0], [160.0], [95.0], [400.0])[0]), Action(1, 500.0, 1.0), pharm=PHARM)
    assert float(make_action("dofetilide", 0.5, "mg").dose_mg) == pytest.approx(0.5)


def test_bad_drug_files(tmp_path):
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_drugs(tmp_path / "broken.json")
    raw = json.loads(MOXI.read_text())
    raw["drugs"]["moxifloxacin"]["dose_range"] = [500.0, 4000.0]  # excludes its own dose
    (tmp_path / "range.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="outside its dose_range"):
        load_drugs(tmp_path / "range.json")
    with pytest.raises(FileNotFoundError):
        load_drugs(tmp_path / "none.json")


def test_traced_misuse_is_a_flag_with_nan_intervals(patient):
    """Actions built inside vmap cannot be checked eagerly: they carry validity and give NaN
    intervals, never a clamped drug or a clamped dose."""
    ids = jnp.array([1, 5, 99, -1, 1, 1, 1, 4])
    dose = jnp.array([0.5, 0.5, 0.5, 0.5, -1.0, jnp.nan, 500.0, 120.0])
    t = jnp.array([2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, -1.0])

    out = [_traced(patient, d, x, tt) for d, x, tt in zip(ids, dose, t, strict=True)]
    valid = [bool(v) for v, _ in out]
    qtcf = np.array([float(iv.qtcf) for _, iv in out])
    assert valid == [True] + [False] * 7
    assert np.isfinite(qtcf[0]) and np.all(np.isnan(qtcf[1:]))


def test_jitted_pharmacology_argument_no_recompile(patient):
    """Issue 9 acceptance: the pharmacology is an argument of a jitted function, so two
    pharmacologies give different outputs from one compilation."""

    @jax.jit
    @eqx.debug.assert_max_traces(max_traces=1)
    def qtcf(p, action, pharm):
        return patient_intervals(apply_action(p, action, pharm=pharm)).qtcf

    a = make_action("dofetilide", time_h=2.5)
    other = eqx.tree_at(lambda ph: ph.emap.qt_gain, PHARM, PHARM.emap.qt_gain * 2.0)
    reloaded = Calibration.from_json().pharmacology  # a new, equal library object
    assert reloaded.library is not PHARM.library and reloaded.library == PHARM.library
    base = float(qtcf(patient, make_action("placebo", time_h=2.5), PHARM))
    q1, q2 = float(qtcf(patient, a, PHARM)), float(qtcf(patient, a, other))
    assert q2 - base > 1.5 * (q1 - base) > 0
    # an equal library loaded again is the same static value: still one compilation
    assert float(qtcf(patient, a, reloaded)) == pytest.approx(q1)


_UNITS = ("mg", "ug", "g", "mcg")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(drug=st.integers(-3, 8), dose=st.one_of(st.floats(-10, 1e4), st.just(float("nan")),
                                              st.just(float("inf"))),
       unit=st.sampled_from(_UNITS), t=st.one_of(st.floats(-5, 48), st.just(float("nan"))))
def test_fuzz_actions_never_silently_out_of_range(patient, drug, dose, unit, t):
    """Random ids, doses, units and times: either a clear ValueError, or intervals inside the
    physiological ranges; under tracing, either that or a False validity flag with NaN."""
    names = PHARM.library.names
    mg = dose * {"mg": 1.0, "ug": 1e-3, "g": 1e3, "mcg": 1e-3}[unit]
    try:
        a = (make_action(names[drug], dose, unit, t) if 0 <= drug < len(names)
             else Action(drug, mg, t))
        q = apply_action(patient, a, pharm=PHARM)  # the eager checks
    except ValueError:
        eager = None
    else:
        eager = _intervals(patient, a, PHARM)
        assert bool(q.valid)
        for k, (lo, hi) in PLAUSIBLE_RANGES.items():
            assert lo <= float(getattr(eager, k)) <= hi, (k, names[drug], dose, unit, t)
    # the same action built under tracing: flagged or inside the ranges
    valid, iv = _traced(patient, jnp.int32(drug), jnp.float32(mg), jnp.float32(t))
    if bool(valid):
        for k, (lo, hi) in PLAUSIBLE_RANGES.items():
            assert lo <= float(getattr(iv, k)) <= hi, (k, drug, mg, t)
    else:
        assert all(np.isnan(float(getattr(iv, k))) for k in PLAUSIBLE_RANGES)
    if eager is not None:
        assert bool(valid)


@jax.jit
def _traced(p, d, mg, t):
    q = apply_action(p, Action(d, mg, t), pharm=PHARM)
    return q.valid, patient_intervals(q)
