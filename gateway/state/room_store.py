"""The waiting-room settings changed through the admin API, and the secret every process
signs with when none is configured, for `waiting_room.py`.
"""

from __future__ import annotations

from typing import Protocol

from gateway.state.common import StoreUnavailable
from gateway.state.redis.connection import RedisConnection, translated


class RoomControl(Protocol):
    async def overrides(self) -> tuple[int, bytes]:
        """(version, JSON of the settings changed through the admin API); (0, b"{}") when
        never changed. The version grows with each change."""

    async def set_overrides(self, data: bytes) -> int:
        """Replace the changed settings; the new version."""

    async def shared_secret(self, candidate: bytes) -> bytes:
        """The signing secret of every process sharing this store: the first one offered."""


class MemoryRoomControl:
    def __init__(self) -> None:
        self._version, self._data = 0, b"{}"

    async def overrides(self) -> tuple[int, bytes]:
        return self._version, self._data

    async def set_overrides(self, data: bytes) -> int:
        self._version, self._data = self._version + 1, data
        return self._version

    async def shared_secret(self, candidate: bytes) -> bytes:
        return candidate


ROOM_SETTINGS_KEY = "og:{wr}:settings"  # hash: version, overrides (JSON)
ROOM_SECRET_KEY = "og:{wr}:secret"  # the signing secret, when none is configured


class RedisRoomControl:
    def __init__(self, connection: RedisConnection) -> None:
        self._connection = connection
        self._redis = connection.client

    async def overrides(self) -> tuple[int, bytes]:
        async with translated():
            version, data = await self._redis.hmget(ROOM_SETTINGS_KEY, ["version", "overrides"])
        if isinstance(data, str):  # the client does not decode; the stub allows it
            data = data.encode()
        return int(version or 0), data or b"{}"

    async def set_overrides(self, data: bytes) -> int:
        async with translated(), self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(ROOM_SETTINGS_KEY, "overrides", data)
            pipe.hincrby(ROOM_SETTINGS_KEY, "version", 1)
            _, version = await pipe.execute()
        await self._connection.held_by_replicas()
        return int(version)

    async def shared_secret(self, candidate: bytes) -> bytes:
        async with translated():
            await self._redis.set(ROOM_SECRET_KEY, candidate, nx=True)
            secret: bytes | None = await self._redis.get(ROOM_SECRET_KEY)  # type: ignore[assignment]
        if secret is None:
            raise StoreUnavailable("the waiting room's secret vanished from Redis")
        return secret
