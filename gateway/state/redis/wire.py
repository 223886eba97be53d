"""A pipelined Redis connection for the hot path: commands of concurrent requests share writes.

redis-py's asyncio client spends most of a round trip in Python around the
socket (pool checkout, stream reader, per-command parsing); on the hot path
that was more than the rest of an order's pipeline. This connection is the
minimum instead: one socket, commands packed by hiredis, every command issued
in one turn of the event loop sent in one write, and replies parsed by hiredis
as they arrive and handed to their callers in order. redis-py still does what
is not on the hot path (breaker controls, its URL parsing).

Failure handling, all of it surfacing as `WireError`:
- no connection, or connecting takes longer than the timeout;
- the connection drops: every command waiting on it fails at once, and the
  next call connects afresh. A command that was never written (the connection
  had already gone when its batch was flushed) is sent once more on the new
  connection. One that was written may have run, so it is sent again only if
  its caller says running it twice is harmless (`repeatable`: the idempotency
  scripts, guarded by their owner token); otherwise (the token-bucket script,
  which would take two tokens) its caller gets the failure;
- Redis stops answering: a watchdog sees no reply for `timeout_s` while
  commands wait, and drops the connection.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
from collections import deque
from collections.abc import Callable
from typing import Any, cast

import hiredis
from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection, parse_url
from redis.exceptions import RedisError

from gateway.contract import redis_sentinel


class WireError(Exception):
    """Redis could not be reached, or dropped the connection, or did not answer in time."""


class _NotSent(WireError):
    """The connection had gone before the command was written: safe to send on a new one."""


class _Lost(WireError):
    """The connection dropped after the command was written: it may or may not have run."""


class _Protocol(asyncio.Protocol):
    def __init__(self, timeout_s: float) -> None:
        self._reader = hiredis.Reader()
        self._timeout_s = timeout_s
        self.transport: asyncio.Transport | None = None
        self.waiting: deque[asyncio.Future[Any]] = deque()
        self.closed = False
        self._replies = 0  # answers received so far: the watchdog's sign of progress
        self._watchdog: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        waiting = self.waiting
        try:
            while (reply := self._reader.gets()) is not False:
                self._replies += 1
                future = waiting.popleft()
                if not future.done():  # done: its caller was cancelled meanwhile
                    future.set_result(reply)
        except (hiredis.ProtocolError, IndexError) as exc:
            # Not Redis speaking, or answers nobody asked for: trust nothing more from it.
            self._fail(WireError(f"Redis protocol error: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(_Lost(f"Redis connection lost: {exc or 'closed by the server'}"))

    def send(self, packed: bytes, futures: list[asyncio.Future[Any]]) -> None:
        if self.closed or self.transport is None:
            for future in futures:
                future.set_exception(_NotSent("Redis connection lost"))
            return
        self.waiting.extend(futures)
        self.transport.write(packed)
        if self._watchdog is None:
            self._arm(self._replies)

    def _arm(self, seen: int) -> None:
        loop = asyncio.get_running_loop()
        self._watchdog = loop.call_later(self._timeout_s, self._check, seen)

    def _check(self, seen: int) -> None:
        self._watchdog = None
        if not self.waiting:
            return
        if self._replies == seen:
            self._fail(WireError(f"Redis did not answer within {self._timeout_s} s"))
            return
        self._arm(self._replies)

    def _fail(self, error: WireError) -> None:
        self.closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self.transport is not None:
            self.transport.abort()
        while self.waiting:
            future = self.waiting.popleft()
            if not future.done():
                future.set_exception(error)

    def close(self) -> None:
        self._fail(WireError("closed"))


def _demoted(reply: Any) -> bool:
    return isinstance(reply, hiredis.ReplyError) and str(reply).startswith("READONLY")


class Wire:
    """Pipelined commands on one connection to the Redis at `url`."""

    def __init__(self, url: str, timeout_s: float) -> None:
        self._sentinel = redis_sentinel.parse(url)
        if self._sentinel is None:
            self._params: dict[str, Any] = dict(parse_url(url))
        else:  # the address is asked of the sentinels at every connect
            target = self._sentinel
            self._params = {"username": target.username, "password": target.password,
                            "db": target.db}
        self._timeout_s = timeout_s
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Task[_Protocol] | None = None
        self._batch: list[bytes] = []
        self._futures: list[asyncio.Future[Any]] = []

    async def call(self, *args: str | bytes | int | float, repeatable: bool = False) -> Any:
        """One command's reply; a Redis error reply comes back as `hiredis.ReplyError`.

        `repeatable`: running the command twice does no harm, so one whose connection
        dropped before its reply came is sent once more on a new connection.
        """
        # hiredis's stub says a 1-tuple; it packs a command of any length.
        packed = hiredis.pack_command(args)  # type: ignore[arg-type]
        try:
            reply = await self._send(packed)
        except _NotSent:
            return await self._send(packed)
        except _Lost:
            if not repeatable:
                raise
            return await self._send(packed)
        if self._sentinel is not None and _demoted(reply):
            # A failover made our master a replica, which refused the command without
            # running it: ask the sentinels again and send it once more.
            self.close()
            reply = await self._send(packed)
        return reply

    async def call_together(self, commands: list[tuple[str | bytes | int | float, ...]],
                            each: Callable[[int, Any], None] | None = None) -> list[Any]:
        """The replies of `commands`, written in one write and run by Redis in that order,
        with no other command of this connection between them; `each(index, reply)` hears
        of every reply as it arrives, before the last one has.

        For a group closed by `WAIT`, which covers exactly the writes before it on its
        connection: so the group is never split. Every command in it must be harmless to
        run twice, since a group whose connection dropped is sent again whole, once (and
        `each` may then hear of a command twice).
        """
        # hiredis's stub says a 1-tuple; it packs a command of any length.
        packed = b"".join(hiredis.pack_command(c) for c in commands)  # type: ignore[arg-type]
        try:
            replies = await self._send_together(packed, len(commands), each)
        except (_NotSent, _Lost):
            replies = await self._send_together(packed, len(commands), each)
        if self._sentinel is not None and any(_demoted(reply) for reply in replies):
            self.close()  # as in `call`: the old master refused; ask the sentinels again
            replies = await self._send_together(packed, len(commands), each)
        return replies

    async def _send_together(self, packed: bytes, count: int,
                             each: Callable[[int, Any], None] | None) -> list[Any]:
        protocol = self._protocol
        if protocol is None or protocol.closed:
            protocol = await self._connected()
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[Any]] = [loop.create_future() for _ in range(count)]
        if each is not None:
            for index, future in enumerate(futures):
                future.add_done_callback(functools.partial(self._heard, each, index))
        protocol.send(packed, futures)
        return list(await asyncio.gather(*futures))

    def _heard(self, each: Callable[[int, Any], None], index: int,
               future: asyncio.Future[Any]) -> None:
        if future.cancelled() or future.exception() is not None:
            return
        reply = future.result()
        if not (self._sentinel is not None and _demoted(reply)):  # it will be sent again
            each(index, reply)

    async def _send(self, packed: bytes) -> Any:
        protocol = self._protocol
        if protocol is None or protocol.closed:
            protocol = await self._connected()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if not self._batch:
            loop.call_soon(self._flush, protocol)
        self._batch.append(packed)
        self._futures.append(future)
        return await future

    def _flush(self, protocol: _Protocol) -> None:
        batch, futures = self._batch, self._futures
        self._batch, self._futures = [], []
        protocol.send(b"".join(batch), futures)

    async def _connected(self) -> _Protocol:
        """The live connection, made by one caller while the others wait for it."""
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.ensure_future(self._connect())
            # Read the outcome even when every waiting caller was cancelled.
            self._connecting.add_done_callback(lambda t: t.cancelled() or t.exception())
        try:
            return await asyncio.shield(self._connecting)
        except (OSError, TimeoutError, WireError, RedisError) as exc:  # RedisError: sentinels
            raise WireError(f"cannot connect to Redis: {exc}") from exc

    async def _connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        params = self._params
        cls = params.get("connection_class")
        async with asyncio.timeout(self._timeout_s):
            if cls is UnixDomainSocketConnection:
                _, protocol = await loop.create_unix_connection(
                    lambda: _Protocol(self._timeout_s), params["path"])
            else:
                context = ssl.create_default_context() if cls is SSLConnection else None
                host, port = params.get("host", "localhost"), int(params.get("port", 6379))
                if self._sentinel is not None:
                    host, port = await self._sentinel.master(self._timeout_s)
                _, protocol = await loop.create_connection(
                    lambda: _Protocol(self._timeout_s), host, port, ssl=context)
            self._protocol = protocol
            await self._handshake(protocol)
        return protocol

    async def _handshake(self, protocol: _Protocol) -> None:
        commands: list[tuple[str | int, ...]] = []
        if params_password := self._params.get("password"):
            user = self._params.get("username")
            commands.append(("AUTH", user, params_password) if user else ("AUTH", params_password))
        if db := int(self._params.get("db") or 0):
            commands.append(("SELECT", db))
        if not commands:
            return
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in commands]
        # hiredis's stub says a 1-tuple; it packs a command of any length
        packed = (hiredis.pack_command(c) for c in commands)  # type: ignore[arg-type]
        protocol.send(b"".join(packed), futures)
        for command, reply in zip(commands, await asyncio.gather(*futures), strict=True):
            if isinstance(reply, hiredis.ReplyError):
                protocol.close()
                raise WireError(f"Redis refused {command[0]}: {reply}")

    def close(self) -> None:
        if self._protocol is not None:
            self._protocol.close()
            self._protocol = None
