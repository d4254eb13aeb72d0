"""The layers of aode/ go one way: the static import graph has no cycle, the configuration
imports nothing above it, and the experiment prepares the synthetic corpus like any other.

The graph is read from the source (ast), not by importing: every ``import`` and ``from ...
import`` of a module counts, at module level or inside a function, class or ``if``, since an
import in a function is a dependency all the same (it only runs later). Importing
``aode.a.b`` also runs the package ``aode.a``, so the importer depends on that package too,
except on its own enclosing packages, which Python has always loaded before the module runs
(``import aode.merge`` inside ``aode.merge.registry`` loads nothing). Imports by name at run
time (``importlib.import_module(dotted)``: a YAML's ``prepare`` function, a corpus recipe's
preparation) are data, not edges.
"""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "aode")

# What aode.config may import: the modules below it, which import no AoDE module themselves.
BELOW_CONFIG = {"aode.text", "aode.scenarios"}


def _modules(package_dir=PACKAGE, package="aode"):
    """``{dotted name: path}`` of every module of the package (a package by its own name)."""
    modules = {}
    for folder, _, files in os.walk(package_dir):
        for file in files:
            if file.endswith(".py"):
                path = os.path.join(folder, file)
                parts = [package, *os.path.relpath(path, package_dir)[:-3].split(os.sep)]
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                modules[".".join(parts)] = path
    return modules


def _ancestors(name):
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def import_graph(package_dir=PACKAGE, package="aode"):
    """``{module: {aode modules it imports}}`` (module docstring)."""
    modules = _modules(package_dir, package)

    def target(name):  # the module a dotted name is, or lies in
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for name, path in modules.items():
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        here = name if path.endswith("__init__.py") else name.rpartition(".")[0]
        found = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found.update(target(alias.name) for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = here.split(".")[: len(here.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    found.add(full if full in modules else target(base))
        found.discard(None)
        for imported in list(found):  # importing a.b.c runs a.b first
            found.update(a for a in _ancestors(imported) if a in modules and a != package)
        found -= {name} | _ancestors(name)
        graph[name] = found
    return graph


def cycles(graph):
    """The strongly connected components with more than one module (Tarjan), sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def reachable(graph, start):
    seen, todo = set(), [start]
    while todo:
        for w in graph.get(todo.pop(), ()):
            if w not in seen:
                seen.add(w)
                todo.append(w)
    return seen


@pytest.fixture(scope="module")
def graph():
    return import_graph()


def test_the_graph_is_read(graph):
    """The reader finds what the tests below rely on (a broken reader would pass them all)."""
    assert {"aode.config", "aode.experiment", "aode.pipeline", "aode.merge", "aode.merge.registry"} <= set(graph)
    assert "aode.config" in graph["aode.experiment"] and "aode.pipeline" in graph["aode.experiment"]
    assert {"aode.merge", "aode.merge.inputs", "aode.lineage"} <= graph["aode.pipeline"]  # function-level ones too
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles(graph):
    found = cycles(graph)
    assert not found, "import cycles among aode modules (each a set of modules that import each other): " + "; ".join(
        " <-> ".join(c) for c in found
    )


def test_config_imports_nothing_above_it(graph):
    above = sorted(graph["aode.config"] - BELOW_CONFIG)
    assert not above, f"aode.config imports {above}: it may import only {sorted(BELOW_CONFIG)}"
    for module in BELOW_CONFIG:
        assert not graph[module], f"{module} is below aode.config and imports no AoDE module, but: {graph[module]}"


def test_the_experiment_does_not_import_the_miniature(graph):
    """The synthetic corpus is a preparation like any other: named in the YAML, not imported."""
    mini = sorted(m for m in reachable(graph, "aode.experiment") if m == "aode.mini" or m.startswith("aode.mini."))
    assert not mini, f"aode.experiment imports {mini} (directly or through another module)"


def test_the_merge_recipe_is_an_entry_point():
    """recipes/average/merge.py parses, validates and calls aode.pipeline: no logic of its own."""
    with open(os.path.join(ROOT, "recipes", "average", "merge.py"), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    imported = {
        node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module.startswith("aode")
    }
    assert imported <= {"aode.cli", "aode.config", "aode.pipeline"}, imported
