"""Shared state behind one small async interface, in memory or in Redis.

What is shared today: the SRE's intent for each breaker (setting overrides,
forced state, reset count). Each operation is one atomic step of the backing
store (a hash field set, a counter increment), never read-then-write, so two
operators acting at once cannot undo each other's change.

`MemoryStore` serves one process (the demo); `gateway.redis_store.RedisStore`
serves every process and replica that shares the Redis.
"""

from __future__ import annotations

from typing import Protocol


class StoreUnavailable(Exception):
    """The shared store could not be reached in time."""


class Store(Protocol):
    shared: bool  # True when other processes see what this one writes

    async def set_breaker_fields(self, name: str, fields: dict[str, str]) -> None:
        """Set some fields of a breaker's control record, leaving the others."""

    async def reset_breaker(self, name: str) -> None:
        """Clear the forced state and bump the reset count, in one step."""

    async def breaker_controls(self, names: list[str]) -> dict[str, dict[str, str]]:
        """The control record of each named breaker (empty when never set)."""

    async def close(self) -> None: ...


class MemoryStore:
    shared = False

    def __init__(self) -> None:
        self._breakers: dict[str, dict[str, str]] = {}

    async def set_breaker_fields(self, name: str, fields: dict[str, str]) -> None:
        self._breakers.setdefault(name, {}).update(fields)

    async def reset_breaker(self, name: str) -> None:
        record = self._breakers.setdefault(name, {})
        record["forced"] = ""
        record["reset_seq"] = str(int(record.get("reset_seq", "0")) + 1)

    async def breaker_controls(self, names: list[str]) -> dict[str, dict[str, str]]:
        return {name: dict(self._breakers.get(name, {})) for name in names}

    async def close(self) -> None:
        return None
