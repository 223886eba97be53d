"""What one client connection may cost: parser limits, read timeouts, malformed HTTP.

aiohttp parses requests before any middleware runs, so the hostile-input
limits that belong to the parser are set here and its refusals are answered
here, as problem+json from the catalog, not as aiohttp's plain-text page
(which also echoes the offending bytes back):

- a request line over `server.max_url_bytes`      -> 414 URI_TOO_LONG
- more than `server.max_headers` headers, or one
  over `server.max_header_bytes`                  -> 431 HEADERS_TOO_LARGE
- anything else the parser refuses: both Content-Length and Transfer-Encoding,
  two Content-Lengths, an unknown transfer coding, bad header syntax, TLS on
  the plain port                                   -> 400 MALFORMED_REQUEST
- a request head not complete within `server.header_timeout_s` of its first
  byte, or of the connection's opening (slowloris) -> 408 REQUEST_TIMEOUT, closed
  (the start of a head pipelined in one read with the previous request is
  bounded by `server.keepalive_s` instead)
- a body not complete within `server.body_timeout_s` (slow body; `read_body`)
                                                   -> 408 REQUEST_TIMEOUT, closed
- a head still arriving while the process holds more than
  `server.max_buffered_head_bytes` of unfinished heads across its connections
  (counted as an upper bound per connection, `HeadBytes`) -> 503 OVERLOADED, closed

None of these reaches a route, let alone a backend. The head timer costs
nothing on the usual path: a head that arrives whole in one read never arms it.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, cast

from aiohttp import HttpVersion, web
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader
from aiohttp.web_request import BaseRequest

from gateway.contract import errors
from gateway.contract.errors import GatewayError
from gateway.contract.routes import RoutePolicy
from gateway.contract.settings import ServerSettings

# Renders a refusal for a request the parser gave up on (status and exception from aiohttp).
Refuse = Callable[[BaseRequest, int, BaseException | None], web.StreamResponse]


_UNAVAILABLE = 503
_HOLD_AFTER_503_S = 1


class ParsedHead(Protocol):
    """A request head as aiohttp's parser read it (its `ParsedHead`)."""

    @property
    def method(self) -> str: ...

    @property
    def path(self) -> str: ...  # the request target as sent, query included

    @property
    def version(self) -> HttpVersion: ...

    @property
    def headers(self) -> Mapping[str, str]: ...  # names case-insensitive (a CIMultiDict)


class EdgeAnswers(Protocol):
    """The answers a connection gives without a handler (`edge.Edge`)."""

    def refuse(self, request: BaseRequest, status: int,
               exc: BaseException | None) -> web.StreamResponse: ...

    def head_timeout_answer(self) -> bytes: ...

    def heads_full_answer(self) -> bytes: ...


class AdmissionAtArrival(Protocol):
    """What a connection asks of admission when the parser read a head (`arrivals.Arrivals`)."""

    def route_of(self, message: ParsedHead) -> RoutePolicy | None: ...

    def enter(self, priority: int) -> bool: ...

    def leave(self) -> None: ...

    def refusal(self, message: ParsedHead, policy: RoutePolicy,
                doublings: int) -> bytes: ...

    def early_refusal(self, message: ParsedHead,
                      policy: RoutePolicy) -> tuple[bytes, int | None] | None: ...

    @property
    def retry_after_s(self) -> tuple[float, ...]: ...

    @property
    def holds(self) -> bool: ...


def handler_args(server: ServerSettings) -> dict[str, Any]:
    """aiohttp's per-connection settings, from ours."""
    return {
        "max_line_size": server.max_url_bytes,
        "max_field_size": server.max_header_bytes,
        "max_headers": server.max_headers,
        "keepalive_timeout": server.keepalive_s,
        "lingering_time": server.lingering_s,
    }


def parser_refusal(server: ServerSettings, status: int, exc: BaseException | None) -> GatewayError:
    """The catalog error for a request the HTTP parser refused."""
    if isinstance(exc, LineTooLong):
        line = exc.args[0] if exc.args else b""
        # The parser quotes the start of what was too long: the request target
        # (`/...`, `*`, `http...`) for the request line, else a header.
        if isinstance(line, bytes | bytearray) and line[:1] in (b"/", b"*", b"h"):
            return GatewayError(errors.URI_TOO_LONG, params={"limit": server.max_url_bytes})
        return _headers_too_large(server)
    if isinstance(exc, BadHttpMessage) and "Too many headers" in str(exc.message):
        return _headers_too_large(server)
    if status >= 500:
        return GatewayError(errors.INTERNAL_ERROR)
    # The class name, never the parser's message: that quotes the client's bytes.
    return GatewayError(errors.MALFORMED_REQUEST,
                        params={"reason": type(exc).__name__ if exc else "unreadable"})


def _headers_too_large(server: ServerSettings) -> GatewayError:
    return GatewayError(errors.HEADERS_TOO_LARGE,
                        params={"count": server.max_headers, "limit": server.max_header_bytes})


def timeout_error(part: str, timeout_s: float) -> GatewayError:
    return GatewayError(errors.REQUEST_TIMEOUT, params={"part": part, "timeout_s": timeout_s})


async def read_body(request: web.Request, limit: int, timeout_s: float) -> bytes:
    """The whole body, or 413 past `limit`, or 408 if it trickles in slower than `timeout_s`."""
    try:
        if request.content.is_eof():
            return await request.read()  # already all here (the usual case): no timer
        async with asyncio.timeout(timeout_s):
            return await request.read()
    except TimeoutError:
        raise timeout_error("body", timeout_s) from None
    except web.HTTPRequestEntityTooLarge:
        # A chunked body with no declared length, found too large while reading.
        raise GatewayError(errors.PAYLOAD_TOO_LARGE, params={"limit": limit}) from None


def arrival(request: web.BaseRequest) -> tuple[bool, float]:
    """Whether admission counted this request when its head was read, and the loop
    time its head was read at (now, for a request that came another way)."""
    connection = request.protocol
    if isinstance(connection, EdgeConnection):
        return connection.take_arrival()
    return False, asyncio.get_running_loop().time()


class HeadBytes:
    """Bytes of unfinished request heads a process holds across its connections, and the
    most it may (`server.max_buffered_head_bytes`)."""

    __slots__ = ("held", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0


# What aiohttp's request parser returns for a read: the requests whose heads it read (each
# with its body's stream), whether the connection was upgraded, and the bytes after that.
Parsed = tuple[Sequence[tuple[Any, StreamReader]], bool, bytes]


class ParsedAtArrival:
    """aiohttp's request parser, each request it reads shown to the connection's answers at
    arrival before aiohttp queues it.

    `answer` is given the requests of a read in order and returns those left for aiohttp
    (it answers a first part, or none). The parser stops after a number of requests not yet
    consumed and keeps the rest of the read: answered ones are consumed here, and the rest is
    parsed on at once, or, once a request is left for aiohttp, by `parse_on` (so a parse
    error in it is answered after the requests read before it, as aiohttp answers it)."""

    __slots__ = ("_answer", "_parse_on", "_parser")

    def __init__(self, parser: Any, answer: Callable[[Sequence[tuple[Any, StreamReader]]],
                                                     Sequence[tuple[Any, StreamReader]]],
                 parse_on: Callable[[], None]) -> None:
        self._parser = parser
        self._answer = answer
        self._parse_on = parse_on

    def feed_data(self, data: bytes) -> Parsed:
        messages, upgraded, tail = self._parser.feed_data(data)
        while messages and not upgraded:
            kept = self._answer(messages)
            answered = len(messages) - len(kept)
            if not answered:
                break
            for _ in range(answered):
                self._parser.message_consumed()
            if kept:
                self._parse_on()
                return kept, upgraded, tail
            messages, upgraded, tail = self._parser.feed_data(b"")
        return messages, upgraded, tail

    def message_consumed(self) -> None:
        self._parser.message_consumed()

    def pause_reading(self) -> None:
        self._parser.pause_reading()

    def set_upgraded(self, val: bool) -> None:
        self._parser.set_upgraded(val)

    def feed_eof(self) -> Any:
        return self._parser.feed_eof()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._parser, name)


class EdgeConnection(web.RequestHandler):
    """aiohttp's connection handler with a head timeout, catalog answers, and admission
    at arrival (`arrivals.py`)."""

    __slots__ = (
        "_answered",
        "_answered_here",
        "_arrived_at",
        "_counted",
        "_doublings",
        "_edge_server",
        "_ends_at_head",
        "_head_bytes",
        "_head_timer",
        "_held",
        "_last_compressed",
        "_last_payload",
        "_refused_until",
    )

    def __init__(self, manager: EdgeServer, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._edge_server = manager
        self._head_timer: asyncio.TimerHandle | None = None
        # The body of the latest request parsed: bytes while it is unfinished are its.
        self._last_payload: StreamReader = EMPTY_PAYLOAD
        self._last_compressed = False  # ... and whether it is decompressed as it is read
        self._head_bytes = 0  # at most this many bytes of an unfinished head are held
        self._answered = 0  # requests of aiohttp's count whose answer is written
        self._answered_here = 0  # requests answered at arrival (aiohttp never saw them)
        self._ends_at_head = True  # the bytes read so far end with a head's end
        self._arrived_at = 0.0  # loop time the latest head was read
        self._counted = False  # admission counted the head read last, not yet handled
        # A refusal at arrival waiting to go out, and when Retry-After of the last one ends.
        self._held: tuple[asyncio.TimerHandle, bytes] | None = None
        self._refused_until = 0.0
        self._doublings = 0  # refusals in a row this client came back early for
        if manager.arrivals is not None:
            self._parser = cast(Any, ParsedAtArrival(self._parser, self._at_arrival,
                                                     self._parse_on))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm_head_timer()  # a connection that sends nothing is cut off too

    def data_received(self, data: bytes) -> None:
        if self._force_close or self._close:
            return  # closing: aiohttp reads no more either
        if self._held is not None:
            self._send_held()  # a client that did not wait: answers stay in order
        heads, answered_here = self._request_count, self._answered_here
        payload, body_total = self._last_payload, self._last_payload.total_bytes
        body_pending = not payload.is_eof()
        if data:
            self._ends_at_head = data.endswith(b"\r\n\r\n")
        super().data_received(data)
        read_a_head = self._request_count != heads or self._answered_here != answered_here
        if self._request_count != heads:
            self._arrived_at = self._loop.time()
            if self._messages:
                message, self._last_payload = self._messages[-1]
                self._last_compressed = getattr(message, "compression", None) is not None
            else:
                self._last_payload = EMPTY_PAYLOAD
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None
        elif self._head_timer is None and self._holds_head_start(
                data, body_pending, self._answered_here != answered_here):
            self._arm_head_timer()
        if data and not (self._ends_at_head and self._head_bytes == 0):  # else none, still
            self._count_head_bytes(self._unfinished_head_bytes(
                data, read_a_head or body_pending, body_total if payload is self._last_payload
                else 0))

    def _unfinished_head_bytes(self, data: bytes, ended_something: bool,
                               body_before: int) -> int:
        """At most how many bytes of an unfinished head the parser holds after reading
        `data`: `ended_something`, whether a head was read or a body was being read (so
        only bytes after the last head's end, and after the body's, can be a new head's);
        `body_before`, the bytes of the latest body counted before this read."""
        if self._ends_at_head or not self._last_payload.is_eof():
            return 0  # just after a head, or in a body: none
        if not ended_something:
            return self._head_bytes + len(data)  # a head growing
        end = data.rfind(b"\r\n\r\n")
        after = len(data) - (end + 4) if end >= 0 else len(data)
        if not self._last_compressed:  # a decompressed body counts more bytes than it read
            after = min(after, len(data) - (self._last_payload.total_bytes - body_before))
        return max(0, after)

    def _count_head_bytes(self, held: int) -> None:
        budget = self._edge_server.head_bytes
        budget.held += held - self._head_bytes
        self._head_bytes = held
        if held and budget.held > budget.limit:
            self._heads_full()

    def _heads_full(self) -> None:
        """The process holds more of unfinished heads than it may, and this connection holds
        one: refused with 503 when nothing is owed before it, else closed after the answers
        it owes (a 503 now would come before them)."""
        if self.transport is None:
            return
        if self._answered == self._request_count:
            self.transport.write(self._edge_server.heads_full_answer())
            self.force_close()
        else:
            self.close()
        # Closing, it reads no more: what it holds is let go of now, so the connections
        # read next in this loop turn are judged against what stays.
        self._count_head_bytes(0)

    def _holds_head_start(self, data: bytes, body_pending: bool, answered_here: bool) -> bool:
        """Whether the parser may now hold the start of a head, after a read in which it
        read no request for aiohttp."""
        if answered_here:
            # Requests without a body, all answered: bytes after the last one's head are
            # the start of the next.
            return not self._ends_at_head
        return bool(data) and not body_pending  # bytes that are no body's

    async def finish_response(self, request: BaseRequest, resp: web.StreamResponse,
                              start_time: float | None) -> tuple[web.StreamResponse, bool]:
        try:
            return await super().finish_response(request, resp, start_time)
        finally:
            self._answered += 1
            if resp.status == _UNAVAILABLE:
                self._told_to_wait(resp.headers.get("Retry-After"))

    def _told_to_wait(self, retry_after: str | None) -> None:
        """A 503 told the client when to come back; a refusal at arrival before then is
        held until then (see `_refuse`), a second at most: a breaker's or a maintenance
        window's Retry-After may be minutes, and a held answer must not look like a hang."""
        if retry_after is not None and retry_after.isdigit():
            self._refused_until = self._loop.time() + min(int(retry_after), _HOLD_AFTER_503_S)

    def _at_arrival(self, messages: Sequence[tuple[Any, StreamReader]]) -> Sequence[
            tuple[Any, StreamReader]]:
        """Answer at arrival what may be, in order; the requests from the first that goes
        the usual way on."""
        for at, (message, _) in enumerate(messages):
            if self._held is not None:
                self._send_held()  # pipelined: the client did not wait either
            if not self._answers_at_arrival(message):
                return messages[at:]
        return ()

    def _answers_at_arrival(self, message: ParsedHead) -> bool:
        """Admission's decision on a plain request of a proxied route, when every earlier
        request on the connection is answered (so an answer written now comes in order):
        True if it was answered here (refused), False if it goes on to its handler."""
        arrivals = self._edge_server.arrivals
        if arrivals is None or self.transport is None or self._answered != self._request_count:
            return False
        policy = arrivals.route_of(message)
        if policy is None:
            return False
        if self._counted:
            self._release()  # a head counted earlier that never reached its handler
        # In the handler's order: admission, then maintenance and the breaker.
        if not arrivals.enter(policy.priority):
            self._refuse(arrivals, message, policy)
            return True
        if (refused := arrivals.early_refusal(message, policy)) is not None:
            arrivals.leave()
            answer, retry_after_s = refused
            self._answered_at_arrival(self._loop.time())
            assert self.transport is not None
            self.transport.write(answer)
            if retry_after_s is not None:
                self._told_to_wait(str(retry_after_s))  # as a handler's 503 would
            return True
        self._counted = True
        self._doublings = 0
        return False

    def _parse_on(self) -> None:
        """Let the parser read what it kept of the last read, on the next loop turn."""
        self._loop.call_soon(self._parse_kept)

    def _parse_kept(self) -> None:
        if self.transport is not None and self._parser is not None:
            self.data_received(b"")

    def _refuse(self, arrivals: AdmissionAtArrival, message: ParsedHead,
                policy: RoutePolicy) -> None:
        """Send a refusal, at once, or when the Retry-After of the last 503 on this
        connection ends: a client that asks again sooner than it was told waits out the
        rest, and is told to wait twice as long. A crowd retrying in a tight loop then
        cannot spend the CPU on refusals."""
        now = self._loop.time()
        hold = self._refused_until - now if arrivals.holds else 0.0
        if hold > 0:
            self._doublings = min(self._doublings + 1, len(arrivals.retry_after_s) - 1)
        else:
            self._doublings = 0
        answer = arrivals.refusal(message, policy, self._doublings)
        self._refused_until = max(now, self._refused_until) + arrivals.retry_after_s[
            self._doublings]
        self._answered_at_arrival(now + max(0.0, hold))
        if hold <= 0:
            assert self.transport is not None
            self.transport.write(answer)
            return
        self._held = (self._loop.call_later(hold, self._send_held), answer)

    def _answered_at_arrival(self, sent_at: float) -> None:
        """A head answered here, its answer going out at loop time `sent_at`: aiohttp saw no
        request, so its idle clock starts again then, and the head's timer is done."""
        self._answered_here += 1
        self._edge_server.early_answers += 1
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        self._next_keepalive_close_time = sent_at + self._keepalive_timeout

    def _send_held(self) -> None:
        assert self._held is not None
        timer, answer = self._held
        self._held = None
        timer.cancel()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(answer)

    def take_arrival(self) -> tuple[bool, float]:
        counted, self._counted = self._counted, False
        return counted, self._arrived_at

    def _release(self) -> None:
        self._counted = False
        arrivals = self._edge_server.arrivals
        if arrivals is not None:
            arrivals.leave()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._count_head_bytes(0)
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        if self._held is not None:
            self._held[0].cancel()
            self._held = None
        if self._counted:
            self._release()
        super().connection_lost(exc)

    def _waiting_for_head(self) -> bool:
        """No request is being handled: bytes now are (part of) the next request's head."""
        return self._waiter is not None and not self._waiter.done()

    def _arm_head_timer(self) -> None:
        self._head_timer = self._loop.call_later(self._edge_server.header_timeout_s,
                                                 self._head_timed_out)

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport is None or self._force_close:
            return
        if not self._waiting_for_head():
            # Still handling the previous request: the new head's clock starts again.
            self._arm_head_timer()
            return
        self.transport.write(self._edge_server.head_timeout_answer())
        self.force_close()

    def handle_error(self, request: BaseRequest, status: int = 500,
                     exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if request.writer.output_size > 0:
            raise ConnectionError("a response was already sent; cannot send an error too")
        response = self._edge_server.refuse(request, status, exc)
        response.force_close()
        return response


class EdgeServer(web.Server):
    """aiohttp's server, making EdgeConnections."""

    def __init__(self, handler: Any, *, request_factory: Any, handler_cancellation: bool,
                 refuse: Refuse, head_timeout_answer: Callable[[], bytes],
                 heads_full_answer: Callable[[], bytes], header_timeout_s: float,
                 head_bytes: HeadBytes, arrivals: AdmissionAtArrival | None,
                 **handler_kwargs: Any) -> None:
        super().__init__(handler, request_factory=request_factory,
                         handler_cancellation=handler_cancellation, **handler_kwargs)
        self.refuse = refuse
        self.head_timeout_answer = head_timeout_answer
        self.heads_full_answer = heads_full_answer
        self.header_timeout_s = header_timeout_s
        self.head_bytes = head_bytes
        self.early_answers = 0  # requests answered at arrival (no handler), since start-up
        self.arrivals = arrivals
        self._handler_kwargs = handler_kwargs  # what each connection handler is made with

    def __call__(self) -> web.RequestHandler:
        return EdgeConnection(self, loop=asyncio.get_running_loop(), **self._handler_kwargs)


class EdgeRunner(web.AppRunner):
    """An AppRunner whose server makes EdgeConnections (the app's start-up and cleanup
    run as usual)."""

    def __init__(self, app: web.Application, server: ServerSettings, answers: EdgeAnswers,
                 arrivals: AdmissionAtArrival | None, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._edge_kwargs = {
            "refuse": answers.refuse, "head_timeout_answer": answers.head_timeout_answer,
            "heads_full_answer": answers.heads_full_answer,
            "header_timeout_s": server.header_timeout_s,
            "head_bytes": HeadBytes(server.max_buffered_head_bytes), "arrivals": arrivals,
            **handler_args(server), **kwargs}

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()
        kwargs = {k: v for k, v in self._edge_kwargs.items()
                  if k not in ("handle_signals", "shutdown_timeout")}
        return EdgeServer(plain.request_handler, request_factory=plain.request_factory,
                          handler_cancellation=plain.handler_cancellation, **kwargs)


# Connections accepted per wake-up of the listening socket. The event loop's own
# listener (libuv since 1.45) accepts one connection per loop iteration: with the
# loop busy for tens of milliseconds an iteration, a crowd of new connections waited
# seconds in the kernel's accept queue, requests already sent (the maximum latencies
# of issue 17's crowd). A batch is bounded so accepting cannot starve the rest.
ACCEPT_BATCH = 256


class EdgeSite(web.BaseSite):
    """A TCP listener that accepts up to ACCEPT_BATCH waiting connections at a time and
    hands each to the runner's server, as aiohttp's TCPSite would one by one."""

    __slots__ = ("_connecting", "_host", "_port", "_reuse_port")

    def __init__(self, runner: web.BaseRunner, host: str, port: int, *, backlog: int,
                 reuse_port: bool) -> None:
        super().__init__(runner, backlog=backlog)
        self._host, self._port, self._reuse_port = host, port, reuse_port
        self._connecting: set[asyncio.Task[Any]] = set()

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        sockets = [self._listen(info) for info in socket.getaddrinfo(
            self._host, self._port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)]
        for sock in sockets:
            loop.add_reader(sock.fileno(), self._accept, sock)
        self._server = _Listening(loop, sockets)

    def _listen(self, info: tuple[Any, ...]) -> socket.socket:
        family, kind, proto, _, address = info
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if self._reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(self._backlog)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            # Worded as the event loop's own listener words it.
            raise OSError(exc.errno, f"error while attempting to bind on address "
                                     f"{address!r}: {(exc.strerror or '').lower()}") from None
        return sock

    def _accept(self, listening: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        server = self._runner.server
        for _ in range(ACCEPT_BATCH):
            try:
                sock, _ = listening.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError:
                # Out of file descriptors, or the like: the connection stays queued in
                # the kernel; the next wake-up tries again.
                return
            if server is None:  # stopping
                sock.close()
                return
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            task = loop.create_task(loop.connect_accepted_socket(server, sock))
            self._connecting.add(task)
            task.add_done_callback(self._connecting.discard)


class _Listening(asyncio.AbstractServer):
    """The listening sockets of an EdgeSite, as aiohttp's runner expects a server."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sockets: list[socket.socket]) -> None:
        self._loop = loop
        self.sockets = sockets
        self._closed: asyncio.Future[None] = loop.create_future()

    def close(self) -> None:
        for sock in self.sockets:
            if sock.fileno() >= 0:
                self._loop.remove_reader(sock.fileno())
                sock.close()
        if not self._closed.done():
            self._closed.set_result(None)

    async def start_serving(self) -> None:
        return None  # serving from the start

    async def serve_forever(self) -> None:
        await self._closed

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def is_serving(self) -> bool:
        return any(sock.fileno() >= 0 for sock in self.sockets)

    async def wait_closed(self) -> None:
        await self._closed
