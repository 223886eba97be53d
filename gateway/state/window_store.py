"""Maintenance windows set through the admin API, and the config windows an SRE ended, for
`maintenance.py`.
"""

from __future__ import annotations

from typing import Protocol

from gateway.state.redis.connection import JsonByIdHash, translated


class WindowStore(Protocol):
    async def windows(self) -> tuple[dict[str, bytes], set[str]]:
        """Windows set through the admin API (id -> JSON), and ids of config windows ended."""

    async def put(self, window_id: str, data: bytes) -> None: ...

    async def delete(self, window_id: str) -> bool:
        """Forget an admin window; False when there was none with this id."""

    async def end_config_windows(self, window_ids: list[str]) -> None:
        """Mark windows declared in the config file as ended, for good."""


class MemoryWindows:
    def __init__(self) -> None:
        self._windows: dict[str, bytes] = {}
        self._ended: set[str] = set()

    async def windows(self) -> tuple[dict[str, bytes], set[str]]:
        return dict(self._windows), set(self._ended)

    async def put(self, window_id: str, data: bytes) -> None:
        self._windows[window_id] = data

    async def delete(self, window_id: str) -> bool:
        return self._windows.pop(window_id, None) is not None

    async def end_config_windows(self, window_ids: list[str]) -> None:
        self._ended.update(window_ids)


MAINTENANCE_KEY = "og:maintenance"  # hash: window id -> window JSON
ENDED_WINDOWS_KEY = "og:maintenance:ended"  # set: ids of config windows ended by an SRE


class RedisWindows(JsonByIdHash):
    key = MAINTENANCE_KEY

    async def windows(self) -> tuple[dict[str, bytes], set[str]]:
        async with translated(), self._redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(MAINTENANCE_KEY)
            pipe.smembers(ENDED_WINDOWS_KEY)
            windows, ended = await pipe.execute()
        return ({k.decode(): v for k, v in windows.items()}, {i.decode() for i in ended})

    async def end_config_windows(self, window_ids: list[str]) -> None:
        async with translated():
            await self._redis.sadd(ENDED_WINDOWS_KEY, *window_ids)
        await self._connection.held_by_replicas()
