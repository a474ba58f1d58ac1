r"""Free-form right-hand sides as data: a safe expression parser and a stack interpreter.

The *unstructured generation* baseline of LEADS lets a proposer (an LLM, or the
offline :func:`random_program` generator) write each state equation as a plain
mathematical expression, e.g. ``"8*u*(u - p0)*(1 - u) - u*v"``. Such text is never
``eval``'d: it is parsed with Python's :mod:`ast` (``mode="eval"``), checked against
a small whitelist, and compiled to a **fixed-size postfix program** (three padded
arrays: opcodes, integer operands, constants) that one JAX interpreter
(``lax.scan`` over a value stack) evaluates. The program is *data*, so every
expression model with the same state count and sizes shares ONE compiled program
(and stacks with others for batched fitting).

Grammar (everything else is rejected with an :class:`ExpressionError` naming the rule):

* numbers (finite int/float literals; not ``True``/``False``, complex or strings);
* names: the model's state names, parameters ``p0 .. p{n_params-1}`` (fitted), and
  ``lap_<state>`` -- the geometry's Laplacian of that state (1/cm^2 times state;
  zero on a geometry without edges), so an expression may couple nodes;
* ``+ - * /``, unary ``-`` and ``+``, and ``x ** n`` with an integer literal
  ``0 <= n <= 4``;
* the functions ``exp``, ``tanh``, ``sigmoid`` (one argument), ``min``, ``max``
  (two arguments).

Limits: at most ``MAX_CHARS`` characters, nesting depth ``MAX_DEPTH``, a program of at
most ``max_len`` instructions and a value stack of at most ``stack_size``.

Expression models carry **no stability guarantee** (this is the point of the
baseline): a division by zero or an overflowing ``exp`` gives a non-finite state,
which :func:`~leads_jax.simulate.simulate` records as divergence.

Python: :func:`parse_expression` (text -> checked AST), :func:`compile_program`
(-> :class:`Program`), :func:`evaluate_program` (JAX), :func:`program_to_text`
(inverse, canonical), :func:`expression_model` (expressions -> :class:`ExpressionModel`,
a compiled model ``fit`` accepts), :func:`random_program` (offline generator).

**References:** the stack-machine representation of expressions is the classical
postfix (reverse Polish) form of Burks, Warren & Wright, "An analysis of a logical
machine using parenthesis-free notation", *Math. Tables Aids Comput.* 8 (1954) 53-57;
LLM-written free-form equations as a baseline for structured discovery follow
Shojaee et al., "LLM-SR: Scientific equation discovery via programming with large
language models", ICLR 2025.
"""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Mapping, Sequence
from typing import SupportsFloat, SupportsIndex

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._custom_types import Array, Float, Int, PRNGKeyArray
from ..compile import AbstractCompiledModel, AbstractPlainBoundModel

__all__ = [
    "FUNCTIONS",
    "MAX_CHARS",
    "MAX_DEPTH",
    "MAX_EXPONENT",
    "BoundExpressionModel",
    "ExpressionError",
    "ExpressionModel",
    "Program",
    "compile_program",
    "evaluate_program",
    "expression_model",
    "parse_expression",
    "program_to_text",
    "random_program",
]

#: Longest accepted expression (characters).
MAX_CHARS = 2000
#: Deepest accepted nesting of the expression tree.
MAX_DEPTH = 32
#: Largest integer exponent of ``x ** n``.
MAX_EXPONENT = 4
#: Allowed functions and their arity.
FUNCTIONS = {"exp": 1, "tanh": 1, "sigmoid": 1, "min": 2, "max": 2}

# opcodes (stable: programs are data and may be saved)
NOP, CONST, LOAD, ADD, SUB, MUL, DIV, POW, NEG, EXP, TANH, SIGMOID, MIN, MAX = range(14)
_BINARY = {ast.Add: ADD, ast.Sub: SUB, ast.Mult: MUL, ast.Div: DIV}
_FUNC_OP = {"exp": EXP, "tanh": TANH, "sigmoid": SIGMOID, "min": MIN, "max": MAX}
_SYMBOL = {ADD: "+", SUB: "-", MUL: "*", DIV: "/"}
_NAME_OF_OP = {v: k for k, v in _FUNC_OP.items()}
_PARAM = re.compile(r"p(0|[1-9][0-9]*)\Z")


class ExpressionError(ValueError):
    """An expression outside the grammar. ``rule`` names the broken rule (stable
    identifiers: ``syntax``, ``too-long``, ``too-deep``, ``forbidden-syntax``,
    ``unknown-name``, ``unknown-function``, ``arity``, ``bad-exponent``,
    ``bad-constant``, ``program-too-long``, ``stack-too-deep``, ``equations``);
    ``detail`` says what to change, phrased so that an LLM can correct itself."""

    def __init__(self, rule: str, detail: str, *, expression: str | None = None,
                 column: int | None = None):
        self.rule = rule
        self.detail = detail
        self.expression = expression
        self.column = column
        where = f" (at character {column})" if column is not None else ""
        super().__init__(f"expression rejected [{rule}]{where}: {detail}")


# ---------------------------------------------------------------------------------------
# parsing
# ---------------------------------------------------------------------------------------
def _names(state_names: Sequence[str], n_params: int) -> dict[str, int]:
    """Name -> row of the interpreter's input table
    ``[states..., lap_states..., p0..p{max_params-1}]`` (params offset by 2 * n_states)."""
    s = list(state_names)
    table = {n: i for i, n in enumerate(s)}
    table.update({f"lap_{n}": len(s) + i for i, n in enumerate(s)})
    table.update({f"p{k}": 2 * len(s) + k for k in range(n_params)})
    return table


def _check_state_names(state_names: Sequence[str]) -> tuple[str, ...]:
    names = tuple(str(n) for n in state_names)
    if not names:
        raise ValueError("state_names is empty; give at least one state")
    if len(set(names)) != len(names):
        raise ValueError(f"state_names must be unique; got {names}")
    for n in names:
        if not n.isidentifier() or n in FUNCTIONS or _PARAM.match(n) or n.startswith("lap_"):
            raise ValueError(
                f"state name {n!r} must be a Python identifier that is not a function "
                f"{sorted(FUNCTIONS)}, a parameter name p<k> or start with 'lap_'"
            )
    return names


def parse_expression(text: str, state_names: Sequence[str],
                     n_params: SupportsIndex) -> ast.expr:
    """Parse and check one right-hand side; returns the checked :mod:`ast` tree.

    Raises :class:`ExpressionError` for anything outside the grammar (module docstring).
    """
    if not isinstance(text, str):
        raise ExpressionError("syntax",
                              f"an expression must be a string, got {type(text).__name__}")
    if len(text) > MAX_CHARS:
        raise ExpressionError(
            "too-long", f"the expression has {len(text)} characters; the limit is {MAX_CHARS}",
        )
    if not text.strip():
        raise ExpressionError("syntax", "the expression is empty", expression=text)
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as e:
        rule = "too-deep" if "nested" in str(e.msg) or "complex" in str(e.msg) else "syntax"
        raise ExpressionError(
            rule, f"not a valid expression: {e.msg}", expression=text, column=e.offset
        ) from None
    except (RecursionError, MemoryError, ValueError) as e:
        raise ExpressionError(
            "too-deep", f"the parser gave up ({type(e).__name__}); simplify the expression",
            expression=text,
        ) from None
    names = _names(state_names, n_params)
    _check(tree.body, names, text, n_params, depth=1)
    return tree.body


def _check(node, names, text, n_params, depth):
    col = getattr(node, "col_offset", None)
    if depth > MAX_DEPTH:
        raise ExpressionError(
            "too-deep", f"the expression nests deeper than {MAX_DEPTH} levels", expression=text,
            column=col,
        )
    err = lambda rule, msg: ExpressionError(rule, msg, expression=text, column=col)  # noqa: E731
    if isinstance(node, ast.Constant):
        v = node.value
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise err("bad-constant", f"only numbers are allowed as literals, not {v!r}")
        if not math.isfinite(float(v)) or abs(float(v)) > 1e30:
            raise err("bad-constant", f"the number {v!r} is not finite or too large (|x| <= 1e30)")
        return
    if isinstance(node, ast.Name):
        if node.id not in names:
            hint = (f"; parameters are p0..p{n_params - 1}" if n_params else
                    "; this model has no parameters")
            if _PARAM.match(node.id):
                raise err("unknown-name", f"parameter {node.id!r} does not exist{hint}")
            valid = [n for n in names if not _PARAM.match(n)]
            raise err("unknown-name", f"unknown name {node.id!r}; valid names are {valid}{hint}")
        return
    if isinstance(node, ast.UnaryOp):
        if not isinstance(node.op, (ast.USub, ast.UAdd)):
            raise err("forbidden-syntax", f"the operator {type(node.op).__name__} is not allowed; "
                      "use unary - or +")
        _check(node.operand, names, text, n_params, depth + 1)
        return
    if isinstance(node, ast.BinOp):
        if isinstance(node.op, ast.Pow):
            e = node.right
            ok = (isinstance(e, ast.Constant) and not isinstance(e.value, bool)
                  and isinstance(e.value, (int, float)) and math.isfinite(float(e.value))
                  and float(e.value) == int(e.value) and 0 <= int(e.value) <= MAX_EXPONENT)
            if not ok:
                raise err("bad-exponent", "x ** n needs an integer literal exponent "
                          f"0 <= n <= {MAX_EXPONENT} (write exp(...) or a product otherwise)")
            _check(node.left, names, text, n_params, depth + 1)
            return
        if type(node.op) not in _BINARY:
            raise err("forbidden-syntax", f"the operator {type(node.op).__name__} is not "
                      "allowed; use + - * / and ** with a small integer exponent")
        _check(node.left, names, text, n_params, depth + 1)
        _check(node.right, names, text, n_params, depth + 1)
        return
    if isinstance(node, ast.Call):
        f = node.func
        if not isinstance(f, ast.Name):
            raise err("forbidden-syntax", "only the plain functions "
                      f"{sorted(FUNCTIONS)} may be called (no attributes or expressions)")
        if f.id not in FUNCTIONS:
            raise err("unknown-function", f"unknown function {f.id!r}; allowed functions are "
                      f"{sorted(FUNCTIONS)}")
        if node.keywords or any(isinstance(a, ast.Starred) for a in node.args):
            raise err("arity", f"{f.id}() takes positional arguments only")
        if len(node.args) != FUNCTIONS[f.id]:
            raise err("arity", f"{f.id}() takes {FUNCTIONS[f.id]} argument(s), "
                      f"got {len(node.args)}")
        for a in node.args:
            _check(a, names, text, n_params, depth + 1)
        return
    raise err("forbidden-syntax", f"{type(node).__name__} is not part of the expression "
              "grammar (numbers, names, + - * / **, exp, tanh, sigmoid, min, max)")


# ---------------------------------------------------------------------------------------
# programs
# ---------------------------------------------------------------------------------------
class Program(eqx.Module):
    """Postfix programs, one per equation, padded with ``NOP`` to ``max_len``.

    - `ops` ``[equation, max_len]`` int32 opcodes;
    - `args` ``[equation, max_len]`` int32 operands (row of the input table for LOAD);
    - `consts` ``[equation, max_len]`` float constants (for CONST; exponent for POW);
    - `stack_size` (static): the value-stack depth the interpreter allocates.
    """

    ops: Int[Array, "equation length"]
    args: Int[Array, "equation length"]
    consts: Float[Array, "equation length"]
    stack_size: int = eqx.field(static=True)


def _emit(node, names, out):
    if isinstance(node, ast.Constant):
        out.append((CONST, 0, float(node.value)))
    elif isinstance(node, ast.Name):
        out.append((LOAD, names[node.id], 0.0))
    elif isinstance(node, ast.UnaryOp):
        _emit(node.operand, names, out)
        if isinstance(node.op, ast.USub):
            out.append((NEG, 0, 0.0))
    elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
        _emit(node.left, names, out)
        out.append((POW, 0, float(int(node.right.value))))
    elif isinstance(node, ast.BinOp):
        _emit(node.left, names, out)
        _emit(node.right, names, out)
        out.append((_BINARY[type(node.op)], 0, 0.0))
    elif isinstance(node, ast.Call):
        for a in node.args:
            _emit(a, names, out)
        out.append((_FUNC_OP[node.func.id], 0, 0.0))
    else:  # unreachable after _check
        raise ExpressionError("forbidden-syntax", f"{type(node).__name__} cannot be compiled")


def _stack_depth(code) -> int:
    depth = peak = 0
    for op, _, _ in code:
        if op in (CONST, LOAD):
            depth += 1
        elif op in (ADD, SUB, MUL, DIV, MIN, MAX):
            depth -= 1
        peak = max(peak, depth)
    return peak


def compile_program(
    expressions: Sequence[str],
    state_names: Sequence[str],
    n_params: SupportsIndex,
    *,
    max_params: SupportsIndex | None = None,
    max_len: SupportsIndex = 64,
    stack_size: SupportsIndex = 16,
) -> Program:
    """Compile one expression per state into a padded :class:`Program`.

    **Arguments:**

    - `expressions`: the right-hand side of each state, in ``state_names`` order.
    - `state_names`: the states (the first is voltage-like).
    - `n_params`: parameters ``p0 .. p{n_params-1}`` the expressions may use.
    - `max_params`: size of the parameter table (default `n_params`); models with
      the same `max_params` share a compiled program whatever their `n_params`.
    - `max_len`, `stack_size`: the static program length and stack depth.
    """
    names = _check_state_names(state_names)
    n_params = int(n_params)
    max_params = n_params if max_params is None else int(max_params)
    max_len, stack_size = int(max_len), int(stack_size)
    if not 0 <= n_params <= max_params:
        raise ValueError(f"need 0 <= n_params ({n_params}) <= max_params ({max_params})")
    if isinstance(expressions, str) or len(expressions) != len(names):
        got = 1 if isinstance(expressions, str) else len(expressions)
        raise ExpressionError("equations", f"give one expression per state {list(names)}; "
                              f"got {got}")
    table = _names(names, n_params)
    ops = np.zeros((len(names), max_len), np.int32)
    args = np.zeros((len(names), max_len), np.int32)
    consts = np.zeros((len(names), max_len), np.float32)
    for i, text in enumerate(expressions):
        tree = parse_expression(text, names, n_params)
        code: list = []
        _emit(tree, table, code)
        if len(code) > max_len:
            raise ExpressionError(
                "program-too-long", f"d{names[i]}/dt compiles to {len(code)} instructions; "
                f"the limit is {max_len}: simplify it", expression=text)
        if _stack_depth(code) > stack_size:
            raise ExpressionError(
                "stack-too-deep", f"d{names[i]}/dt needs a value stack of {_stack_depth(code)}; "
                f"the limit is {stack_size}: nest less", expression=text)
        for j, (op, a, c) in enumerate(code):
            ops[i, j], args[i, j], consts[i, j] = op, a, c
    return Program(jnp.asarray(ops), jnp.asarray(args), jnp.asarray(consts), int(stack_size))


def _fmt_const(c: float) -> str:
    """Shortest text that reads back to the same float32 (programs store float32)."""
    if float(c).is_integer() and abs(c) < 1e15:
        return repr(int(c))
    return str(np.float32(c))


def program_to_text(program: Program, state_names: Sequence[str],
                    n_params: SupportsIndex | None = None) -> list[str]:
    """The canonical text of each equation (fully parenthesised infix); parsing it
    again gives the same program. Host-side; works on one (unstacked) program."""
    names = _check_state_names(state_names)
    ops, args, consts = (np.asarray(x) for x in (program.ops, program.args, program.consts))
    n_in = 2 * len(names)
    inv = {i: n for i, n in enumerate(names)}
    inv.update({len(names) + i: f"lap_{n}" for i, n in enumerate(names)})
    out = []
    for row in range(ops.shape[0]):
        st: list[str] = []
        for op, a, c in zip(ops[row], args[row], consts[row], strict=True):
            op = int(op)
            if op == NOP:
                continue
            if op == CONST:
                st.append(_fmt_const(float(c)) if c >= 0 else f"({_fmt_const(float(c))})")
            elif op == LOAD:
                st.append(inv.get(int(a), f"p{int(a) - n_in}"))
            elif op == NEG:
                st.append(f"(-{st.pop()})")
            elif op == POW:
                st.append(f"({st.pop()} ** {int(c)})")
            elif op in (EXP, TANH, SIGMOID):
                st.append(f"{_NAME_OF_OP[op]}({st.pop()})")
            else:
                b, x = st.pop(), st.pop()
                if op in (MIN, MAX):
                    st.append(f"{_NAME_OF_OP[op]}({x}, {b})")
                else:
                    st.append(f"({x} {_SYMBOL[op]} {b})")
        if len(st) != 1:
            raise ValueError(f"equation {row} is not a well-formed program (stack {len(st)})")
        text = st[0]
        if text.startswith("(") and _balanced_outer(text):
            text = text[1:-1]
        out.append(text)
    return out


def _balanced_outer(text: str) -> bool:
    depth = 0
    for i, ch in enumerate(text):
        depth += ch == "("
        depth -= ch == ")"
        if depth == 0 and i < len(text) - 1:
            return False
    return True


def _run_one(ops, args, consts, table, stack_size: int):
    """Interpret one postfix program on the input table ``(row, node)`` -> ``(node,)``."""
    n = table.shape[-1]
    stack0 = jnp.zeros((stack_size + 1, n), table.dtype)

    def step(carry, ins):
        stack, sp = carry
        op, a, c = ins
        # Programs are validated before tracing (compile_program), so an operator always
        # finds its operands; the max(., 0) only serves pushes, which ignore top/below.
        top = stack[jnp.maximum(sp - 1, 0)]
        below = stack[jnp.maximum(sp - 2, 0)]
        is_ = lambda k: op == k  # noqa: E731
        # Every branch is computed under vmap; feed the others a harmless value so
        # an inactive branch never makes a NaN that a select would turn into NaN
        # gradients (the classic jnp.where trap).
        safe_den = jnp.where(is_(DIV), top, 1.0)
        exp_in = jnp.where(is_(EXP), top, 0.0)
        pow_in = jnp.where(is_(POW), top, 0.0)
        t2 = pow_in * pow_in
        powv = jnp.where(c == 0, 1.0, jnp.where(c == 1, pow_in, jnp.where(
            c == 2, t2, jnp.where(c == 3, t2 * pow_in, t2 * t2))))
        # `a` is a validated row (compile_program) for LOAD and 0 otherwise.
        loaded = table[a]
        vals = jnp.stack([
            top,  # NOP (unused)
            jnp.broadcast_to(c, (n,)).astype(table.dtype),
            loaded,
            below + top,
            below - top,
            below * top,
            below / safe_den,
            powv,
            -top,
            jnp.exp(exp_in),
            jnp.tanh(top),
            jax.nn.sigmoid(top),
            jnp.minimum(below, top),
            jnp.maximum(below, top),
        ])
        value = vals[op]
        push = (op == CONST) | (op == LOAD)
        binary = (op >= ADD) & (op <= DIV) | (op == MIN) | (op == MAX)
        dst = jnp.where(push, sp, jnp.where(binary, sp - 2, sp - 1))
        dst = jnp.where(op == NOP, stack_size, dst)  # NOP writes the scratch row
        stack = stack.at[dst].set(jnp.where(op == NOP, stack[dst], value))
        sp = sp + jnp.where(push, 1, 0) - jnp.where(binary, 1, 0)
        return (stack, sp), None

    (stack, _), _ = jax.lax.scan(step, (stack0, jnp.asarray(0, jnp.int32)), (ops, args, consts))
    return stack[0]


def evaluate_program(
    program: Program, table: Float[Array, "row node"]
) -> Float[Array, "equation node"]:
    """Evaluate every equation of `program` on the input table
    ``[states, lap_states, params]`` (rows, ``(row, node)``); JAX, jit/vmap/grad-able."""
    return jax.vmap(lambda o, a, c: _run_one(o, a, c, table, program.stack_size))(
        program.ops, program.args, program.consts
    )


# ---------------------------------------------------------------------------------------
# the compiled model
# ---------------------------------------------------------------------------------------
class BoundExpressionModel(AbstractPlainBoundModel):
    """An :class:`ExpressionModel` on one geometry (no closures, no gates)."""

    program: Program
    params: Float[Array, " param"]
    geometry: object

    def rates(self, t, y):
        n = y.shape[-1]
        geo = self.geometry
        if geo is not None and geo.n_edges > 0:
            lap = jax.vmap(geo.laplacian)(y)
        else:
            lap = jnp.zeros_like(y)
        p = jnp.broadcast_to(self.params[:, None], (self.params.shape[0], n)).astype(y.dtype)
        table = jnp.concatenate([y, lap, p], axis=0)
        return evaluate_program(self.program, table).astype(y.dtype)


class ExpressionModel(AbstractCompiledModel):
    """A model whose right-hand sides are free-form expressions compiled to data.

    Fitted: the parameter vector ``params`` (unconstrained reals; the first
    ``n_params`` are used, the rest pad the table to ``max_params``). Fixed data: the
    programs, the observation ``offset + gain * state[0]`` (mV), state bounds (leaving
    them is divergence), the resting state. No stability guarantee.

    Build with :func:`expression_model`. Models with the same state names,
    ``max_params``, ``max_len`` and ``stack_size`` have identical tree structures.
    """

    program: Program
    params: Float[Array, " param"]
    n_used: Int[Array, ""]
    bounds: Float[Array, "state 2"]
    rest: Float[Array, " state"]
    obs_offset: Float[Array, ""]
    obs_gain: Float[Array, ""]
    names: tuple[str, ...] = eqx.field(static=True)
    dt: float = eqx.field(static=True)

    @property
    def state_names(self) -> tuple[str, ...]:
        return self.names

    @property
    def state_bounds(self):
        return self.bounds

    @property
    def default_dt(self) -> float:
        return self.dt

    @property
    def n_nodes(self) -> None:
        return None

    def stable_dt(self, geometry, solver: str = "rk4") -> float:
        """Unknown (``inf``): free-form expressions have no measured stable step;
        divergence, if any, is recorded by the solver."""
        del geometry, solver
        return math.inf

    @property
    def n_params(self) -> int:
        """Number of fitted scalars (the parameters the expressions use)."""
        return int(self.n_used)

    def bind(self, geometry) -> BoundExpressionModel:
        return BoundExpressionModel(self.program, self.params, geometry)

    def observe(self, state):
        return self.obs_offset + self.obs_gain * state[0]

    def initial_state(self, n_nodes: int):
        return jnp.broadcast_to(self.rest[:, None], (self.rest.shape[0], n_nodes))

    def trainable_filter(self):
        f = jax.tree.map(lambda _: False, self)
        return eqx.tree_at(lambda m: m.params, f, True)

    def perturb(self, key: PRNGKeyArray, scale) -> ExpressionModel:
        """Restart noise on the used parameters (relative: ``p (1 + scale * N(0,1))``
        plus ``scale * 0.1 * N(0,1)`` so zeros move too)."""
        k1, k2 = jax.random.split(key)
        used = (jnp.arange(self.params.shape[0]) < self.n_used).astype(self.params.dtype)
        noise = self.params * scale * jax.random.normal(k1, self.params.shape) + (
            0.1 * scale * jax.random.normal(k2, self.params.shape))
        return eqx.tree_at(lambda m: m.params, self, self.params + used * noise)

    def fitted_values(self) -> dict[str, float]:
        """``{"p0": value, ...}`` of the used parameters (host-side)."""
        p = np.asarray(self.params)
        return {f"p{k}": float(p[k]) for k in range(int(self.n_used))}

    def expressions(self) -> list[str]:
        """The canonical text of each equation (decompiled from the program)."""
        return program_to_text(self.program, self.names)

    def formula(self) -> str:
        return "; ".join(f"d{n}/dt = {e}" for n, e in zip(self.names, self.expressions(),
                                                              strict=True))


def expression_model(
    expressions: Mapping[str, str] | Sequence[str],
    *,
    state_names: Sequence[str] = ("u", "v"),
    params: Sequence[SupportsFloat] | np.ndarray | jax.Array | None = None,
    n_params: SupportsIndex | None = None,
    max_params: SupportsIndex = 8,
    max_len: SupportsIndex = 64,
    stack_size: SupportsIndex = 16,
    state_bounds: Sequence[Sequence[SupportsFloat]] | np.ndarray | None = None,
    rest_state: Sequence[SupportsFloat] | np.ndarray | jax.Array | None = None,
    observe: Sequence[SupportsFloat] = (-80.0, 100.0),
    dt: SupportsFloat = 0.05,
) -> ExpressionModel:
    """Build an :class:`ExpressionModel` from one expression per state.

    **Arguments:**

    - `expressions`: ``{state: rhs}`` or a list in `state_names` order.
    - `state_names`: the states; the first is voltage-like (the stimulus adds to it
      and it is observed).
    - `params`: initial values of ``p0, p1, ...`` (default 0.5 each); `n_params`
      defaults to ``len(params)`` (or the highest ``p<k>`` used + 1).
    - `max_params`, `max_len`, `stack_size`: static sizes (shared compilation).
    - `state_bounds`: admissible range per state (default ``(-5, 5)``).
    - `rest_state`: initial (resting) state (default zeros).
    - `observe`: ``(offset, gain)``: observed mV = ``offset + gain * state[0]``.
    - `dt`: default step (ms).
    """
    names = _check_state_names(state_names)
    max_params, dt = int(max_params), float(dt)
    if isinstance(expressions, Mapping):
        unknown = sorted(set(expressions) - set(names))
        missing = [n for n in names if n not in expressions]
        if unknown or missing:
            raise ExpressionError(
                "equations", f"give exactly one expression per state {list(names)}; "
                f"unknown {unknown}, missing {missing}")
        exprs = [expressions[n] for n in names]
    else:
        exprs = list(expressions)
    if n_params is None:
        if params is not None:
            n_params = len(params)
        else:
            used = [int(m) for e in exprs if isinstance(e, str)
                    for m in re.findall(r"\bp(0|[1-9][0-9]*)\b", e)]
            n_params = max(used) + 1 if used else 0
    n_params = int(n_params)
    if n_params > max_params:
        raise ExpressionError("unknown-name", f"{n_params} parameters exceed the limit "
                              f"max_params={max_params}")
    p = np.full(max_params, 0.5, np.float32)
    if params is not None:
        vals = np.asarray([float(v) for v in params], np.float32)
        if vals.shape != (n_params,) or not np.all(np.isfinite(vals)):
            raise ValueError(f"params must be {n_params} finite numbers; got {list(params)}")
        p[:n_params] = vals
    program = compile_program(exprs, names, n_params, max_params=max_params, max_len=max_len,
                              stack_size=stack_size)
    b = np.asarray([(-5.0, 5.0)] * len(names) if state_bounds is None else state_bounds,
                   np.float32)
    if b.shape != (len(names), 2) or not np.all(b[:, 0] < b[:, 1]):
        raise ValueError(f"state_bounds must be one (low, high) pair per state {names}")
    rest = np.zeros(len(names), np.float32) if rest_state is None else np.asarray(
        rest_state, np.float32)
    if rest.shape != (len(names),) or not np.all(np.isfinite(rest)):
        raise ValueError(f"rest_state must have one finite value per state {names}")
    off, gain = (float(x) for x in observe)
    if not (math.isfinite(off) and math.isfinite(gain) and gain != 0):
        raise ValueError(f"observe=(offset, gain) must be finite with gain != 0; got {observe}")
    if not (dt > 0 and math.isfinite(dt)):
        raise ValueError(f"dt must be a positive number of ms; got {dt}")
    return ExpressionModel(
        program=program,
        params=jnp.asarray(p),
        n_used=jnp.asarray(n_params, jnp.int32),
        bounds=jnp.asarray(b),
        rest=jnp.asarray(rest),
        obs_offset=jnp.asarray(off, jnp.float32),
        obs_gain=jnp.asarray(gain, jnp.float32),
        names=names,
        dt=float(dt),
    )


# ---------------------------------------------------------------------------------------
# the offline generator
# ---------------------------------------------------------------------------------------
_RANDOM_CONSTANTS = (0.1, 0.5, 1.0, 2.0, 3.0)


def random_program(
    key: PRNGKeyArray,
    state_names: Sequence[str],
    n_params: SupportsIndex,
    max_depth: SupportsIndex = 3,
) -> dict[str, str]:
    """Random right-hand sides over `state_names`: the offline proposer of the
    unstructured-generation baseline (deterministic for `key`).

    Each equation is a random expression tree grown top-down (Koza's "grow" method,
    *Genetic Programming*, MIT Press 1992): at depth ``d < max_depth`` a node is an
    operator with probability 0.7 (``+``, ``-``, ``*`` with weight 3 each, ``/`` 1,
    ``** 2``/``** 3`` 1, ``tanh``/``sigmoid``/``exp``/unary ``-`` 1 each) and
    otherwise a terminal; terminals are a state (weight 4), a parameter ``p<k>``
    (weight 3 when `n_params` > 0) or a constant from ``(0.1, 0.5, 1, 2, 3)``
    (weight 2). ``exp`` and ``/`` are what make many such programs diverge, as they
    should for this baseline.

    **Returns:** ``{state: expression}``, each accepted by :func:`parse_expression`.
    """
    names = _check_state_names(state_names)
    n_params, max_depth = int(n_params), int(max_depth)
    if max_depth < 1:
        raise ValueError(f"max_depth must be >= 1; got {max_depth}")
    seed = np.asarray(jax.random.key_data(key)).ravel().astype(np.uint32)
    rng = np.random.default_rng(seed.tolist())

    def terminal():
        w = np.array([4.0, 3.0 if n_params > 0 else 0.0, 2.0])
        kind = rng.choice(3, p=w / w.sum())
        if kind == 0:
            return names[rng.integers(len(names))]
        if kind == 1:
            return f"p{rng.integers(n_params)}"
        return _fmt_const(_RANDOM_CONSTANTS[rng.integers(len(_RANDOM_CONSTANTS))])

    ops = ["+", "-", "*", "/", "**", "tanh", "sigmoid", "exp", "neg"]
    w = np.array([3, 3, 3, 1, 1, 1, 1, 1, 1], float)

    def grow(depth):
        if depth >= max_depth or rng.random() >= 0.7:
            return terminal()
        op = ops[rng.choice(len(ops), p=w / w.sum())]
        if op in "+-*/":
            return f"({grow(depth + 1)} {op} {grow(depth + 1)})"
        if op == "**":
            return f"({grow(depth + 1)} ** {int(rng.integers(2, 4))})"
        if op == "neg":
            return f"(-{grow(depth + 1)})"
        return f"{op}({grow(depth + 1)})"

    return {n: grow(0) for n in names}
