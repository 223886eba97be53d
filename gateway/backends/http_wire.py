"""Keep-alive HTTP/1.1 connections to one backend, for the hot path.

aiohttp's client spent about a third of a bare proxy's CPU per request on
what a gateway calling a few known backends does not need: URL objects,
cookie jars, tracing signals, a stream reader per answer, a timer per call.
This is the minimum instead, as `state/redis/wire.py` is for Redis: a pool of
`asyncio.Protocol` connections, the request written as one block of bytes,
the answer parsed by llhttp (through `httptools`, the parser uvicorn uses),
and the deadline kept by the process's timer wheel (`timer_wheel.py`).

What it does, each case tested against a real server misbehaving on purpose
(tests/app/test_http_wire.py):
- bodies framed by `Content-Length`, chunked, or by the connection closing;
  `gzip` and `deflate` bodies decoded (bounded after decoding too);
- `Connection: close` (and HTTP/1.0) answers: the connection is not reused;
- 1xx answers before the real one are skipped;
- an answer over `max_body_bytes` fails and the connection is dropped, and so
  does a head with more than `max_headers` headers, a header line over
  `max_header_bytes`, or more head bytes than those two allow together (an
  endless line is bounded as it comes, not once it ends);
- bytes after a whole answer that nobody asked for (a second answer, in the
  same read or later): the connection is dropped, never pooled, so the next
  caller never reads them as its own;
- a deadline bounds connecting, waiting for a pooled connection and the whole
  exchange; on expiry the connection is dropped (its answer would be stale);
- at most `size` connections; callers beyond wait, in order, for one;
- connections idle for `keepalive_s` are closed, before the backend's own
  keep-alive timeout closes them under a request;
- a pooled connection that the backend closes just as it is reused, with no
  byte of an answer: a caller that may repeat its request (`repeatable`) is
  sent once more on a new connection; any other gets `Dropped` with
  `sent=True` and must treat the outcome as unknown;
- `https://` backends over TLS, verified against the system's CAs or a file.

Every failure is an `HttpWireError` saying whether the request may have been
sent and whether any of an answer came back; `upstream.py` turns those into
catalog errors.
"""

from __future__ import annotations

import asyncio
import ssl
import zlib
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

import httptools

from gateway.backends.timer_wheel import TimerWheel
from gateway.contract.clock import seconds_left


class HttpWireError(Exception):
    """A request that got no whole answer."""

    def __init__(self, message: str, *, sent: bool, answered: bool = False) -> None:
        super().__init__(message)
        self.sent = sent  # any of the request may have reached the backend
        self.answered = answered  # any of an answer came back


class ConnectFailed(HttpWireError):
    """No connection (refused, unreachable, TLS refused): nothing was sent."""


class TimedOut(HttpWireError):
    """The deadline passed first."""


class Dropped(HttpWireError):
    """The connection closed before the answer was whole."""


class BadAnswer(HttpWireError):
    """Not HTTP, too large, or an encoding that cannot be decoded."""


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: dict[str, str]  # lowercased names; a repeated header keeps its last value
    body: bytes


_DECODERS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS,
             "deflate": zlib.MAX_WBITS}


class _Connection(asyncio.Protocol):
    """One keep-alive connection: a request at a time, its answer parsed as it comes."""

    def __init__(self, wire: HttpWire) -> None:
        self._wire = wire
        self._max_body = wire.max_body_bytes
        self._max_headers = wire.max_headers
        self._max_header_bytes = wire.max_header_bytes
        self._max_head_bytes = wire.max_headers * wire.max_header_bytes
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self.uses = 0  # requests sent on it, this one included
        self._waiter: asyncio.Future[Answer] | None = None
        self._status = 0
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._size = 0
        self._framed = False  # Content-Length or chunked: the body does not end at close
        self._answered = False  # a byte of the current answer arrived
        self._in_head = True  # the current answer's head (1xx included) is still coming
        self._head_bytes = 0
        self._header_count = 0
        self._reusable = False  # complete and kept alive: pooled once this read is parsed
        self._unsolicited = False  # another answer began after the one asked for
        self._slot = 0  # in the timer wheel, while a request is out

    # --- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self._waiter is None:
            # Bytes nobody asked for: the connection cannot be trusted with a request.
            self.drop()
            return
        self._answered = True
        if self._in_head:
            self._head_bytes += len(data)
            if self._head_bytes > self._max_head_bytes:
                self._fail(BadAnswer("answer head too large", sent=True, answered=True))
                return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            self._fail(exc.__context__ if isinstance(exc.__context__, HttpWireError)
                       else BadAnswer(f"not an HTTP answer: {exc}", sent=True, answered=True))
        except httptools.HttpParserError as exc:
            self._fail(BadAnswer(f"not an HTTP answer: {exc}", sent=True, answered=True))
        self._after_read()

    def _after_read(self) -> None:
        """Pool the connection only once the whole read is parsed: what followed its answer
        in the same read would otherwise wait in the parser for the next caller."""
        reusable, self._reusable = self._reusable, False
        if self._unsolicited:
            self._unsolicited = False
            self.drop()
        elif reusable and not self.closed:
            self._wire.release(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed:
            self.closed = True
            self._wire.lost(self)
        if self._waiter is None or self._waiter.done():
            return
        if self._status >= 200 and not self._framed:
            self._complete(keep_alive=False)  # a body that ends when the connection does
            return
        answered = self._answered
        self._fail(Dropped(f"connection closed {'during' if answered else 'before'} the answer",
                           sent=True, answered=answered))

    # --- httptools callbacks ------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._waiter is None:
            self._unsolicited = True  # the answer asked for is complete: not this one

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if (self._header_count > self._max_headers
                or len(name) + len(value) > self._max_header_bytes):
            raise BadAnswer("answer head too large", sent=True, answered=True)
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if status < 200:
            return  # 100 Continue, 103 Early Hints: the real answer follows
        self._in_head = False
        self._status = status
        headers = self._headers
        length = headers.get("content-length")
        self._framed = length is not None or "transfer-encoding" in headers
        if length is not None and length.isdigit() and int(length) > self._max_body:
            raise BadAnswer("answer too large", sent=True, answered=True)

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > self._max_body:
            raise BadAnswer("answer too large", sent=True, answered=True)
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self._status == 0:
            self._headers = {}  # the end of a 1xx
            return
        self._complete(keep_alive=self._parser.should_keep_alive())

    # --- the pool's side ----------------------------------------------------------------

    def send(self, request: bytes, waiter: asyncio.Future[Answer], deadline: float) -> None:
        assert self.transport is not None
        self._waiter = waiter
        self.uses += 1
        self._slot = self._wire.wheel.add(deadline, self)
        self.transport.write(request)

    def expire(self) -> None:
        """The deadline passed with the answer still out."""
        self._fail(TimedOut("no answer before the deadline", sent=True,
                            answered=self._answered))

    def abandon(self) -> None:
        """The caller went away: the answer on its way would be read by the next caller."""
        self._wire.wheel.remove(self._slot, self)
        self._waiter = None
        self.drop()

    def _complete(self, *, keep_alive: bool) -> None:
        waiter = self._waiter
        assert waiter is not None
        self._wire.wheel.remove(self._slot, self)
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        try:
            body = _decoded(self._headers.get("content-encoding"), body, self._max_body)
        except BadAnswer as exc:
            self._fail(exc)
            return
        answer = Answer(self._status, self._headers, body)
        self._reset()
        if not waiter.done():
            waiter.set_result(answer)
        if keep_alive and not self.closed:
            self._reusable = True  # see `_after_read`
        else:
            self.drop()

    def _fail(self, error: HttpWireError) -> None:
        waiter = self._waiter
        self._wire.wheel.remove(self._slot, self)
        self._reset()
        self.drop()
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)

    def _reset(self) -> None:
        self._waiter = None
        self._status = 0
        self._headers = {}
        self._body = []
        self._size = 0
        self._framed = False
        self._answered = False
        self._in_head = True
        self._head_bytes = 0
        self._header_count = 0

    def drop(self) -> None:
        """Close at once; the pool forgets it."""
        if not self.closed:
            self.closed = True
            self._wire.lost(self)
            if self.transport is not None:
                self.transport.abort()


class _PoolWait:
    """A caller waiting for a connection, until its deadline."""

    __slots__ = ("future", "slot")

    def __init__(self, future: asyncio.Future[_Connection | None]) -> None:
        self.future = future
        self.slot = 0

    def expire(self) -> None:
        if not self.future.done():
            self.future.set_exception(TimedOut("no connection free before the deadline",
                                               sent=False))


class HttpWire:
    """A pool of keep-alive connections to one backend (`url`: scheme, host and port)."""

    def __init__(self, url: str, *, size: int, keepalive_s: float, connect_timeout_s: float,
                 max_body_bytes: int, wheel: TimerWheel, ca_file: str | None = None,
                 max_headers: int = 64, max_header_bytes: int = 8190) -> None:
        parts = urlsplit(url)
        assert parts.hostname is not None
        self._host = parts.hostname
        self._tls: ssl.SSLContext | None = None
        if parts.scheme == "https":
            self._tls = ssl.create_default_context(cafile=ca_file)
        self._port = parts.port or (443 if self._tls else 80)
        default_port = parts.port is None
        host = f"[{self._host}]" if ":" in self._host else self._host
        self._host_line = (f"Host: {host}" if default_port else f"Host: {host}:{self._port}")
        self.base_path = parts.path.rstrip("/")
        self.size = size
        self.keepalive_s = keepalive_s
        self.connect_timeout_s = connect_timeout_s
        self.max_body_bytes = max_body_bytes
        # An answer's head is bounded like a client's request head (`server.max_headers`,
        # `server.max_header_bytes`).
        self.max_headers = max_headers
        self.max_header_bytes = max_header_bytes
        self.wheel = wheel
        self._idle: list[_Connection] = []  # most recently used last: taken first
        self._open = 0  # connections open or being opened
        self._waiting: deque[_PoolWait] = deque()
        self._sweeper: asyncio.TimerHandle | None = None
        self._closing = False

    @property
    def open_connections(self) -> int:
        return self._open

    async def request(self, method: str, target: str, headers: Mapping[str, str],
                      body: bytes | None, deadline: float, *, repeatable: bool) -> Answer:
        """Send one request (`target`: path and query) and wait for its whole answer until
        loop time `deadline`. A `repeatable` request is sent once more on a new connection
        if a reused one closes before any of its answer comes back."""
        message = self._message(method, target, headers, body)
        connection = await self._connection(deadline)
        try:
            return await self._exchange(connection, message, deadline)
        except Dropped as err:
            if not (repeatable and connection.uses > 1 and not err.answered):
                raise
        # The backend closed a kept-alive connection as it was reused (its keep-alive timeout
        # or a restart): a fresh connection, once.
        return await self._exchange(await self._connection(deadline, fresh=True), message,
                                    deadline)

    def _message(self, method: str, target: str, headers: Mapping[str, str],
                 body: bytes | None) -> bytes:
        lines = [f"{method} {self.base_path}{target} HTTP/1.1", self._host_line]
        for name, value in headers.items():
            if "\n" in value or "\r" in value:
                raise ValueError(f"header {name}: a line break in its value")
            lines.append(f"{name}: {value}")
        if body is not None:
            lines.append(f"Content-Length: {len(body)}")
        lines.append("\r\n")
        head = "\r\n".join(lines).encode("utf-8", "surrogateescape")
        return head + body if body else head

    async def _exchange(self, connection: _Connection, message: bytes,
                        deadline: float) -> Answer:
        waiter: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        connection.send(message, waiter, deadline)
        try:
            return await waiter
        except asyncio.CancelledError:
            connection.abandon()
            raise

    async def _connection(self, deadline: float, *, fresh: bool = False) -> _Connection:
        loop = asyncio.get_running_loop()
        idle = self._idle
        while idle and not fresh:
            connection = idle.pop()
            if not connection.closed and loop.time() - connection.idle_since < self.keepalive_s:
                return connection
            connection.drop()  # idle too long: the backend may be closing it
        if self._open < self.size:
            return await self._connect(deadline)
        wait = _PoolWait(loop.create_future())
        wait.slot = self.wheel.add(deadline, wait)
        self._waiting.append(wait)
        try:
            handed = await wait.future
        except BaseException:
            future = wait.future
            if future.done() and not future.cancelled() and future.exception() is None:
                self._pass_on(future.result())  # handed over as this caller was cancelled
            raise
        finally:
            self.wheel.remove(wait.slot, wait)
        if handed is not None:
            return handed
        return await self._connect(deadline, counted=True)  # a closed connection's place

    async def _connect(self, deadline: float, *, counted: bool = False) -> _Connection:
        """A new connection; `counted`: its place in the pool is already taken."""
        loop = asyncio.get_running_loop()
        if not counted:
            self._open += 1
        left = min(self.connect_timeout_s, seconds_left(deadline))
        try:
            if left <= 0:
                raise TimeoutError
            async with asyncio.timeout(left):  # only when a connection is opened
                _, connection = await loop.create_connection(
                    lambda: _Connection(self), self._host, self._port, ssl=self._tls,
                    server_hostname=self._host if self._tls else None)
        except TimeoutError:
            self._closed_one()
            error: type[HttpWireError] = (
                ConnectFailed if left == self.connect_timeout_s else TimedOut)
            raise error(f"no connection to {self._host}:{self._port} within {left:.3f} s",
                        sent=False) from None
        except (OSError, ssl.SSLError) as exc:
            self._closed_one()
            raise ConnectFailed(f"no connection to {self._host}:{self._port}: {exc}",
                                sent=False) from None
        except BaseException:
            self._closed_one()
            raise
        return connection

    def release(self, connection: _Connection) -> None:
        """A connection whose answer is complete and that may be reused."""
        while self._waiting:
            wait = self._waiting.popleft()
            if not wait.future.done():
                wait.future.set_result(connection)
                return
        if self._closing:
            connection.drop()
            return
        connection.idle_since = asyncio.get_running_loop().time()
        self._idle.append(connection)
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().call_later(self.keepalive_s, self._sweep)

    def _pass_on(self, handed: _Connection | None) -> None:
        if handed is None:
            self._closed_one()
        else:
            self.release(handed)

    def lost(self, connection: _Connection) -> None:
        """A connection closed (called once per connection)."""
        if connection in self._idle:
            self._idle.remove(connection)
        self._closed_one()

    def _closed_one(self) -> None:
        # Its place in the pool passes to the first caller waiting (still counted, so no
        # other caller takes it meanwhile), or is freed.
        while self._waiting:
            wait = self._waiting.popleft()
            if not wait.future.done():
                wait.future.set_result(None)
                return
        self._open -= 1

    def _sweep(self) -> None:
        """Close connections idle for `keepalive_s`, so none is kept open without end."""
        self._sweeper = None
        now = asyncio.get_running_loop().time()
        for connection in [c for c in self._idle if now - c.idle_since >= self.keepalive_s]:
            connection.drop()
        if self._idle:
            self._sweeper = asyncio.get_running_loop().call_later(self.keepalive_s, self._sweep)

    async def close(self) -> None:
        self._closing = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for connection in list(self._idle):
            connection.drop()
        for wait in self._waiting:
            if not wait.future.done():
                wait.future.set_exception(ConnectFailed("the gateway is stopping", sent=False))
        self._waiting.clear()


def _decoded(encoding: str | None, body: bytes, limit: int) -> bytes:
    """The body with its content coding undone, bounded by `limit` after decoding too."""
    if encoding is None or encoding == "identity" or not body:
        return body
    wbits = _DECODERS.get(encoding.strip().lower())
    if wbits is None:
        raise BadAnswer(f"content coding {encoding!r} is not supported", sent=True,
                        answered=True)
    try:
        return _inflate(body, wbits, limit)
    except zlib.error:
        if wbits != zlib.MAX_WBITS:
            raise BadAnswer("a compressed body that does not decode", sent=True,
                            answered=True) from None
    try:  # "deflate" sent raw, without the zlib wrapper, as some servers do
        return _inflate(body, -zlib.MAX_WBITS, limit)
    except zlib.error:
        raise BadAnswer("a compressed body that does not decode", sent=True,
                        answered=True) from None


def _inflate(body: bytes, wbits: int, limit: int) -> bytes:
    inflater = zlib.decompressobj(wbits)
    out = inflater.decompress(body, limit + 1)
    if len(out) > limit:
        raise BadAnswer("answer too large once decoded", sent=True, answered=True)
    if not inflater.eof:
        raise zlib.error("truncated")
    return out
