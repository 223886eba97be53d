"""The edge: what every request meets first and every answer passes on its way out.

One aiohttp middleware (a layer costs microseconds, so there is only one) gives
each request its id, answers CORS preflights, and turns every exception into a
problem+json answer: catalog errors as they are, aiohttp's own refusals (no
route, wrong method, body too large) translated, anything else a logged
`INTERNAL_ERROR`, never a traceback or an HTML page. `Edge.finish` then adds
the request id, the security and CORS headers, the metrics and one access-log
line, for the parser's refusals too (`Edge.refuse`, `Edge.head_timeout_answer`,
used by `connections.py`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol

import orjson
from aiohttp import web
from aiohttp.typedefs import Middleware

from gateway.contract import errors, identity, privacy
from gateway.contract.errors import LANGUAGES, GatewayError
from gateway.contract.headers import REPLAY_HEADER
from gateway.contract.observability import AccessLog, Metrics
from gateway.contract.problem import PROBLEM_JSON, negotiate_language, problem_body, render
from gateway.contract.settings import Settings
from gateway.edge import connections
from gateway.edge.cors import Cors
from gateway.edge.security_headers import security_headers

log = logging.getLogger("gateway")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Where the middleware keeps the request id on the aiohttp request, for every later step.
REQUEST_ID = web.RequestKey("request_id", str)
_MAX_ECHOED_PATH = 200
TRACED_PREFIX = "/v1/"  # the gateway's own routes (health, metrics, admin) are never traced


class ServerSpan(Protocol):
    """One request's place in its trace, from its start to its answer."""

    @property
    def recorded_ids(self) -> tuple[str, str] | None: ...

    def end(self, status: int, code: str) -> None: ...

    def client_gone(self) -> None: ...


class RequestTracing(Protocol):
    """Tracing as the edge sees it (`ops/tracing.py` implements it)."""

    def begin(self, method: str, route: str, headers: Mapping[str, str],
              rid: str) -> ServerSpan: ...


class Edge:
    """What every answer goes through on its way out, the parser's refusals included:
    request id, security and CORS headers, metrics, one access-log line."""

    def __init__(self, settings: Settings, metrics: Metrics, access_log: AccessLog) -> None:
        self._server = settings.server
        self.max_body_bytes = settings.server.max_body_bytes
        self._metrics = metrics
        self._access_log = access_log
        self._headers = security_headers(settings.security_headers)
        self.cors = Cors(settings.cors) if settings.cors.allow_origins else None
        # Sent to each connection refused while the process holds too much of heads.
        self._heads_full = self.prebuilt(GatewayError(errors.OVERLOADED), closing=True)

    def finish(self, request: web.BaseRequest, response: web.StreamResponse, rid: str,
               code: str, route: str, started: float, trace: ServerSpan | None = None) -> None:
        headers = response.headers
        headers["X-Request-ID"] = rid
        for name, value in self._headers.items():
            headers.setdefault(name, value)  # the console's page sets a CSP of its own
        if self.cors is not None:
            self.cors.decorate(request, response)
        elapsed = time.perf_counter() - started
        self._metrics.observe_request(route, response.status, code, elapsed)
        if self._access_log.enabled:
            self.log_line(rid, request.method, route, request.path, response.status, code,
                          elapsed, replayed=REPLAY_HEADER in headers,
                          trace=None if trace is None else trace.recorded_ids)

    def refuse(self, request: web.BaseRequest, status: int,
               exc: BaseException | None) -> web.StreamResponse:
        """A request the HTTP parser gave up on: no route, no handler, just the answer."""
        started = time.perf_counter()
        rid = identity.request_id(None)
        err = connections.parser_refusal(self._server, status, exc)
        response = render(err, rid, "en")
        self.finish(request, response, rid, err.spec.code, "unparsed", started)
        return response

    def head_timeout_answer(self) -> bytes:
        """408 for a request head that never completed, as bytes for the bare socket."""
        rid = identity.request_id(None)
        err = connections.timeout_error("head", self._server.header_timeout_s)
        self._metrics.observe_request("unparsed", 408, err.spec.code, 0.0)
        return self.prebuilt(err, closing=True).bytes_for(rid, "en")

    def heads_full_answer(self) -> bytes:
        """503 for a head still arriving while the process holds more of unfinished heads
        than `server.max_buffered_head_bytes`, as bytes for the bare socket."""
        self._metrics.observe_request("unparsed", errors.OVERLOADED.status,
                                      errors.OVERLOADED.code, 0.0)
        return self._heads_full.bytes_for(identity.request_id(None), "en")

    def prebuilt(self, err: GatewayError, *, closing: bool = False) -> PrebuiltError:
        """`err` as bytes for the bare socket, the same answer `render` and `finish` give."""
        return PrebuiltError(err, self._headers, closing=closing)

    @property
    def own_headers(self) -> dict[str, str]:
        """The security headers every answer carries, for a stream that sends its own
        before the edge sees it."""
        return dict(self._headers)

    @property
    def logs_access(self) -> bool:
        return self._access_log.enabled

    def log_line(self, rid: str, method: str, route: str, path: str, status: int, code: str,
                 elapsed: float, *, replayed: bool = False,
                 trace: tuple[str, str] | None = None) -> None:
        """The one access-log line of an answer, from a handler or written as bytes at
        arrival (their metrics are the caller's to count): the path masked (`privacy.py`)
        unless it is the route itself."""
        if not self._access_log.enabled:
            return
        path = path[:_MAX_ECHOED_PATH]
        line = {
            "ts": round(time.time(), 3), "request_id": rid, "method": method,
            "route": route, "path": path if path == route else privacy.scrub(path),
            "status": status, "code": code, "ms": round(elapsed * 1000, 2),
            "replayed": replayed,
        }
        if trace is not None:
            line["trace_id"], line["span_id"] = trace
        self._access_log.write(line)


# Stands in for the request id while an answer is prebuilt; no id can look like it.
_ID_SLOT = "<request id>"


class PrebuiltError:
    """One catalog error, prebuilt per language as HTTP/1.1 bytes; per answer only the
    request id and the length are filled in."""

    __slots__ = ("_bodies", "_heads")

    def __init__(self, err: GatewayError, extra: dict[str, str], *, closing: bool) -> None:
        self._heads: dict[str, bytes] = {}
        self._bodies: dict[str, tuple[bytes, bytes]] = {}
        for lang in LANGUAGES:
            response = render(err, _ID_SLOT, lang)
            lines = [f"HTTP/1.1 {response.status} {response.reason}",
                     f"Content-Type: {PROBLEM_JSON}",
                     *(f"{name}: {value}" for name, value in response.headers.items()
                       if name != "Content-Type"),
                     *(f"{name}: {value}" for name, value in extra.items())]
            if closing:
                lines.append("Connection: close")
            self._heads[lang] = ("\r\n".join(lines) + "\r\n").encode()
            before, after = orjson.dumps(problem_body(err, _ID_SLOT, lang)).split(
                _ID_SLOT.encode())
            self._bodies[lang] = (before, after)

    def bytes_for(self, rid: str, lang: str) -> bytes:
        before, after = self._bodies[lang]
        rid_bytes = rid.encode()
        length = len(before) + len(rid_bytes) + len(after)
        return b"".join((self._heads[lang], b"Content-Length: %d\r\nX-Request-ID: " % length,
                         rid_bytes, b"\r\n\r\n", before, rid_bytes, after))


EDGE = web.AppKey("edge", Edge)


def middleware(edge: Edge, tracing: RequestTracing | None = None) -> Middleware:
    """The one middleware: request id, CORS preflight, the request's trace (public routes,
    when tracing is on), every exception as problem+json, and `Edge.finish` on the way
    out."""
    cors = edge.cors
    max_body_bytes = edge.max_body_bytes

    @web.middleware
    async def edge_step(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        rid = identity.request_id(request.headers.get("X-Request-ID"))
        request[REQUEST_ID] = rid
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        trace = None
        if tracing is not None and route.startswith(TRACED_PREFIX):
            trace = tracing.begin(request.method, route, request.headers, rid)
        code = "none"
        response: web.StreamResponse
        try:
            if _TRANSFER_ENCODING in request.headers:
                _only_chunked(request.headers.getall(_TRANSFER_ENCODING))
            if cors is not None and cors.is_preflight(request):
                response = cors.preflight(request)
            else:
                response = await handler(request)
        except GatewayError as err:
            code, response = _problem(err, request, rid)
        except web.HTTPException as exc:
            code, response = _problem(
                _translate_http_exception(exc, request, max_body_bytes), request, rid)
        except Exception:
            log.exception("unhandled error", extra={"fields": {"request_id": rid}})
            code, response = _problem(GatewayError(errors.INTERNAL_ERROR), request, rid)
        except BaseException:
            if trace is not None:  # cancelled: the client went away, or shutdown
                trace.client_gone()
            raise
        if trace is not None:
            trace.end(response.status, code)
        edge.finish(request, response, rid, code, route, started, trace)
        return response

    return edge_step


# After these the rest of the request is not worth keeping the connection for; after a
# malformed one, no later byte on it can be trusted to start a request.
_CLOSING = frozenset((errors.PAYLOAD_TOO_LARGE, errors.REQUEST_TIMEOUT,
                      errors.MALFORMED_REQUEST))
_TRANSFER_ENCODING = "Transfer-Encoding"


def _only_chunked(codings: list[str]) -> None:
    """`Transfer-Encoding` is exactly `chunked`, once: a list such as `identity, chunked`
    is read as chunked by one parser and refused by another (nginx answers 501), and
    two readings of one stream are how requests are smuggled."""
    if len(codings) != 1 or codings[0].strip().lower() != "chunked":
        raise GatewayError(errors.MALFORMED_REQUEST,
                           params={"reason": "Transfer-Encoding other than chunked"})


def _problem(err: GatewayError, request: web.Request, rid: str) -> tuple[str, web.Response]:
    response = render(err, rid, negotiate_language(request.headers.get("Accept-Language")))
    if err.spec in _CLOSING:
        response.force_close()
    return err.spec.code, response


def _translate_http_exception(exc: web.HTTPException, request: web.Request,
                              max_body_bytes: int) -> GatewayError:
    """aiohttp's own refusals (no route, wrong method, body too large) as catalog errors."""
    path = privacy.scrub(request.path[:_MAX_ECHOED_PATH])
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(exc.allowed_methods))
        return GatewayError(errors.METHOD_NOT_ALLOWED,
                            params={"method": request.method, "path": path},
                            headers={"Allow": allowed})
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return GatewayError(errors.PAYLOAD_TOO_LARGE,
                            params={"limit": max_body_bytes})
    if isinstance(exc, web.HTTPNotFound):
        return GatewayError(errors.NOT_FOUND, params={"path": path})
    log.error("unexpected HTTP exception %s", exc.status)
    return GatewayError(errors.INTERNAL_ERROR)
