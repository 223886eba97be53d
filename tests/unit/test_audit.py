"""The dependency audit's verdict (scripts/audit.py) and the bounds it relies on."""

from __future__ import annotations

import importlib.util
import re
import sys
import tomllib
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _audit() -> ModuleType:
    spec = importlib.util.spec_from_file_location("audit", ROOT / "scripts" / "audit.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["audit"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


CLEAN = {"dependencies": [{"name": "aiohttp", "version": "3.14.5", "vulns": []}]}
VULNERABLE = {"dependencies": [
    {"name": "aiohttp", "version": "3.9.0", "vulns": [
        {"id": "GHSA-xxxx", "fix_versions": ["3.9.4"]}]},
    {"name": "orjson", "version": "3.13.0", "vulns": []}]}
UNREACHABLE = {"dependencies": [
    {"name": "aiohttp", "skip_reason": "Dependency not found on PyPI and could not be audited"}]}


@pytest.mark.parametrize(("report", "required", "code"), [
    (CLEAN, False, 0), (CLEAN, True, 0),
    (VULNERABLE, False, 1), (VULNERABLE, True, 1),
    (UNREACHABLE, False, 0), (UNREACHABLE, True, 1),
    ({"dependencies": []}, True, 0),
])
def test_the_verdict(report: dict[str, object], required: bool, code: int) -> None:
    verdict = _audit().judge(report)
    assert verdict.exit_code(required) == code


def test_the_report_names_what_is_vulnerable_and_what_was_not_audited() -> None:
    audit = _audit()
    assert "VULNERABLE aiohttp==3.9.0: GHSA-xxxx (fix: 3.9.4)" in audit.judge(VULNERABLE).report()
    assert "NOT AUDITED (1)" in audit.judge(UNREACHABLE).report()


def _requirements() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = [r for group in project["optional-dependencies"].values() for r in group]
    return [*project["dependencies"], *extras]


@pytest.mark.parametrize("requirement", _requirements())
def test_every_dependency_is_bounded_above(requirement: str) -> None:
    assert re.search(r"<\s*\d", requirement), requirement


def test_the_constraints_pin_every_dependency_exactly() -> None:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"not an exact pin: {line}"
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    for requirement in _requirements():
        name = re.split(r"[\[<>=;! ]", requirement, maxsplit=1)[0]
        assert re.sub(r"[-_.]+", "-", name).lower() in pins, name
