"""Every module of `gateway/` can be found from its tests by name: a test file named for it
(`test_<module>.py` at any level), a test that imports it, or a line of `TESTED_BY` below
that says which behaviour tests cover it (the modules whose contract is only visible
through HTTP: the steps of the pipeline, the admin routes, the commands)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE, TESTS = ROOT / "gateway", ROOT / "tests"

TESTED_BY: dict[str, tuple[str, ...]] = {
    "gateway.__main__": ("system/test_lifecycle.py",),
    "gateway.cli": ("system/test_lifecycle.py", "system/test_settings.py"),
    "gateway.demo": ("system/test_lifecycle.py",),
    "gateway.server": ("system/test_lifecycle.py", "system/test_k8s.py"),
    "gateway.backends.breaker_control": ("system/test_breaker_e2e.py", "app/test_timeline.py"),
    "gateway.backends.rolling": ("unit/test_breaker.py", "app/test_retry.py"),
    "gateway.backends.upstream": ("app/test_failures.py", "app/test_retry.py",
                                  "system/test_idempotency.py"),
    "gateway.contract.chinese_script": ("app/test_maintenance.py", "unit/test_errors.py"),
    "gateway.contract.forwarded": ("app/test_proxy.py",),
    "gateway.contract.scopes": ("app/test_maintenance.py", "unit/test_maintenance_logic.py"),
    "gateway.edge.cors": ("app/test_web_clients.py",),
    "gateway.edge.security_headers": ("app/test_web_clients.py", "system/test_console.py"),
    "gateway.edge.middleware": ("app/test_proxy.py", "system/test_hostile_input.py"),
    "gateway.ops.admin": ("system/test_admin_safety.py", "system/test_auth.py",
                          "app/test_maintenance.py"),
    "gateway.ops.events": ("app/test_timeline.py",),
    "gateway.ops.status": ("app/test_failures.py", "app/test_maintenance.py"),
    "gateway.ops.traffic": ("app/test_timeline.py", "system/test_console.py"),
    "gateway.pipeline.exchange": ("app/test_early_parity.py", "app/test_proxy.py"),
    "gateway.pipeline.queue_poll": ("app/test_waiting_room.py",),
    "gateway.pipeline.steps.admit": ("system/test_admission.py", "system/test_overload.py"),
    "gateway.pipeline.steps.identify": ("system/test_auth.py", "app/test_waiting_room.py"),
    "gateway.pipeline.steps.validate": ("app/test_validation.py",),
    "gateway.pipeline.steps.send": ("app/test_proxy.py", "app/test_failures.py"),
    "gateway.state.intent_store": ("system/test_store.py",),
    "gateway.state.key_store": ("system/test_store.py",),
    "gateway.state.timeline_store": ("app/test_timeline.py",),
    "gateway.state.redis.connection": ("unit/test_redis_sentinel.py",
                                       "system/test_failover.py"),
}


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        if path.name != "__init__.py":
            found[".".join(path.relative_to(ROOT).with_suffix("").parts)] = path
    return found


def _has_behaviour(path: Path) -> bool:
    """Constants and type aliases need no test of their own; code does."""
    tree = ast.parse(path.read_text())
    return any(isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
               for node in ast.walk(tree))


def _imported_by_tests() -> set[str]:
    names: set[str] = set()
    for path in TESTS.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
                names |= {f"{node.module}.{alias.name}" for alias in node.names}
            elif isinstance(node, ast.Import):
                names |= {alias.name for alias in node.names}
    return names


def _named_test_files() -> set[str]:
    return {re.sub(r"^test_", "", path.stem) for path in TESTS.rglob("test_*.py")}


def test_every_module_is_found_from_its_tests() -> None:
    imported, named = _imported_by_tests(), _named_test_files()
    lost = [module for module, path in sorted(_modules().items())
            if _has_behaviour(path) and module not in imported
            and module.rsplit(".", 1)[-1] not in named and module not in TESTED_BY]
    assert not lost, f"modules no test names (name a test for them or add to TESTED_BY): {lost}"


def test_the_map_names_real_modules_and_real_tests() -> None:
    modules = _modules()
    assert not set(TESTED_BY) - set(modules), "TESTED_BY names a module that is gone"
    missing = [test for tests in TESTED_BY.values() for test in tests
               if not (TESTS / test).is_file()]
    assert not missing, f"TESTED_BY names tests that are gone: {missing}"
