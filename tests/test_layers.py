"""The package's structure, checked: floors without upward imports, no import cycle inside
`gateway/`, one home per fact (docs/ARCHITECTURE.md, "Which way imports point")."""

from __future__ import annotations

import ast
from pathlib import Path

from gateway.routes import BACKENDS
from gateway.settings import UpstreamsSettings

PACKAGE = Path(__file__).resolve().parent.parent / "gateway"


def _imports() -> dict[str, set[str]]:
    """Module -> the gateway modules it imports, at any depth of its code (a function-level
    import is still a dependency; hiding one there is how cycles creep back)."""
    modules = {path.stem for path in PACKAGE.glob("*.py")}
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.glob("*.py"):
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module == "gateway":
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("gateway."):
                found.add(node.module.split(".")[1])
            elif isinstance(node, ast.Import):
                found |= {a.name.split(".")[1] for a in node.names
                          if a.name.startswith("gateway.")}
        graph[path.stem] = (found & modules) - {path.stem}
    return graph


def _a_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> list[str] | None:
        if module in path:
            return [*path[path.index(module):], module]
        if module in done:
            return None
        for dependency in sorted(graph[module]):
            if (cycle := visit(dependency, [*path, module])) is not None:
                return cycle
        done.add(module)
        return None

    for module in sorted(graph):
        if (cycle := visit(module, [])) is not None:
            return cycle
    return None


def test_no_import_cycle_inside_the_package() -> None:
    cycle = _a_cycle(_imports())
    assert cycle is None, " -> ".join(cycle or [])


# Lowest first; a module imports only from its own floor or those below.
FLOORS = (
    ("errors", "json_types", "schemas", "routes", "scopes", "settings", "field_errors",
     "problem", "clock", "reply", "privacy", "observability", "redis_sentinel",
     "queue_tokens", "chinese_script", "forwarded"),
    ("store", "redis_wire", "replica_acks", "redis_store", "timer_wheel", "http_wire"),
    ("identity", "auth", "connections", "cors", "security_headers"),
    ("rolling", "breaker", "breaker_control", "retry", "overload", "admission", "faults",
     "upstream"),
    ("validation", "maintenance", "rate_limit", "idempotency", "stale_cache", "edge",
     "arrivals", "waiting_room", "proxy"),
    ("timeline", "traffic", "events", "console", "admin", "status", "openapi"),
    ("app", "server", "demo", "cli", "__main__"),
)


def test_every_module_has_a_floor_and_imports_none_above_it() -> None:
    floor = {module: level for level, modules in enumerate(FLOORS) for module in modules}
    graph = _imports()
    assert set(graph) - {"__init__"} == set(floor), "place new modules in FLOORS"
    upward = sorted(f"{module} -> {dependency}" for module, dependencies in graph.items()
                    for dependency in dependencies
                    if module in floor and floor[dependency] > floor[module])
    assert upward == []


def test_the_cycle_finder_finds_one() -> None:
    assert _a_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _a_cycle({"a": {"b"}, "b": set()}) is None


def test_the_backends_have_one_home() -> None:
    assert tuple(UpstreamsSettings.model_fields) == BACKENDS
