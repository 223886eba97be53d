"""The connection layer is the one place that leans on aiohttp's private names. This test
names each of them (aiohttp is pinned to a minor version in pyproject.toml for them): a
new private name used, or one that this aiohttp no longer has, fails here first, before
any behaviour does."""

from __future__ import annotations

import ast
from pathlib import Path

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from gateway.edge import connections

SOURCE = Path(connections.__file__)

# Each class of ours, the aiohttp class it extends, and the private names of that class
# (or its bases) it uses.
AIOHTTP_PRIVATE: dict[str, tuple[type, set[str]]] = {
    "EdgeConnection": (RequestHandler, {
        "_close", "_force_close", "_keepalive_timeout", "_loop", "_messages",
        "_next_keepalive_close_time", "_parser", "_request_count", "_waiter"}),
    "EdgeServer": (web.Server, set()),
    "EdgeRunner": (web.AppRunner, {"_make_server"}),
    "EdgeSite": (web.BaseSite, {"_backlog", "_runner", "_server"}),
}


def _defined(cls: ast.ClassDef) -> tuple[set[str], set[str]]:
    """A class's slots and methods, and the attributes it assigns on `self`."""
    declared = {node.name for node in cls.body if isinstance(node, ast.FunctionDef)}
    assigned: set[str] = set()
    for node in ast.walk(cls):
        if not isinstance(node, ast.Assign | ast.AnnAssign):
            continue
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        if any(isinstance(t, ast.Name) and t.id == "__slots__" for t in targets):
            declared |= {e.value for e in ast.walk(node.value)
                         if isinstance(e, ast.Constant) and isinstance(e.value, str)}
            continue
        assigned |= {part.attr for target in targets for part in ast.walk(target)
                     if isinstance(part, ast.Attribute) and isinstance(part.value, ast.Name)
                     and part.value.id == "self"}
    return declared, assigned


def _private_uses() -> dict[str, set[str]]:
    """Class -> the private names of its aiohttp base it reads or writes on `self` or
    `super()` (an attribute it assigns that the base lacks is its own)."""
    tree = ast.parse(SOURCE.read_text(encoding="utf-8"))
    found: dict[str, set[str]] = {}
    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
        declared, assigned = _defined(cls)
        base = AIOHTTP_PRIVATE[cls.name][0] if cls.name in AIOHTTP_PRIVATE else object
        used = set()
        for node in ast.walk(cls):
            if (not isinstance(node, ast.Attribute) or not node.attr.startswith("_")
                    or node.attr.startswith("__") or node.attr in declared):
                continue
            on_self = isinstance(node.value, ast.Name) and node.value.id == "self"
            on_super = (isinstance(node.value, ast.Call) and isinstance(node.value.func, ast.Name)
                        and node.value.func.id == "super")
            if (on_self or on_super) and (node.attr not in assigned or _has(base, node.attr)):
                used.add(node.attr)
        if used:
            found[cls.name] = used
    return found


def _has(base: type, name: str) -> bool:
    return hasattr(base, name) or any(name in getattr(k, "__slots__", ()) for k in base.__mro__)


def test_every_private_name_of_aiohttp_the_connection_uses_is_named_here() -> None:
    declared = {name: names for name, (_, names) in AIOHTTP_PRIVATE.items() if names}
    assert _private_uses() == declared


def test_this_aiohttp_has_each_of_them() -> None:
    missing = sorted(f"{base.__name__}.{name}" for base, names in AIOHTTP_PRIVATE.values()
                     for name in names if not _has(base, name))
    assert missing == []
