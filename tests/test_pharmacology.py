"""Actions, drug data, PK, Hill block, the shared effect map and apply_action."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from ecg_world.actions import Action, make_action, stack_actions, study_actions
from ecg_world.drugs import TARGETS, DrugLibrary, default_library, dose_to_mg, load_drugs
from ecg_world.pharmacology import (
    Diurnal,
    EffectMap,
    channel_block,
    concentrations,
    drug_effects,
    effects_from_block,
    free_nM,
    pk_states,
)

LIB = default_library()
TAB = LIB.table()


def test_drug_data_has_sources_and_units():
    for name in ("dofetilide", "quinidine", "ranolazine", "verapamil"):
        d = LIB[name]
        assert d.sources and all(s in LIB.references for s in d.sources)
        assert "IKr" in d.potency and d.potency["IKr"].source in LIB.references
    assert LIB["dofetilide"].concentration_unit == "pg/mL"
    assert LIB["Quinidine Sulph"].name == "quinidine"
    assert LIB["Verapamil HCL"].name == "verapamil"
    assert LIB["ranolazine"].pk["release_per_h"] is not None  # extended release
    # literature ranges the brief asks to check (Li 2017 / Crumb 2016)
    ikr = {n: LIB[n].potency["IKr"].ic50_nM for n in ("dofetilide", "quinidine", "ranolazine",
                                                      "verapamil")}
    assert 1 <= ikr["dofetilide"] <= 10 and 300 <= ikr["quinidine"] <= 1000
    assert 6000 <= ikr["ranolazine"] <= 12000 and 100 <= ikr["verapamil"] <= 600


def test_users_add_a_drug_as_data(tmp_path):
    new = dict(json.loads((LIB.drugs["dofetilide"] and "{}") or "{}"))
    raw = json.loads(open(__import__("ecg_world.drugs", fromlist=["x"]).DRUGS_JSON).read())
    new = raw["drugs"]["dofetilide"] | {"display_name": "Sotalol", "aliases": ["sotalol"],
                                        "standard_dose": 160.0, "dose_unit": "mg"}
    (tmp_path / "extra.json").write_text(json.dumps({"sotalol": new}))
    lib = load_drugs(tmp_path / "extra.json")
    assert "sotalol" in lib.names and lib.table().n_drugs == len(LIB.names) + 1
    a = make_action("sotalol", time_h=2.0, library=lib)
    assert int(a.drug) == lib.index("sotalol")


def test_bad_drug_definitions(tmp_path):
    raw = json.loads(open(__import__("ecg_world.drugs", fromlist=["x"]).DRUGS_JSON).read())
    d = dict(raw["drugs"]["quinidine"])
    d.pop("pk")
    (tmp_path / "bad.json").write_text(json.dumps({"bad": d}))
    with pytest.raises(ValueError, match="missing fields"):
        load_drugs(tmp_path / "bad.json")
    d = dict(raw["drugs"]["quinidine"], aliases=["x"], display_name="X")
    d["potency"] = {"IKs": {"ic50_nM": 1.0}}
    (tmp_path / "bad2.json").write_text(json.dumps({"bad2": d}))
    with pytest.raises(ValueError, match="unknown targets"):
        load_drugs(tmp_path / "bad2.json")


def test_actions_validate_input():
    a = make_action("dofetilide", time_h=1.0)
    assert float(a.dose_mg) == pytest.approx(0.5)  # 500 ug
    assert float(make_action("quinidine", 0.4, "g").dose_mg) == pytest.approx(400)
    with pytest.raises(ValueError, match="unknown drug"):
        make_action("aspirin")
    with pytest.raises(ValueError, match="dose must be >= 0"):
        make_action("verapamil", -10, "mg")
    with pytest.raises(ValueError, match="did you mean 500 ug"):
        make_action("dofetilide", 500, "mg")
    with pytest.raises(ValueError, match="time since dose"):
        make_action("verapamil", time_h=-1)
    with pytest.raises(ValueError, match="unknown dose unit"):
        dose_to_mg(1.0, "tablets")
    labels, acts = study_actions((0.0, 1.0, 2.0), dose_multipliers=(0.5, 1.0))
    assert labels[0] == "placebo" and acts.drug.shape == (len(labels), 3)
    b = stack_actions([a, a.at(3.0)])
    assert b.time_h.tolist() == [1.0, 3.0]


def test_pk_matches_scipy_expm_and_is_mass_balanced():
    for name in ("dofetilide", "ranolazine"):
        a = make_action(name, time_h=3.0)
        x = np.asarray(pk_states(TAB, a))
        d = LIB[name]
        # plain-numpy reference of the same linear system
        kr = d.pk["release_per_h"]
        ka, ke, v = d.pk["ka_per_h"], d.pk["ke_per_h"], d.pk["v_over_f_l"]
        ke0 = d.pk["ke0_per_h"]
        kr_ = 0.0 if kr is None else kr
        m = np.array([[-kr_, 0, 0, 0, 0], [kr_, -ka, 0, 0, 0], [0, ka, -ke, 0, 0],
                      [0, 0, ke0 / v, -ke0, 0], [0, 0, 0.5 / v, 0, -0.5]])
        dose = dose_to_mg(d.standard_dose, d.dose_unit) * d.salt_factor
        x0 = np.array([dose, 0, 0, 0, 0] if kr else [0, dose, 0, 0, 0], float)
        ref = scipy.linalg.expm(m * (3.0 - d.pk["tlag_h"])) @ x0
        np.testing.assert_allclose(x, ref, rtol=2e-4, atol=1e-7)
        assert x[:3].sum() <= dose * (1 + 1e-5)


def test_extended_release_peaks_later():
    t = jnp.linspace(0.0, 24.0, 97)

    def tmax(name):
        d = LIB.index(name)
        dose = make_action(name).dose_mg
        c = jax.vmap(lambda tt: concentrations(TAB, Action(jnp.int32(d), dose, tt))[0])(t)
        return float(t[jnp.argmax(c)])

    assert tmax("ranolazine") > tmax("quinidine")
    assert tmax("ranolazine") >= 2.0


def test_hill_block_and_units():
    d = LIB.index("dofetilide")
    # free nM = ng/mL * 1000 / MW * fu
    cu = float(free_nM(TAB, d, 2.7))
    assert cu == pytest.approx(2.7 * 1000 / 441.56 * LIB["dofetilide"].unbound_fraction,
                               rel=1e-5)
    ic50 = LIB["dofetilide"].potency["IKr"].ic50_nM
    c_half = ic50 / (1000 / 441.56 * LIB["dofetilide"].unbound_fraction)
    b = channel_block(TAB, d, c_half)
    assert float(b[TARGETS.index("IKr")]) == pytest.approx(0.5, abs=1e-4)
    assert np.all(np.asarray(channel_block(TAB, d, 0.0)) == 0.0)
    assert np.all(np.diff(np.asarray(jax.vmap(lambda c: channel_block(TAB, d, c)[0])(
        jnp.linspace(0, 20, 50)))) >= 0)
    placebo = LIB.index("placebo")
    assert np.all(np.asarray(channel_block(TAB, placebo, 123.0)) == 0.0)


def test_one_shared_map_no_per_drug_knobs():
    """Two drugs with the same block give the same ECG effects (drugs differ only by PK and
    block), and the map has no drug-indexed field."""
    emap = EffectMap.default()
    for leaf in jax.tree_util.tree_leaves(emap):
        assert jnp.shape(leaf) == ()
    blk = jnp.array([0.3, 0.1, 0.05, 0.02, 0.1])
    e1 = effects_from_block(emap, blk, blk)
    e2 = effects_from_block(emap, blk, blk)
    assert float(e1.qt_frac) == float(e2.qt_frac)
    # IKr block lengthens QT; late-Na block shortens it
    more_kr = effects_from_block(emap, blk.at[0].set(0.5), blk)
    more_nal = effects_from_block(emap, blk.at[1].set(0.5), blk)
    assert more_kr.qt_frac > e1.qt_frac > more_nal.qt_frac
    # ICaL block lengthens PR
    assert effects_from_block(emap, blk.at[2].set(0.3), blk).pr_frac > e1.pr_frac
    # IKr block alone does not touch PR (no mechanism): PR responds to ICaL and INa only
    assert float(more_kr.pr_frac) == float(e1.pr_frac)


def test_placebo_has_no_drug_effect_and_diurnal_is_zero_at_baseline():
    emap = EffectMap.default()
    e = drug_effects(TAB, emap, make_action("placebo", time_h=3.0))
    assert float(e.qt_frac) == 0 and float(e.hr_bpm) == 0
    di = Diurnal(jnp.ones((4, 4)))
    np.testing.assert_allclose(np.asarray(di(-0.5)), 0.0, atol=1e-6)


def test_effects_are_vmappable_and_differentiable():
    emap = EffectMap.default()
    d = jnp.int32(LIB.index("quinidine"))
    f = jax.jit(jax.vmap(lambda t, dose: drug_effects(TAB, emap, Action(d, dose, t)).qt_frac))
    q = f(jnp.array([1.0, 2.0, 4.0]), jnp.array([400.0, 400.0, 400.0]))
    assert q.shape == (3,) and bool(jnp.all(q > 0))
    g = jax.grad(lambda dose: drug_effects(TAB, emap, Action(d, dose, 2.0)).qt_frac)(400.0)
    assert np.isfinite(float(g)) and float(g) > 0
    # higher dose -> larger effect
    assert float(f(jnp.array([2.0]), jnp.array([800.0]))[0]) > float(q[1])


def test_library_rejects_alias_clash():
    a = LIB.drugs["quinidine"]
    b = type(a)(**{**a.__dict__, "name": "other"})
    with pytest.raises(ValueError, match="alias"):
        DrugLibrary([a, b])


def test_eager_apply_action_compiles_once():
    """Eager calls (notebooks, loops over times) run one compiled program, whatever the
    time since dose; the result equals the traced one inside a caller's jit."""
    from ecg_world import pharmacology
    from ecg_world.calibrated import default_pharmacology
    from ecg_world.twin import twin_from_intervals

    pharm = default_pharmacology()
    params, _ = twin_from_intervals([1000.0], [160.0], [95.0], [400.0])
    one = jax.tree_util.tree_map(lambda x: x[0], params)
    action = make_action("dofetilide", time_h=2.0)
    pharmacology.apply_action(one, action, pharm=pharm)
    before = pharmacology._apply_action._cached._cache_size()
    eager = [float(pharmacology.apply_action(one, action, t=t, pharm=pharm).ecg.ti[4])
             for t in (1.0, 2.5, 3)]
    assert pharmacology._apply_action._cached._cache_size() == before
    traced = jax.jit(lambda t: pharmacology.apply_action(one, action, t=t, pharm=pharm)
                     .ecg.ti[4])
    np.testing.assert_allclose(eager, [float(traced(t)) for t in (1.0, 2.5, 3.0)], rtol=1e-6)


def test_two_part_repolarisation_map():
    """The QT change is the sum of a J-Tpeak part and a Tpeak-Tend part; late-Na and L-type
    Ca block shorten the J-Tpeak part only; with ``jt_share = 1`` the mitigation acts on the
    whole QT (the reading of a calibration file written before the split)."""
    from ecg_world.pharmacology import repolarisation_parts

    emap = EffectMap.default(qt_gain=0.1, qt_curv=0.0, w_inal=1.0, w_ical=1.0, jt_share=0.4)
    blk = jnp.asarray([0.5, 0.0, 0.0, 0.0, 0.0])
    jt, tt = repolarisation_parts(emap, blk)
    assert float(jt) == pytest.approx(0.1 * 0.4 * 1.0) and float(tt) == pytest.approx(0.06)
    assert float(effects_from_block(emap, blk, blk).qt_frac) == pytest.approx(float(jt + tt),
                                                                             rel=1e-3)
    jt2, tt2 = repolarisation_parts(emap, blk.at[1].set(0.3))
    assert float(tt2) == float(tt) and float(jt2) == pytest.approx(float(jt) - 0.1 * 0.4 * 0.3)
    one = EffectMap.default(qt_gain=0.1, w_inal=1.0, jt_share=1.0)
    jt1, tt1 = repolarisation_parts(one, blk.at[1].set(0.3))
    assert float(tt1) == 0.0 and float(jt1) == pytest.approx(0.1 * (1.0 - 0.3))


def test_exposure_scale_scales_a_patients_exposure_effect():
    """A drug's ``exposure_scale`` multiplies the patient's exposure random effect for that
    drug only; it is validated in the drug entry."""
    from ecg_world.pharmacology import concentrations

    d = LIB.index("dofetilide")
    lib2 = LIB.with_pk({"dofetilide": {"exposure_scale": 0.5}})
    a = Action(d, 0.5, 2.5)
    eta = jnp.asarray([0.4, 0.0, 0.0])
    c_ref = float(concentrations(LIB.table(), a)[0])
    c1 = float(concentrations(LIB.table(), a, eta)[0])
    c2 = float(concentrations(lib2.table(), a, eta)[0])
    assert c1 == pytest.approx(c_ref * np.exp(0.4), rel=1e-4)
    assert c2 == pytest.approx(c_ref * np.exp(0.2), rel=1e-4)
    q = LIB.index("quinidine")
    aq = Action(q, 400.0, 2.0)
    assert float(concentrations(lib2.table(), aq, eta)[0]) == pytest.approx(
        float(concentrations(LIB.table(), aq, eta)[0]))
    from ecg_world.drugs import Drug

    entry = LIB.to_dict()["dofetilide"]
    for bad in (-1.0, 0.0, float("nan")):
        with pytest.raises(ValueError, match="exposure_scale"):
            Drug.from_dict("dofetilide", {**entry, "pk": {**entry["pk"], "exposure_scale": bad}})
    assert Drug.from_dict("dofetilide", {**entry, "pk": {**entry["pk"], "exposure_scale": 2.0}}
                          ).pk["exposure_scale"] == 2.0
