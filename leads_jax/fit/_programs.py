"""The engine's large programs, optionally kept on disk as exported StableHLO.

JAX's persistent compilation cache (:func:`leads_jax.enable_compilation_cache`) saves
the XLA compilation of a program, but not its tracing: a new process still traces and
lowers every program to compute the cache key, and for the fitting engine's training
chunk (a vmapped, reverse-mode diffrax solve inside ``lax.scan``) and its evaluation
that Python time is most of a warm ``fit``. When the cache is on, the engine's two
large programs (``chunk``: ``eval_every`` optimisation steps; ``eval``: the loss of
every member on one split) are therefore also *exported* (``jax.export``, JAX's
serialisation of a traced and lowered program; no pickle) into
``<cache>/leads_jax_exported/``, and a later process deserialises and calls them
instead of tracing (their compilation then comes from the persistent cache).

An exported program is only reused when it is the same program. Its key covers:

- the program (name, the rollout, e.g. ``SimulateRollout(solver, dt, max_steps,
  aphynity)``, the optimizer rule and clipping, the chunk length, batched or not);
- the pytree structure of every argument, with the type and module of every node
  and the value of every static (non-array) field and leaf, and the shape, dtype and
  weak type of every array leaf;
- the source code of the whole ``leads_jax`` package (a digest of its ``.py``
  files), the versions of jax, jaxlib, equinox, diffrax, lineax, optax and numpy, the
  backend platform and device kind, ``jax_enable_x64``, the default matmul precision
  and ``EQX_ON_ERROR``.

Anything whose identity cannot be written down stably is not exported and runs
through ``eqx.filter_jit`` as usual: a function or object from outside the packages
above (e.g. the user's vector field in
:func:`~leads_jax.compile.compile_vector_field`, whose code is not in the key), a
lambda or local function, an object whose text form holds a memory address, and
sharded members (a ``mesh``). With ``EQX_ON_ERROR=raise`` (equinox's default) the
programs hold host callbacks, which can be neither exported nor read from JAX's cache,
so nothing is exported either.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import importlib.metadata
import json
import os
import pathlib
import sys
import types
import warnings
from collections.abc import Callable

import equinox as eqx
import equinox._errors as eqx_errors
import jax
import numpy as np

from .. import _cache
from ._io import atomic_write_bytes

FORMAT = 1
_TRUSTED = ("leads_jax", "equinox", "jax", "jaxlib", "optax", "diffrax", "lineax", "numpy",
            "builtins", "collections")
_BUILTIN_NODES = (tuple, list, dict, type(None))
_LIBRARIES = ("jax", "jaxlib", "equinox", "diffrax", "lineax", "optax", "numpy")


TRACES: collections.Counter = collections.Counter()  # exports traced in this process, by name


class _Unstable(Exception):
    """A part of a program's identity has no stable text form."""


def _trusted(obj) -> bool:
    module = getattr(obj, "__module__", None) or ""
    return module.split(".")[0] in _TRUSTED


def _name(obj) -> str:
    """``module.qualname`` of a trusted class or function that *is* the object of that
    name in its module (so the name identifies it; a lambda, a local function or an
    instance does not qualify)."""
    module, qual = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if not _trusted(obj) or not isinstance(qual, str) or module not in sys.modules:
        raise _Unstable(repr(obj))
    found = sys.modules[module]
    for part in qual.split("."):
        found = getattr(found, part, None)
    if found is not obj:
        raise _Unstable(repr(obj))
    return f"{module}.{qual}"


def _encode(obj):
    """A JSON-able, process-independent description of a static value, or _Unstable."""
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return repr(obj)  # exact (inf / nan too)
    if isinstance(obj, (np.generic,)):
        return [_name(type(obj)), repr(obj.item())]
    if isinstance(obj, (tuple, list)):
        return [type(obj).__name__, [_encode(o) for o in obj]]
    if isinstance(obj, (dict,)):
        return ["dict", [[_encode(k), _encode(v)] for k, v in obj.items()]]
    if isinstance(obj, (frozenset, set)):
        return ["set", sorted(json.dumps(_encode(o)) for o in obj)]
    if isinstance(obj, (type, types.FunctionType, types.BuiltinFunctionType)) or (
            callable(obj) and hasattr(obj, "__wrapped__")):  # e.g. jax.nn.tanh
        return ["ref", _name(obj)]
    text = repr(obj)
    if not _trusted(type(obj)) or " at 0x" in text or "object at" in text:
        raise _Unstable(text)
    return [_name(type(obj)), text]


def _encode_tree(treedef) -> list:
    """The pytree structure: every node's type (module + name), aux data and children."""
    node = treedef.node_data()
    if node is None:
        return ["*"]
    typ, aux = node
    name = typ.__name__ if typ in _BUILTIN_NODES else _name(typ)
    return [name, _encode(aux), [_encode_tree(c) for c in treedef.children()]]


@functools.lru_cache(maxsize=1)
def _environment() -> str:
    """What every key shares: the package source, library versions, backend, config."""
    root = pathlib.Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    versions = {}
    for lib in _LIBRARIES:
        try:
            versions[lib] = importlib.metadata.version(lib)
        except importlib.metadata.PackageNotFoundError:
            versions[lib] = None
    device = jax.devices()[0]
    return json.dumps({
        "format": FORMAT, "source": digest.hexdigest(), "versions": versions,
        "platform": device.platform, "device_kind": device.device_kind,
        "x64": bool(jax.config.jax_enable_x64),
        "matmul_precision": str(jax.config.jax_default_matmul_precision),
        "eqx_on_error": _on_error(),
    }, sort_keys=True)


def _on_error() -> str:
    """What equinox's runtime checks do (``EQX_ON_ERROR``, read by equinox at import)."""
    return str(getattr(eqx_errors, "EQX_ON_ERROR", os.environ.get("EQX_ON_ERROR", "raise")))


def _aval(x) -> list:
    return [list(np.shape(x)), str(x.dtype), bool(getattr(x, "weak_type", False))]


def _committed(x):
    if isinstance(x, jax.Array):
        return x if x.committed else jax.device_put(x, next(iter(x.devices())))
    return jax.device_put(x, jax.devices()[0])


class Program:
    """A jitted engine program (``eqx.filter_jit(fn)``) whose traced form can be kept on
    disk. `spec` is its static identity (hashable, with a stable text form: see the
    module docstring); `out_structure(*args)` gives the pytree structure of its output
    from its arguments (checked against the traced output when a program is exported)."""

    def __init__(self, fn: Callable, spec: tuple, out_structure: Callable):
        self.fn = fn
        self.jitted = eqx.filter_jit(fn)
        self.spec = spec
        self.out_structure = out_structure
        self._loaded: dict[str, Callable | None] = {}

    def __call__(self, *args):
        folder = _cache.exported_programs_folder()
        if folder is None or _on_error() not in ("nan", "off"):
            return self.jitted(*args)
        dynamic, static = eqx.partition(args, eqx.is_array)
        leaves, treedef = jax.tree.flatten(dynamic)
        if any(isinstance(x, jax.Array) and len(x.sharding.device_set) > 1 for x in leaves):
            return self.jitted(*args)  # sharded members: not exported
        try:
            key = hashlib.sha256(json.dumps([
                _environment(), _encode(self.spec), _encode_tree(treedef),
                _encode_tree(jax.tree.structure(static)), _encode(jax.tree.leaves(static)),
                [_aval(x) for x in leaves],
            ]).encode()).hexdigest()
        except _Unstable:
            return self.jitted(*args)
        if key not in self._loaded:
            self._loaded[key] = self._load(folder / f"{key}.jaxexport", treedef, static, leaves,
                                           args)
        call = self._loaded[key]
        if call is None:
            return self.jitted(*args)
        # committed inputs: a jit of an exported call is compiled anew when the same
        # arrays arrive once uncommitted (fresh from the host) and once committed
        return jax.tree.unflatten(self.out_structure(*args), call(*map(_committed, leaves)))

    def _load(self, path: pathlib.Path, treedef, static, leaves, args):
        """The exported program at `path`, or exported now (and written there)."""
        if path.is_file():
            try:
                return self._named(jax.export.deserialize(bytearray(path.read_bytes())).call)
            except Exception as e:  # a damaged or foreign file: trace again, overwrite it
                warnings.warn(f"exported program {path.name} unreadable ({e}); tracing it",
                              stacklevel=3)
        traced_tree = []

        def flat(*dyn):
            TRACES[self.spec[0]] += 1
            out = self.fn(*eqx.combine(jax.tree.unflatten(treedef, dyn), static))
            out_leaves, tree = jax.tree.flatten(out)
            traced_tree.append(tree)
            return out_leaves

        try:
            exported = jax.export.export(jax.jit(flat))(*leaves)
        except Exception as e:  # e.g. a custom call without a stability guarantee
            warnings.warn(f"program {self.spec[0]!r} not exported ({e}); it is traced in "
                          "every process", stacklevel=3)
            return None
        if traced_tree[-1] != self.out_structure(*args):
            return None  # an output this program cannot describe from its inputs
        try:
            atomic_write_bytes(path, bytes(exported.serialize()))
        except OSError as e:
            warnings.warn(f"exported program not written to {path.parent}: {e}", stacklevel=3)
        return self._named(exported.call)

    def _named(self, call: Callable) -> Callable:
        """``jax.jit(call)`` under the program's own name (JAX's compile events and
        profiles then name an exported program as they name its traced form)."""
        def program(*leaves):
            return call(*leaves)

        program.__name__ = program.__qualname__ = getattr(self.fn, "__name__", "program")
        return jax.jit(program)
