"""The Redis implementation of the store: the only module that imports redis.

Calls have their own short timeout; any Redis error surfaces as
`StoreUnavailable`, and each concern decides what that means for it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.store import StoreUnavailable

BREAKER_KEY = "og:breaker:{name}"


@asynccontextmanager
async def _translated() -> AsyncIterator[None]:
    try:
        yield
    except (RedisError, OSError, TimeoutError) as exc:
        raise StoreUnavailable(str(exc)) from exc


class RedisStore:
    shared = True

    def __init__(self, url: str, timeout_s: float) -> None:
        self._redis = aioredis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
            decode_responses=True, health_check_interval=30)

    async def set_breaker_fields(self, name: str, fields: dict[str, str]) -> None:
        async with _translated():
            await self._redis.hset(BREAKER_KEY.format(name=name), mapping=fields)

    async def reset_breaker(self, name: str) -> None:
        key = BREAKER_KEY.format(name=name)
        async with _translated(), self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, "forced", "")
            pipe.hincrby(key, "reset_seq", 1)
            await pipe.execute()

    async def breaker_controls(self, names: list[str]) -> dict[str, dict[str, str]]:
        async with _translated(), self._redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hgetall(BREAKER_KEY.format(name=name))
            records = await pipe.execute()
        return dict(zip(names, records, strict=True))

    async def close(self) -> None:
        await self._redis.aclose()
