"""The import graph of the ``elmo`` package: inference code never reaches training code,
and imports go one way.

The graph is read from the source with :mod:`ast`: every ``import elmo...`` and
``from elmo... import ...`` statement, at module level or inside functions, is an edge.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGE = "elmo"

# Library modules that must work without the training code: loading, running and
# converting a model. (The CLI's command modules legitimately import training code.)
INFERENCE = (
    "elmo.chars",
    "elmo.config",
    "elmo.convert",
    "elmo.model",
    "elmo.names",
    "elmo.tfcheckpoint",
    "elmo.weights",
    "elmo.engine.*",
)
TRAINING = "elmo.train"


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted((SRC / PACKAGE).rglob("*.py"))}


def _imported(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, known: set[str]) -> set[str]:
    """The ``elmo`` modules one import statement of ``module`` names."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:  # relative: resolved against the importing module's package
            package = module.split(".") if is_package else module.split(".")[:-1]
            anchor = package[: len(package) - (node.level - 1)]
            base = ".".join([*anchor, base] if base else anchor)
        # ``from elmo.x import y`` imports the module elmo.x.y when there is one, else elmo.x.
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
    found = set()
    for name in names:
        # ``import elmo.x.y`` runs elmo.x.y; a name inside a module maps to that module.
        while name and name not in known:
            name = name.rpartition(".")[0]
        if _in_package(name, PACKAGE):
            found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    """Each module of ``elmo`` → the ``elmo`` modules it imports (module or function level)."""
    modules = _modules()
    known = set(modules)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        edges: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                edges |= _imported(node, name, path.name == "__init__.py", known)
        edges.discard(name)
        graph[name] = edges
    return graph


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    """The modules ``start`` imports, directly or through others."""
    seen: set[str] = set()
    todo = list(graph.get(start, ()))
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(graph.get(name, ()))
    return seen


def strongly_connected_components(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components of ``graph`` (Tarjan's algorithm, iterative).

    A component of more than one module is an import cycle.
    """
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                components.append(component)
    return components


def _cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    return [c for c in strongly_connected_components(graph) if len(c) > 1]


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


def _in_package(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _inference_modules(graph: dict[str, set[str]]) -> list[str]:
    found = []
    for pattern in INFERENCE:
        if pattern.endswith(".*"):
            found += [m for m in graph if _in_package(m, pattern[:-2])]
        else:
            found.append(pattern)
    return sorted(found)


def test_the_graph_is_read(graph):
    assert "elmo.train.lm" in graph["elmo.train.trainer"]
    assert "elmo.tfcheckpoint" in graph["elmo.convert"]
    assert all(m in graph for m in _inference_modules(graph))


def test_inference_code_does_not_reach_training_code(graph):
    offenders = {}
    for module in _inference_modules(graph):
        training = sorted(m for m in reachable(graph, module) if _in_package(m, TRAINING))
        if training:
            offenders[module] = training
    assert not offenders, f"inference modules that import training code (directly or not): {offenders}"


def test_training_data_and_vocabulary_import_one_way(graph):
    cycles = [c for c in _cycles(graph) if {"elmo.train.data", "elmo.train.vocab"} & c]
    assert not cycles, f"import cycles: {cycles}"
    assert "elmo.train.data" not in reachable(graph, "elmo.train.vocab")


def test_strongly_connected_components_finds_cycles():
    toy = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}}
    assert sorted(map(sorted, _cycles(toy))) == [["a", "b", "c"]]
    assert sorted(map(sorted, strongly_connected_components(toy))) == [["a", "b", "c"], ["d"], ["e"]]


# The layers of docs/ARCHITECTURE.md, lowest first: a module imports only from its own
# layer or lower ones. A package name covers its submodules.
LAYERS = [
    [
        "elmo.errors",
        "elmo.choices",
        "elmo.atomic",
        "elmo.files",
        "elmo.chars",
        "elmo.config",
        "elmo.names",
        "elmo.default_model",
    ],
    ["elmo.model", "elmo.mix", "elmo.weights", "elmo.tfcheckpoint", "elmo.inputs", "elmo.testing"],
    ["elmo.engine"],
    ["elmo.runner", "elmo.download", "elmo.resolve", "elmo.convert"],
    ["elmo.train"],
    [
        "elmo.module",
        "elmo.embedder",
        "elmo.embedfile",
        "elmo.corpus",
        "elmo.ray",
        "elmo.loading",
        "elmo.allennlp",
        "elmo.vocab_embeddings",
        "elmo",
    ],
    ["elmo.commands", "elmo.serve", "elmo.cli", "elmo.__main__"],
]


def _layer(module: str) -> int | None:
    best: tuple[int, int] | None = None
    for index, names in enumerate(LAYERS):
        for name in names:
            covers = module == name or module.startswith(name + ".")
            if covers and (best is None or len(name) > best[1]):
                best = (index, len(name))
    return None if best is None else best[0]


def test_no_import_cycles_anywhere(graph):
    assert not _cycles(graph), f"import cycles: {_cycles(graph)}"


def test_nothing_imports_upward(graph):
    unplaced = sorted(m for m in graph if _layer(m) is None)
    assert not unplaced, f"modules in no layer of docs/ARCHITECTURE.md (add them to LAYERS): {unplaced}"
    upward = sorted((m, d) for m, deps in graph.items() for d in deps if (_layer(d) or 0) > (_layer(m) or 0))
    assert not upward, f"imports from a higher layer: {upward}"
