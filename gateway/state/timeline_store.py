"""The shared timeline of events, newest first, for `timeline.py`.
"""

from __future__ import annotations

import itertools
from collections import deque
from typing import Protocol

from gateway.state.redis.connection import RedisConnection, translated


class TimelineStore(Protocol):
    async def append(self, events: list[bytes], keep: int) -> None:
        """Add events (oldest first), keeping the newest `keep`."""

    async def recent(self, limit: int) -> list[bytes]:
        """The newest `limit` events, newest first."""


class MemoryTimeline:
    def __init__(self) -> None:
        self._events: deque[bytes] = deque()

    async def append(self, events: list[bytes], keep: int) -> None:
        for event in events:
            self._events.appendleft(event)
        while len(self._events) > keep:
            self._events.pop()

    async def recent(self, limit: int) -> list[bytes]:
        return list(itertools.islice(self._events, limit))


TIMELINE_KEY = "og:timeline"  # list: event JSON, newest first, capped


class RedisTimeline:
    def __init__(self, connection: RedisConnection) -> None:
        self._redis = connection.client

    async def append(self, events: list[bytes], keep: int) -> None:
        async with translated(), self._redis.pipeline(transaction=True) as pipe:
            pipe.lpush(TIMELINE_KEY, *events)
            pipe.ltrim(TIMELINE_KEY, 0, keep - 1)
            await pipe.execute()

    async def recent(self, limit: int) -> list[bytes]:
        async with translated():
            found: list[bytes] = await self._redis.lrange(TIMELINE_KEY, 0, limit - 1)  # type: ignore[assignment]
        return found
