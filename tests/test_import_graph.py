"""The project's modules depend one way: ``run.py`` -> ``orchestration`` -> ``strategies`` -> ``gift_cl`` (the
core), with no cycle anywhere. Read from the source (every ``import``: module level, inside functions and
type-only ones under ``TYPE_CHECKING``), so a cycle hidden behind a deferred import fails here too."""
from __future__ import annotations

import ast
from pathlib import Path

from runs import REPO

PACKAGES = ("gift_cl", "strategies", "orchestration", "analysis")
# installed, the checkout's top-level folders are gift_cl's subpackages (gift_cl.short_names): one module each
INSTALLED = {f"gift_cl.{short}": short for short in ("strategies", "orchestration", "analysis")}
# what each layer may import besides itself (analysis: tools on top of everything)
MAY_IMPORT = {"gift_cl": {"gift_cl"}, "strategies": {"gift_cl", "strategies"},
              "orchestration": {"gift_cl", "strategies", "orchestration"}}


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            rel = path.relative_to(REPO).with_suffix("").parts
            if package == "gift_cl" and len(rel) > 1 and rel[1] in ("strategies", "orchestration", "analysis",
                                                                      "configs"):
                continue  # links to the top-level folders (counted once, under their short names)
            parts = rel[:-1] if rel[-1] == "__init__" else rel
            found[".".join(parts)] = path
    return found


def _short(name: str) -> str:
    for full, short in INSTALLED.items():
        if name == full or name.startswith(full + "."):
            return short + name[len(full):]
    return name


def _imported(module: str, path: Path, node: ast.Import | ast.ImportFrom, known: dict[str, Path]) -> set[str]:
    """The project modules an import statement loads: the named module (or the module a name comes from) and the
    packages above it, whose ``__init__`` runs first."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        if node.level:
            package = package[:len(package) - node.level + 1]
            base = ".".join(package + ([node.module] if node.module else []))
        else:
            base = node.module or ""
        names = [base] + [f"{base}.{alias.name}" for alias in node.names]
    loaded = set()
    for name in names:
        name = _short(name)
        while name and name not in known:
            name = name.rpartition(".")[0]
        while name and name != module and not module.startswith(name + "."):
            loaded.add(name)
            name = name.rpartition(".")[0]
            if name not in known:
                break
    return loaded


def import_graph() -> dict[str, set[str]]:
    known = _modules()
    graph: dict[str, set[str]] = {}
    for module, path in known.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        graph[module] = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                graph[module] |= _imported(module, path, node, known)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One cycle of ``graph`` as ``[a, b, ..., a]``, or ``[]``."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        path.pop()
        return []

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return []


def test_find_cycle_finds_a_cycle_and_only_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []


def test_the_graph_sees_relative_deferred_and_type_only_imports():
    graph = import_graph()
    assert "gift_cl.methods.base" in graph["gift_cl.methods.lora"]  # from .base import ... (relative)
    assert "gift_cl" in graph["orchestration.loop"]  # the package whose __init__ runs first
    assert "gift_cl.config" in graph["gift_cl.model_meta"]  # imported inside a function
    assert "gift_cl.methods.base" in graph["orchestration.loop"]  # imported for types only
    assert "strategies.data_parallel" in graph["orchestration.loop"]  # gift_cl.strategies.* under its short name


def test_no_module_imports_back_into_a_module_that_imports_it():
    cycle = find_cycle(import_graph())
    assert not cycle, "import cycle: " + " -> ".join(cycle)


def test_layers_import_downwards_only():
    wrong = []
    for module, imported in import_graph().items():
        layer = module.split(".")[0]
        for target in imported:
            if layer in MAY_IMPORT and target.split(".")[0] not in MAY_IMPORT[layer]:
                wrong.append(f"{module} -> {target}")
    assert not wrong, wrong
