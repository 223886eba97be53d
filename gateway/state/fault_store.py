"""Fault-injection rules added through the admin API, for `faults.py`.
"""

from __future__ import annotations

from typing import Protocol

from gateway.state.redis.connection import JsonByIdHash, Script, translated


class FaultStore(Protocol):
    async def rules(self) -> dict[str, bytes]:
        """Fault rules in force or run out (id -> JSON); run-out ones are deleted by adds."""

    async def add(self, rule_id: str, data: bytes, most: int) -> bool:
        """Add a rule unless `most` are stored already (False)."""

    async def delete(self, rule_id: str) -> bool:
        """End a rule; False when there was none with this id."""

    async def delete_all(self) -> list[str]:
        """End every rule (the kill switch); the ids ended."""


class MemoryFaults:
    def __init__(self) -> None:
        self._rules: dict[str, bytes] = {}

    async def rules(self) -> dict[str, bytes]:
        return dict(self._rules)

    async def add(self, rule_id: str, data: bytes, most: int) -> bool:
        if len(self._rules) >= most:
            return False
        self._rules[rule_id] = data
        return True

    async def delete(self, rule_id: str) -> bool:
        return self._rules.pop(rule_id, None) is not None

    async def delete_all(self) -> list[str]:
        ended = list(self._rules)
        self._rules.clear()
        return ended


FAULTS_KEY = "og:faults"  # hash: fault rule id -> rule JSON


_ADD_FAULT = Script.of("""
if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
""")
_END_FAULTS = Script.of("""
local ids = redis.call('HKEYS', KEYS[1])
redis.call('DEL', KEYS[1])
return ids
""")


class RedisFaults(JsonByIdHash):
    key = FAULTS_KEY

    async def rules(self) -> dict[str, bytes]:
        async with translated():
            # bytes: the client does not decode
            found: dict[bytes, bytes] = await self._redis.hgetall(FAULTS_KEY)  # type: ignore[assignment]
        return {k.decode(): v for k, v in found.items()}

    async def add(self, rule_id: str, data: bytes, most: int) -> bool:
        # Not repeatable: run twice after a lost answer, the count could be off by one.
        added = await self._connection.eval(_ADD_FAULT, (FAULTS_KEY,), rule_id, data, most,
                                            repeatable=False)
        await self._connection.held_by_replicas()
        return bool(added)

    async def delete_all(self) -> list[str]:
        ended = await self._connection.eval(_END_FAULTS, (FAULTS_KEY,), repeatable=False)
        await self._connection.held_by_replicas()
        return [i.decode() if isinstance(i, bytes) else str(i) for i in ended]
