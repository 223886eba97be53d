"""Finding the Redis master through Sentinel: `redis+sentinel://` URLs.

    redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service[/db]

The credentials and the db are the master's; sentinels (default port 26379)
are asked without credentials. Both Redis connections of the gateway ask the
sentinels for the master whenever they (re)connect, so after a failover they
follow the new master: the hot-path wire when its connection drops or the
old master, now a replica, answers READONLY; redis-py's client through its
own Sentinel pool.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

if TYPE_CHECKING:
    from redis.asyncio.sentinel import Sentinel

SCHEME = "redis+sentinel"
DEFAULT_SENTINEL_PORT = 26379


@dataclass(frozen=True)
class SentinelTarget:
    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None

    def sentinel(self, timeout_s: float) -> Sentinel:
        # Imported here: settings validation parses these URLs without needing redis.
        from redis.asyncio.sentinel import Sentinel

        # redis-py leaves Sentinel.__init__ unannotated
        return Sentinel(list(self.sentinels), socket_timeout=timeout_s,  # type: ignore[no-untyped-call]
                        socket_connect_timeout=timeout_s)

    async def master(self, timeout_s: float) -> tuple[str, int]:
        """The master's address as the sentinels see it now (MasterNotFoundError if none)."""
        sentinel = self.sentinel(timeout_s)
        try:
            host, port = await sentinel.discover_master(self.service)
            return str(host), int(port)
        finally:
            for client in sentinel.sentinels:
                await client.aclose()


def parse(url: str) -> SentinelTarget | None:
    """The target of a `redis+sentinel://` URL; None for any other URL; ValueError if bad."""
    parts = urlsplit(url)
    if parts.scheme != SCHEME:
        return None
    credentials, _, hosts = parts.netloc.rpartition("@")
    username, _, password = credentials.partition(":")
    sentinels = tuple(_address(item) for item in hosts.split(",") if item)
    path = [segment for segment in parts.path.split("/") if segment]
    if not sentinels or not path or len(path) > 2:
        raise ValueError("expected redis+sentinel://host[:port][,host[:port]...]/service[/db]")
    return SentinelTarget(sentinels, unquote(path[0]), int(path[1]) if len(path) == 2 else 0,
                          unquote(username) or None, unquote(password) or None)


def _address(item: str) -> tuple[str, int]:
    host, sep, port = item.rpartition(":")
    return (host, int(port)) if sep else (item, DEFAULT_SENTINEL_PORT)
