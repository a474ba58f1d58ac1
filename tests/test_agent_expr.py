"""The safe expression parser and the postfix interpreter of the unstructured baseline."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from leads_jax.agent._expr import (
    MAX_CHARS,
    MAX_DEPTH,
    ExpressionError,
    compile_program,
    evaluate_program,
    expression_model,
    parse_expression,
    program_to_text,
    random_program,
)
from leads_jax.geometry import Geometry
from leads_jax.simulate import simulate
from leads_jax.stimulus import Stimulus

STATES = ("u", "v")
N_PARAMS = 3
HYP = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- a random valid expression with its numpy reference --------------------------------
def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


@st.composite
def expressions(draw, depth=0):
    """(text, f) where f(env) evaluates the same expression in float64 numpy."""
    leaf = depth >= 4 or draw(st.integers(0, 2)) == 0
    if leaf:
        kind = draw(st.sampled_from(["state", "param", "const", "lap"]))
        if kind == "state":
            n = draw(st.sampled_from(STATES))
            return n, lambda e, n=n: e[n]
        if kind == "lap":
            n = draw(st.sampled_from(STATES))
            return f"lap_{n}", lambda e, n=n: e["lap_" + n]
        if kind == "param":
            k = draw(st.integers(0, N_PARAMS - 1))
            return f"p{k}", lambda e, k=k: e[f"p{k}"]
        c = draw(st.sampled_from([0.0, 0.5, 1.0, 2.0, 3.25, 10.0]))
        return repr(c), lambda e, c=c: np.full_like(e["u"], c)
    op = draw(st.sampled_from(["+", "-", "*", "/", "**", "neg", "exp", "tanh", "sigmoid",
                               "min", "max"]))
    a, fa = draw(expressions(depth + 1))
    if op in "+-*/" and len(op) == 1:
        b, fb = draw(expressions(depth + 1))
        fn = {"+": np.add, "-": np.subtract, "*": np.multiply}.get(op)
        if op == "/":
            # keep the denominator away from zero so float32 and float64 agree
            b, fb = f"(2 + tanh({b}))", (lambda e, fb=fb: 2 + np.tanh(fb(e)))
            return f"({a} / {b})", lambda e: fa(e) / fb(e)
        return f"({a} {op} {b})", lambda e: fn(fa(e), fb(e))
    if op == "**":
        n = draw(st.integers(0, 4))
        return f"(tanh({a}) ** {n})", lambda e: np.tanh(fa(e)) ** n
    if op == "neg":
        return f"(-{a})", lambda e: -fa(e)
    if op == "exp":
        return f"exp(tanh({a}))", lambda e: np.exp(np.tanh(fa(e)))
    if op in ("tanh", "sigmoid"):
        f = np.tanh if op == "tanh" else _sigmoid
        return f"{op}({a})", lambda e: f(fa(e))
    b, fb = draw(expressions(depth + 1))
    f = np.minimum if op == "min" else np.maximum
    return f"{op}({a}, {b})", lambda e: f(fa(e), fb(e))


GEO = Geometry.cable(5)


def _env(seed):
    rng = np.random.default_rng(seed)
    y = rng.uniform(-1, 1, (2, GEO.n_nodes)).astype(np.float32)
    lap = np.asarray(jax.vmap(GEO.laplacian)(jnp.asarray(y)), np.float64) * 1e-3
    p = rng.uniform(-1, 1, N_PARAMS).astype(np.float32)
    env = {"u": y[0].astype(np.float64), "v": y[1].astype(np.float64),
           "lap_u": lap[0], "lap_v": lap[1]}
    env.update({f"p{k}": np.full(GEO.n_nodes, float(p[k])) for k in range(N_PARAMS)})
    table = np.concatenate([y, lap.astype(np.float32),
                            np.broadcast_to(p[:, None], (N_PARAMS, GEO.n_nodes))])
    return env, jnp.asarray(table, jnp.float32)


_eval = jax.jit(evaluate_program)


@HYP
@given(expressions(), expressions(), st.integers(0, 2**31 - 1))
def test_round_trip_matches_numpy(e1, e2, seed):
    (t1, f1), (t2, f2) = e1, e2
    prog = compile_program([t1, t2], STATES, N_PARAMS, max_len=128, stack_size=32)
    env, table = _env(seed)
    got = np.asarray(_eval(prog, table))
    want = np.stack([f1(env), f2(env)])
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4)
    # program -> text -> program is the identity
    again = compile_program(program_to_text(prog, STATES), STATES, N_PARAMS, max_len=128,
                            stack_size=32)
    for a, b in zip(jax.tree.leaves(prog), jax.tree.leaves(again), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# -- rejection ---------------------------------------------------------------------------
FORBIDDEN = [
    ("({e}).real", "forbidden-syntax"),
    ("{e}.__class__", "forbidden-syntax"),
    ("({e})[0]", "forbidden-syntax"),
    ("lambda: {e}", "forbidden-syntax"),
    ("[{e} for u in v]", "forbidden-syntax"),
    ("{{u: {e}}}", "forbidden-syntax"),
    ("{e} if u else v", "forbidden-syntax"),
    ("{e} < u", "forbidden-syntax"),
    ("({e}) and u", "forbidden-syntax"),
    ("({e}) @ u", "forbidden-syntax"),
    ("({e}) % 2", "forbidden-syntax"),
    ("__import__('os').system({e})", "forbidden-syntax"),
    ("__import__('os')", "unknown-function"),
    ("open({e})", "unknown-function"),
    ("eval({e})", "unknown-function"),
    ("np.exp({e})", "forbidden-syntax"),
    ("exp({e}, u)", "arity"),
    ("max({e})", "arity"),
    ("tanh(x={e})", "arity"),
    ("({e}) ** u", "bad-exponent"),
    ("({e}) ** 5", "bad-exponent"),
    ("({e}) ** 0.5", "bad-exponent"),
    ("({e}) + 'a'", "bad-constant"),
    ("({e}) + True", "bad-constant"),
    ("({e}) + 1j", "bad-constant"),
    ("({e}) + 1e400", "bad-constant"),
    ("({e}) + w", "unknown-name"),
    ("({e}) + p7", "unknown-name"),
    ("({e}) + os", "unknown-name"),
    ("import os", "syntax"),
    ("{e}; import os", "syntax"),
    ("x = {e}", "syntax"),
]


@HYP
@given(expressions(), st.sampled_from(FORBIDDEN))
def test_rejects_everything_outside_the_grammar(e, case):
    template, rule = case
    text = template.format(e=e[0])
    with pytest.raises(ExpressionError) as info:
        parse_expression(text, STATES, N_PARAMS)
    assert info.value.rule == rule, (text, info.value)
    assert str(info.value)  # a message an LLM can read


@HYP
@given(st.text(max_size=80))
def test_arbitrary_text_is_parsed_or_rejected_cleanly(text):
    """Any text either compiles (and round-trips) or raises ExpressionError: no other
    exception, nothing executed."""
    try:
        prog = compile_program([text, "u"], STATES, N_PARAMS)
    except ExpressionError:
        return
    again = compile_program(program_to_text(prog, STATES), STATES, N_PARAMS)
    np.testing.assert_array_equal(np.asarray(prog.ops), np.asarray(again.ops))


def test_long_and_deep_inputs_rejected():
    with pytest.raises(ExpressionError) as e:
        parse_expression("u + " * (MAX_CHARS // 4) + "u", STATES, 0)
    assert e.value.rule == "too-long"
    for text in ("tanh(" * (MAX_DEPTH + 1) + "u" + ")" * (MAX_DEPTH + 1),
                 "-" * 150 + "u", "(" * 500 + "u" + ")" * 500):
        with pytest.raises(ExpressionError) as e:
            parse_expression(text, STATES, 0)
        assert e.value.rule == "too-deep", (text[:20], e.value)
    # within the character limit but longer than the static program
    with pytest.raises(ExpressionError) as e:
        compile_program(["+".join(["u*v"] * 22), "v"], STATES, 0, max_len=64)
    assert e.value.rule == "program-too-long"
    with pytest.raises(ExpressionError) as e:
        compile_program(["u"], STATES, 0)
    assert e.value.rule == "equations"


# -- models ----------------------------------------------------------------------------
def test_random_programs_are_valid_and_deterministic():
    key = jax.random.PRNGKey(3)
    a = random_program(key, STATES, 2, max_depth=4)
    assert a == random_program(key, STATES, 2, max_depth=4)
    seen = set()
    for i in range(30):
        exprs = random_program(jax.random.fold_in(key, i), STATES, 2, max_depth=4)
        assert set(exprs) == set(STATES)
        compile_program([exprs["u"], exprs["v"]], STATES, 2)
        seen.add(exprs["u"])
    assert len(seen) > 10


def test_expression_models_share_one_compilation():
    geo = Geometry.cable(6)
    stim = Stimulus.single(geo, "left")
    ts = jnp.linspace(0.0, 5.0, 6)
    traces = []

    @eqx.filter_jit
    def run(model):
        traces.append(1)  # runs once per trace (compilation)
        tr = simulate(model, geo, stim, ts, dt=0.05)
        return tr.observed, tr.diverged

    models = [
        expression_model({"u": "p0*u*(u - 0.1)*(1 - u) - v + 0.001*lap_u",
                          "v": "0.01*(u - p1*v)"}, params=[8.0, 0.5]),
        expression_model({"u": "-u", "v": "tanh(v)"}),
        expression_model({"u": "exp(p0) - u + p3", "v": "max(u, v) - min(p1, p2)"},
                         params=[0.1, 0.2, 0.3, 0.4]),
        # no stability guarantee: divergence is recorded, never raised
        expression_model({"u": "1/(u - u)", "v": "exp(exp(exp(v + 10)))"}),
    ]
    outs = [run(m) for m in models]
    assert len(traces) == 1
    assert all(o.shape == (6, 6) for o, _ in outs)
    assert not np.allclose(np.asarray(outs[0][0]), np.asarray(outs[1][0]))
    assert not bool(outs[0][1]) and bool(outs[-1][1])


def test_model_api_and_validation():
    m = expression_model(["p0*u - v", "u"], params=[2.0])
    assert m.n_params == 1 and m.fitted_values() == {"p0": 2.0}
    assert m.formula() == "du/dt = (p0 * u) - v; dv/dt = u"
    y = jnp.ones((2, 4))
    np.testing.assert_allclose(np.asarray(m.bind(None).rates(0.0, y)), [[1.0] * 4] * 2)
    np.testing.assert_allclose(np.asarray(m.observe(jnp.zeros((2, 4)))), -80.0)
    p = m.perturb(jax.random.PRNGKey(0), 0.5)
    assert float(p.params[0]) != 2.0 and np.allclose(np.asarray(p.params[1:]), 0.5)
    flt = m.trainable_filter()
    assert flt.params is True and flt.obs_gain is False
    # numpy and JAX scalars are accepted where numbers are expected
    m2 = expression_model(["p0*u - v", "u"], params=[np.float32(2.0)], max_params=np.int64(8),
                          dt=jnp.asarray(0.05), state_bounds=[(-1, 2), (np.float64(-1), 5)])
    assert m2.default_dt == pytest.approx(0.05) and m2.n_params == 1
    assert random_program(jax.random.PRNGKey(0), STATES, np.int32(2), jnp.asarray(2))
    with pytest.raises(ExpressionError, match="missing"):
        expression_model({"u": "u"})
    with pytest.raises(ValueError, match="state name"):
        expression_model(["u", "u"], state_names=("u", "exp"))
    with pytest.raises(ValueError, match="params"):
        expression_model(["p0", "u"], params=[math.nan])
