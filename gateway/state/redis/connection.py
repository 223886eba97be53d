"""The Redis connection every Redis store shares (with `wire`, the only code that imports
redis): redis-py's client for what is off the hot path, the pipelined wire for the
scripts on it, and the replica acknowledgements. Calls have their own short timeout;
any Redis error surfaces as `StoreUnavailable`. Scripts go over the hot path's own
pipelined connection (`gateway/state/redis/wire.py`), so those that concurrent requests
call in the same turn of the event loop travel in one write.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal

import redis.asyncio as aioredis
from hiredis import ReplyError
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from gateway.contract import redis_sentinel
from gateway.state.common import StoreUnavailable
from gateway.state.redis.replica_acks import ReplicaAcks
from gateway.state.redis.wire import Wire, WireError


@dataclass(frozen=True, slots=True)
class Script:
    """A Lua script, known to Redis by its SHA-1 once loaded."""

    source: str
    sha: str

    @classmethod
    def of(cls, source: str) -> Script:
        return cls(source, hashlib.sha1(source.encode()).hexdigest())


@asynccontextmanager
async def translated() -> AsyncIterator[None]:
    try:
        yield
    except (RedisError, OSError, TimeoutError) as exc:
        raise StoreUnavailable(str(exc)) from exc


# (write, held): one replica acknowledgement asked for ("claim", "answer" or "admin") and
# whether the required replicas held the write in time.
AckHook = Callable[[str, bool], None]
Held = Callable[[], Awaitable[bool]]  # awaited: whether replicas hold a write


def uncounted(_write: str, _held: bool) -> None:
    return None


class RedisConnection:
    """The clients every Redis store shares: redis-py's, the pipelined wire, and the
    connection of the writes that replicas must hold (`gateway/state/redis/replica_acks.py`)."""

    def __init__(self, url: str, timeout_s: float, *,
                 min_replica_acks: Literal["auto"] | int = "auto",
                 replica_ack_timeout_ms: int = 200, count_ack: AckHook = uncounted) -> None:
        # The client of everything off the hot path, whose commands are all safe to
        # repeat once (field sets, a reset count that only has to change).
        retry = Retry(NoBackoff(), 1)
        sentinel = redis_sentinel.parse(url)
        if sentinel is None:
            self.client = aioredis.Redis.from_url(
                url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, retry=retry,
                health_check_interval=30)
        else:
            self.client = sentinel.sentinel(timeout_s).master_for(
                sentinel.service, db=sentinel.db, username=sentinel.username,
                password=sentinel.password, socket_timeout=timeout_s,
                socket_connect_timeout=timeout_s, retry=retry, health_check_interval=30)
        self.wire = Wire(url, timeout_s)
        # Its answers come after the WAIT that closes each group: the wait is in its budget.
        self.acks = ReplicaAcks(Wire(url, timeout_s + replica_ack_timeout_ms / 1000),
                                min_replica_acks, sentinel is not None, replica_ack_timeout_ms)
        self._count_ack = count_ack
        self._later: set[asyncio.Future[None]] = set()

    async def upkeep(self) -> None:
        """On the sync timer: how many replicas the master has, for `min_replica_acks: auto`."""
        if not self.acks.follows_master:
            return
        async with translated():
            info = await self.client.info("replication")
        self.acks.replicas_connected(int(info.get("connected_slaves", 0)))

    async def eval_held(self, script: Script, keys: tuple[str, ...],
                        *args: str | bytes | int | float) -> tuple[Any, Held]:
        """Run a script that is harmless to repeat on the acknowledged connection: its reply
        as soon as it comes, and the acknowledgement to await (`acknowledged`) if it wrote."""
        command = ("EVALSHA", script.sha, len(keys), *keys, *args)
        try:
            reply, held = await self.acks.write(*command)
            if isinstance(reply, ReplyError) and str(reply).startswith("NOSCRIPT"):
                await self.wire.call("SCRIPT", "LOAD", script.source, repeatable=True)
                reply, held = await self.acks.write(*command)
        except WireError as exc:
            raise StoreUnavailable(str(exc)) from exc
        if isinstance(reply, ReplyError):
            raise StoreUnavailable(f"Redis refused a script: {reply}")
        return reply, held

    async def acknowledged(self, held: Held, write: str | None) -> bool:
        """Whether the required replicas held a write in time, counted as `write` unless
        None; False too when Redis could not say."""
        try:
            answer = await held()
        except WireError:
            answer = False
        if write is not None:
            self._count_ack(write, answer)
        return answer

    def later(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` off the request path, for as long as the connection is open."""
        task = asyncio.ensure_future(work)
        self._later.add(task)
        task.add_done_callback(self._later.discard)

    async def held_by_replicas(self) -> None:
        """After an admin change: return once the required replicas hold it, else raise
        `StoreUnavailable` (the change is on the master, and may not survive a failover)."""
        if self.acks.required and not await self.acknowledged(self.acks.barrier, "admin"):
            raise StoreUnavailable("no replica acknowledged the change in time")

    async def eval(self, script: Script, keys: tuple[str, ...], *args: str | bytes | int | float,
                   repeatable: bool) -> Any:
        """Run one script on its keys: one round trip, shared with concurrent callers.

        `repeatable`: running it twice is harmless, so a reply lost to a dropped
        connection may be asked for again by running it again.
        """
        wire = self.wire
        try:
            reply = await wire.call("EVALSHA", script.sha, len(keys), *keys, *args,
                                    repeatable=repeatable)
            if isinstance(reply, ReplyError) and str(reply).startswith("NOSCRIPT"):
                # A restarted Redis has forgotten its scripts (so this one did not run):
                # load it, run it again.
                await wire.call("SCRIPT", "LOAD", script.source, repeatable=True)
                reply = await wire.call("EVALSHA", script.sha, len(keys), *keys, *args,
                                        repeatable=repeatable)
        except WireError as exc:
            raise StoreUnavailable(str(exc)) from exc
        if isinstance(reply, ReplyError):
            raise StoreUnavailable(f"Redis refused a script: {reply}")
        return reply

    async def command(self, *args: str | bytes | int | float, repeatable: bool) -> Any:
        """One plain command over the hot path's wire."""
        try:
            reply = await self.wire.call(*args, repeatable=repeatable)
        except WireError as exc:
            raise StoreUnavailable(str(exc)) from exc
        if isinstance(reply, ReplyError):
            raise StoreUnavailable(f"Redis refused a command: {reply}")
        return reply

    async def close(self) -> None:
        for task in self._later:
            task.cancel()
        self.wire.close()
        self.acks.close()
        await self.client.aclose()


class JsonByIdHash:
    """One Redis hash of JSON documents by id: written and deleted a field at a time."""

    key: str

    def __init__(self, connection: RedisConnection) -> None:
        self._connection = connection
        self._redis = connection.client

    async def put(self, field: str, data: bytes) -> None:
        async with translated():
            await self._redis.hset(self.key, field, data)
        await self._connection.held_by_replicas()

    async def delete(self, field: str) -> bool:
        async with translated():
            deleted = bool(await self._redis.hdel(self.key, field))
        await self._connection.held_by_replicas()
        return deleted
