"""The package layout is layered: no import cycle between vlmexp's packages, and no lower layer
imports a higher one (function-level imports included)."""

from __future__ import annotations

import ast
from collections import defaultdict

from tests.conftest import REPO

# Lowest first; a unit may import units of its own layer or below.
LAYERS = [
    {"errors", "atomic", "paths", "messages", "hardware", "runlock", "startup", "provenance", "content",
     "workdir", "plots", "distributed"},
    {"config"},
    {"data", "evaluation", "models", "tracking", "detectors", "annotation"},
    {"engines", "tasks", "trainers", "summary"},
    {"runner", "compare", "report", "api", "mlflow_model", "sweeps"},
    {"cli", "__main__"},
]


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "vlmexp"


def _module(path) -> str:
    return ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")


def _imports() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = defaultdict(set)
    for path in (REPO / "vlmexp").rglob("*.py"):
        module = _module(path)
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([node.module] if isinstance(node, ast.ImportFrom) and node.module
                     else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            for name in names:
                if name.startswith("vlmexp.") and _unit(name) != _unit(module):
                    edges[_unit(module)].add(_unit(name))
    return edges


def test_every_unit_has_a_layer():
    units = {_unit(_module(p)) for p in (REPO / "vlmexp").rglob("*.py")}
    placed = set().union(*LAYERS) | {"vlmexp"}
    assert units <= placed, f"place {sorted(units - placed)} in LAYERS"


def test_no_lower_layer_imports_a_higher_one():
    layer = {unit: i for i, units in enumerate(LAYERS) for unit in units}
    upward = [(a, b) for a, targets in _imports().items() for b in targets
              if a in layer and b in layer and layer[b] > layer[a]]
    assert not upward, f"imports from a lower layer into a higher one: {sorted(upward)}"


def test_no_import_cycle_between_packages():
    edges = _imports()
    state: dict[str, int] = {}

    def visit(unit: str, path: list[str]) -> list[str] | None:
        state[unit] = 1
        for target in sorted(edges.get(unit, ())):
            if state.get(target) == 1:
                return [*path, unit, target]
            if target not in state and (cycle := visit(target, [*path, unit])):
                return cycle
        state[unit] = 2
        return None

    for unit in sorted(edges):
        if unit not in state:
            cycle = visit(unit, [])
            assert cycle is None, f"import cycle: {' -> '.join(cycle)}"
