"""The package's structure, checked: wings that import downward only, no import cycle inside
`gateway/`, the wing order written once here and held against docs/ARCHITECTURE.md, one home
per fact (docs/ARCHITECTURE.md, "Which way imports point")."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from gateway.contract.routes import BACKENDS
from gateway.contract.settings import UpstreamsSettings

PACKAGE = Path(__file__).resolve().parents[2] / "gateway"
ARCHITECTURE = PACKAGE.parent / "docs" / "ARCHITECTURE.md"

# Lowest first: a wing imports only from itself and the wings before it. Above them all, the
# composition root and the commands.
WINGS = ("contract", "state", "backends", "edge", "pipeline", "ops")
TOP = ("__init__", "__main__", "app", "server", "cli", "demo")
MAX_TOP = 6


def _module_name(path: Path) -> str:
    """`gateway/edge/auth.py` -> "edge.auth"; a wing's `__init__.py` -> "edge"."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    if len(parts) > 1 and parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports() -> dict[str, set[str]]:
    """Module -> the gateway modules it imports, at any depth of its code (a function-level
    import is still a dependency; hiding one there is how cycles creep back)."""
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {_module_name(path) for path in paths}
    graph: dict[str, set[str]] = {}
    for path in paths:
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("gateway"):
                base = (node.module or "").removeprefix("gateway").lstrip(".")
                for alias in node.names:
                    inner = f"{base}.{alias.name}" if base else alias.name
                    found.add(inner if inner in modules else base)
            elif isinstance(node, ast.Import):
                found |= {a.name.removeprefix("gateway.") for a in node.names
                          if a.name.startswith("gateway.")}
        name = _module_name(path)
        graph[name] = (found & modules) - {name}
    return graph


def _wing(module: str) -> str:
    first = module.split(".")[0]
    return first if first in WINGS else "top"


def _rank(module: str) -> int:
    wing = _wing(module)
    return WINGS.index(wing) if wing in WINGS else len(WINGS)


def _upward(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{module} -> {dependency}" for module, dependencies in graph.items()
                  for dependency in dependencies if _rank(dependency) > _rank(module))


def _a_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> list[str] | None:
        if module in path:
            return [*path[path.index(module):], module]
        if module in done:
            return None
        for dependency in sorted(graph.get(module, ())):
            if (cycle := visit(dependency, [*path, module])) is not None:
                return cycle
        done.add(module)
        return None

    for module in sorted(graph):
        if (cycle := visit(module, [])) is not None:
            return cycle
    return None


def _documented_order(text: str) -> tuple[str, ...]:
    """The wings in the order the architecture page's list of wings names them."""
    section = text.partition("## Which way imports point")[2].partition("\n## ")[0]
    return tuple(re.findall(r"^\d+\. \*\*`(\w+)/`\*\*", section, re.M))


def test_no_import_cycle_inside_the_package() -> None:
    cycle = _a_cycle(_imports())
    assert cycle is None, " -> ".join(cycle or [])


def test_every_module_lives_in_a_wing_and_few_at_the_top() -> None:
    graph = _imports()
    top = sorted(m for m in graph if _wing(m) == "top")
    assert top == sorted(TOP), "a new module belongs in a wing"
    assert len(top) <= MAX_TOP
    for wing in WINGS:
        doc = ast.get_docstring(ast.parse((PACKAGE / wing / "__init__.py").read_text()))
        assert doc and "import" in doc.lower(), f"{wing}/__init__.py says what it holds and imports"


def test_wings_import_downward_only() -> None:
    assert _upward(_imports()) == []


def test_the_architecture_page_lists_the_wings_in_their_order() -> None:
    assert _documented_order(ARCHITECTURE.read_text(encoding="utf-8")) == WINGS


def test_the_checks_fail_on_what_they_guard() -> None:
    assert _upward({"contract.errors": {"ops.admin"}, "ops.admin": {"contract.errors"}}) == [
        "contract.errors -> ops.admin"]
    assert _upward({"app": {"ops.admin"}}) == []
    swapped = "## Which way imports point\n\n1. **`state/`**: x\n2. **`contract/`**: y\n"
    assert _documented_order(swapped) == ("state", "contract") != WINGS[:2]
    assert _a_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _a_cycle({"a": {"b"}, "b": set()}) is None


# Wings whose code reports figures through small hook protocols it declares itself
# (`BackendFigures`, `RoomFigures`, ...): the metrics implement them, set up in `app.py`.
REPORTING_THROUGH_HOOKS = ("state", "backends", "pipeline")


def test_domain_code_reports_through_hooks_not_the_metrics() -> None:
    graph = _imports()
    touching = sorted(module for module, imported in graph.items()
                      if _wing(module) in REPORTING_THROUGH_HOOKS
                      and "contract.observability" in imported)
    assert not touching, f"import the metrics instead of declaring a hook: {touching}"
    libraries = sorted(str(path.relative_to(PACKAGE)) for path in PACKAGE.rglob("*.py")
                       if _wing(_module_name(path)) in REPORTING_THROUGH_HOOKS
                       and "prometheus_client" in path.read_text(encoding="utf-8"))
    assert not libraries, f"domain code touching the metrics library: {libraries}"


def test_the_backends_have_one_home() -> None:
    assert tuple(UpstreamsSettings.model_fields) == BACKENDS


MAX_FUNCTION_LINES = 80


def test_no_function_is_longer_than_a_screen() -> None:
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{_module_name(path)}.{node.name}: {lines}")
    assert long == []
