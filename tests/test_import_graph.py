"""No import cycles between the modules of leads_jax and ecg_world, read from their source.

The graph is built with ``ast`` from every ``.py`` file of the packages: one node per module
(a package is its ``__init__``), one edge per ``import`` / ``from ... import`` statement
anywhere in the file (module level or inside a function: a function-level import that
closes a cycle is still a cycle, it only runs later), relative imports resolved against the
importing module, and ``from pkg import name`` pointing at the submodule ``pkg.name`` when
that file exists (else at ``pkg``). The implicit import of a parent package's ``__init__``
is not an edge (it is already being imported when its children import each other).
Imports under ``if TYPE_CHECKING:`` never run and are left out. Only edges between modules
of the scanned packages count.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("leads_jax", "ecg_world")


def module_files(root: pathlib.Path, packages) -> dict[str, pathlib.Path]:
    """``{dotted module name: file}`` of every module of ``packages`` under ``root``."""
    out = {}
    for pkg in packages:
        for f in sorted((root / pkg).rglob("*.py")):
            parts = f.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = f
    return out


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST):
    """Every Import/ImportFrom node, skipping ``if TYPE_CHECKING:`` bodies."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def import_graph(root: pathlib.Path, packages=PACKAGES) -> dict[str, set[str]]:
    """``{module: {imported modules of the same packages}}`` (see the module docstring)."""
    files = module_files(root, packages)
    graph: dict[str, set[str]] = {m: set() for m in files}
    for mod, path in files.items():
        is_pkg = path.name == "__init__.py"
        base = mod.split(".") if is_pkg else mod.split(".")[:-1]
        for node in _imports(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                if node.level:
                    up = base[:len(base) - (node.level - 1)] if node.level > 1 else base
                    prefix = ".".join(up + ([node.module] if node.module else []))
                else:
                    prefix = node.module or ""
                subs = [f"{prefix}.{a.name}" for a in node.names
                        if f"{prefix}.{a.name}" in files]
                # "from pkg import submodule" imports the submodule; any other name is an
                # attribute of pkg itself
                targets = subs + ([prefix] if len(subs) < len(node.names) else [])
            for t in targets:
                # "import a.b.c" imports a.b.c; point at the deepest scanned module
                while t and t not in files:
                    t = t.rpartition(".")[0]
                if t and t != mod:
                    graph[mod].add(t)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), sorted."""
    index, low, on, stack, out = {}, {}, set(), [], []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def _describe(graph, comp) -> str:
    edges = [f"{a} -> {b}" for a in comp for b in sorted(graph[a]) if b in comp]
    return f"cycle among {comp}: " + "; ".join(edges)


def test_no_import_cycles():
    graph = import_graph(ROOT)
    assert "ecg_world.pharmacology" in graph and "leads_jax.physics.mcsharry" in graph
    cycles = find_cycles(graph)
    assert not cycles, "\n".join(_describe(graph, c) for c in cycles)


def _write(root: pathlib.Path, files: dict[str, str]):
    for name, text in files.items():
        f = root / name
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)


@pytest.mark.parametrize("b_text", [
    "from .a import x\n",                                   # module level, relative
    "import fakepkg.a\n",                                   # absolute
    "def f():\n    from . import a\n    return a\n",        # function level
    "from fakepkg.sub import c\n",                          # through a subpackage
])
def test_detector_finds_a_temporary_cycle(tmp_path, b_text):
    _write(tmp_path, {
        "fakepkg/__init__.py": "",
        "fakepkg/a.py": "from .b import y\nx = 1\n",
        "fakepkg/b.py": b_text + "y = 2\n",
        "fakepkg/sub/__init__.py": "",
        "fakepkg/sub/c.py": "from ..a import x\nc = x\n",
        "fakepkg/ok.py": "import os\nfrom typing import TYPE_CHECKING\n"
                         "if TYPE_CHECKING:\n    from .a import x\n",
    })
    graph = import_graph(tmp_path, ("fakepkg",))
    cycles = find_cycles(graph)
    assert cycles and "fakepkg.a" in cycles[0] and "fakepkg.b" in cycles[0]
    assert all("fakepkg.ok" not in c for c in cycles)  # TYPE_CHECKING imports do not count


def test_detector_passes_an_acyclic_package(tmp_path):
    _write(tmp_path, {
        "fakepkg/__init__.py": "from .a import x as x\n",
        "fakepkg/a.py": "from .b import y\nx = y\n",
        "fakepkg/b.py": "import json\ny = 2\n",
    })
    graph = import_graph(tmp_path, ("fakepkg",))
    assert graph["fakepkg"] == {"fakepkg.a"} and graph["fakepkg.a"] == {"fakepkg.b"}
    assert find_cycles(graph) == []
