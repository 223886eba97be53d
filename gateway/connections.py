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

None of these reaches a route, let alone a backend. The head timer costs
nothing on the usual path: a head that arrives whole in one read never arms it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader
from aiohttp.web_request import BaseRequest

from gateway import errors
from gateway.errors import GatewayError
from gateway.settings import ServerSettings

# Renders a refusal for a request the parser gave up on (status and exception from aiohttp).
Refuse = Callable[[BaseRequest, int, BaseException | None], web.StreamResponse]


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


class EdgeConnection(web.RequestHandler):
    """aiohttp's connection handler with a head timeout and catalog answers."""

    __slots__ = ("_edge_server", "_head_timer", "_last_payload")

    def __init__(self, manager: EdgeServer, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._edge_server = manager
        self._head_timer: asyncio.TimerHandle | None = None
        # The body of the latest request parsed: bytes while it is unfinished are its.
        self._last_payload: StreamReader = EMPTY_PAYLOAD

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm_head_timer()  # a connection that sends nothing is cut off too

    def data_received(self, data: bytes) -> None:
        heads = self._request_count
        body_pending = not self._last_payload.is_eof()
        super().data_received(data)
        if self._request_count != heads:
            self._last_payload = self._messages[-1][1] if self._messages else EMPTY_PAYLOAD
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None
        elif self._head_timer is None and data and not body_pending:
            # Bytes that are no body's: the start of the next request's head.
            self._arm_head_timer()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
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
                 header_timeout_s: float, **handler_kwargs: Any) -> None:
        super().__init__(handler, request_factory=request_factory,
                         handler_cancellation=handler_cancellation, **handler_kwargs)
        self.refuse = refuse
        self.head_timeout_answer = head_timeout_answer
        self.header_timeout_s = header_timeout_s
        self._handler_kwargs = handler_kwargs  # what each connection handler is made with

    def __call__(self) -> web.RequestHandler:
        return EdgeConnection(self, loop=asyncio.get_running_loop(), **self._handler_kwargs)


class EdgeRunner(web.AppRunner):
    """An AppRunner whose server makes EdgeConnections (the app's start-up and cleanup
    run as usual)."""

    def __init__(self, app: web.Application, server: ServerSettings, refuse: Refuse,
                 head_timeout_answer: Callable[[], bytes], **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._edge_kwargs = {"refuse": refuse, "head_timeout_answer": head_timeout_answer,
                             "header_timeout_s": server.header_timeout_s,
                             **handler_args(server), **kwargs}

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()
        kwargs = {k: v for k, v in self._edge_kwargs.items()
                  if k not in ("handle_signals", "shutdown_timeout")}
        return EdgeServer(plain.request_handler, request_factory=plain.request_factory,
                          handler_cancellation=plain.handler_cancellation, **kwargs)
