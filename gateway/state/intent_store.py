"""The SRE's intent per breaker (setting overrides, forced state, reset count), for
`breaker_control.py`.
"""

from __future__ import annotations

from typing import Protocol

from gateway.state.redis.connection import RedisConnection, translated


class BreakerIntents(Protocol):
    async def set_fields(self, name: str, fields: dict[str, str]) -> None:
        """Set some fields of a breaker's control record, leaving the others."""

    async def reset(self, name: str) -> None:
        """Clear the forced state and bump the reset count, in one step."""

    async def controls(self, names: list[str]) -> dict[str, dict[str, str]]:
        """The control record of each named breaker (empty when never set)."""


class MemoryBreakerIntents:
    def __init__(self) -> None:
        self._breakers: dict[str, dict[str, str]] = {}

    async def set_fields(self, name: str, fields: dict[str, str]) -> None:
        self._breakers.setdefault(name, {}).update(fields)

    async def reset(self, name: str) -> None:
        record = self._breakers.setdefault(name, {})
        record["forced"] = ""
        record["reset_seq"] = str(int(record.get("reset_seq", "0")) + 1)

    async def controls(self, names: list[str]) -> dict[str, dict[str, str]]:
        return {name: dict(self._breakers.get(name, {})) for name in names}

BREAKER_KEY = "og:breaker:{name}"


# The admin changes below (breakers, maintenance windows, API keys, fault rules, waiting-room
# settings) each return only once the required replicas hold them: an SRE's change must
# not vanish in a failover a second after the admin API said 200.


class RedisBreakerIntents:
    def __init__(self, connection: RedisConnection) -> None:
        self._connection = connection
        self._redis = connection.client

    async def set_fields(self, name: str, fields: dict[str, str]) -> None:
        async with translated():
            # redis-py's stub wants a mapping of its own wider key and value unions
            await self._redis.hset(BREAKER_KEY.format(name=name), mapping=fields)  # type: ignore[arg-type]
        await self._connection.held_by_replicas()

    async def reset(self, name: str) -> None:
        key = BREAKER_KEY.format(name=name)
        async with translated(), self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, "forced", "")
            pipe.hincrby(key, "reset_seq", 1)
            await pipe.execute()
        await self._connection.held_by_replicas()

    async def controls(self, names: list[str]) -> dict[str, dict[str, str]]:
        async with translated(), self._redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hgetall(BREAKER_KEY.format(name=name))
            found = await pipe.execute()
        return {name: {k.decode(): v.decode() for k, v in fields.items()}
                for name, fields in zip(names, found, strict=True)}
