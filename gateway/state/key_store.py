"""Client API keys added through the admin API, for `auth.py`.
"""

from __future__ import annotations

from typing import Protocol

from gateway.state.redis.connection import JsonByIdHash, translated


class KeyStore(Protocol):
    async def keys(self) -> dict[str, bytes]:
        """Client API keys added through the admin API: SHA-256 hex -> client JSON."""

    async def put(self, key_sha256: str, data: bytes) -> None: ...

    async def delete(self, key_sha256: str) -> bool:
        """Revoke a key added through the admin API; False when there was none."""


class MemoryKeys:
    def __init__(self) -> None:
        self._keys: dict[str, bytes] = {}

    async def keys(self) -> dict[str, bytes]:
        return dict(self._keys)

    async def put(self, key_sha256: str, data: bytes) -> None:
        self._keys[key_sha256] = data

    async def delete(self, key_sha256: str) -> bool:
        return self._keys.pop(key_sha256, None) is not None


API_KEYS_KEY = "og:api_keys"  # hash: SHA-256 hex of a client API key -> client JSON


class RedisKeys(JsonByIdHash):
    key = API_KEYS_KEY

    async def keys(self) -> dict[str, bytes]:
        async with translated():
            # bytes: the client does not decode
            found: dict[bytes, bytes] = await self._redis.hgetall(API_KEYS_KEY)  # type: ignore[assignment]
        return {k.decode(): v for k, v in found.items()}
