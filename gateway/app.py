"""The HTTP surface: the app factory, the edge middleware and the operational routes.

One middleware wraps every request (a layer costs microseconds, so there is
only one): it assigns the request id, turns every exception into a
problem+json answer (never a traceback, never an HTML page), and records the
metrics and the access-log line. Proxied routes come from the route table.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web
from aiohttp.typedefs import Middleware

from gateway import (
    admin,
    connections,
    errors,
    idempotency,
    identity,
    openapi,
    privacy,
    rate_limit,
    status,
)
from gateway.auth import AdminTokens, ClientKeys
from gateway.breaker import Breaker
from gateway.breaker_control import BreakerBoard
from gateway.clock import Clock, SystemClock
from gateway.cors import Cors
from gateway.errors import GatewayError
from gateway.idempotency import REPLAY_HEADER, Idempotency
from gateway.maintenance import Maintenance
from gateway.observability import METRICS_CONTENT_TYPE, AccessLog, Metrics
from gateway.overload import Admission, Unlimited
from gateway.problem import PROBLEM_JSON, json_response, negotiate_language, problem_body, render
from gateway.proxy import Handler, Shared, make_handler
from gateway.rate_limit import RateLimiter
from gateway.routes import BACKENDS, ROUTES, RoutePolicy
from gateway.security_headers import security_headers
from gateway.settings import Settings
from gateway.stale_cache import StaleCache
from gateway.status import StatusPage
from gateway.store import MemoryStore, Store, StoreUnavailable, follow
from gateway.upstream import Upstream

log = logging.getLogger("gateway")

HOUSEKEEPING_S = 0.5
_MAX_ECHOED_PATH = 200


@dataclass(slots=True)
class Lifecycle:
    """Readiness: not ready while starting, and not ready again once draining."""

    started: bool = False
    draining: bool = False

    @property
    def ready(self) -> bool:
        return self.started and not self.draining


SETTINGS = web.AppKey("settings", Settings)
UPSTREAMS = web.AppKey("upstreams", dict[str, Upstream])
LIFECYCLE = web.AppKey("lifecycle", Lifecycle)
METRICS = web.AppKey("metrics", Metrics)
ACCESS_LOG = web.AppKey("access_log", AccessLog)
STORE = web.AppKey("store", Store)
MAINTENANCE = admin.MAINTENANCE
STATUS = web.AppKey("status", StatusPage)
ADMISSION = web.AppKey[Admission | Unlimited]("admission")


def _make_store(settings: Settings, clock: Clock) -> Store:
    if settings.redis.url is None:
        return MemoryStore(clock, settings.idempotency.memory_max_records,
                           settings.rate_limit.memory_max_clients)
    from gateway.redis_store import RedisStore

    return RedisStore(settings.redis.url, settings.redis.timeout_s)


def build_app(settings: Settings, clock: Clock | None = None) -> web.Application:
    clock = clock or SystemClock()
    metrics = Metrics()
    access_log = AccessLog(settings.server.access_log)
    store = _make_store(settings, clock)
    breakers: dict[str, Breaker] = {
        name: Breaker(name, settings.upstreams.get(name).breaker, clock,
                      metrics.breaker_transition)
        for name in BACKENDS
    }
    upstreams: dict[str, Upstream] = {
        name: Upstream(name, settings.upstreams.get(name), breakers[name], metrics, clock,
                       bulkheads=settings.overload.enabled)
        for name in BACKENDS
    }
    for name in BACKENDS:
        metrics.breaker_state.labels(name).set(0)
    if not settings.idempotency.enabled:
        log.warning("idempotency records are off: resubmitted orders and payments are "
                    "protected only by the backends' own key deduplication")
    edge = Edge(settings, metrics, access_log)
    app = web.Application(
        middlewares=[_edge_middleware(edge)],
        client_max_size=settings.server.max_body_bytes,
        handler_args=connections.handler_args(settings.server),
    )
    app[EDGE] = edge
    app[SETTINGS] = settings
    app[UPSTREAMS] = upstreams
    app[LIFECYCLE] = Lifecycle()
    app[METRICS] = metrics
    app[ACCESS_LOG] = access_log
    app[STORE] = store
    app[admin.BOARD] = BreakerBoard(breakers, store)
    admin_tokens = None
    if settings.admin.token is not None:
        admin_tokens = AdminTokens(settings.admin.token, settings.admin.previous_token)
    maintenance = Maintenance(ROUTES, store, clock, settings.maintenance.windows, admin_tokens)
    app[MAINTENANCE] = maintenance
    app[STATUS] = StatusPage(upstreams, maintenance, clock)
    if admin_tokens is not None:
        admin.add_routes(app, settings, admin_tokens)
    limiter = None
    if limits := rate_limit.tier_limits(settings.rate_limit):
        limiter = RateLimiter(store, limits,
                              metrics.counter_of(metrics.rate_limit, rate_limit.EVENTS))
    keys = ClientKeys(settings.auth, store)
    app[admin.CLIENT_KEYS] = keys
    admission: Admission | Unlimited = Unlimited()
    if settings.overload.enabled:
        admission = Admission(settings.overload)
    else:
        log.warning("overload protection is off: no admission control, no bulkheads")
    app[ADMISSION] = admission
    shared = Shared(maintenance, admission, limiter, keys if keys.enabled else None,
                    settings.server.max_body_bytes, settings.overload.request_deadline_s,
                    settings.server.body_timeout_s)
    for policy in ROUTES:
        stale = None
        if policy.cacheable and settings.stale_cache.max_entries > 0:
            stale = StaleCache(clock, settings.stale_cache.max_age_s,
                               settings.stale_cache.max_entries,
                               metrics.stale_served.labels(policy.route_key).inc)
        app.router.add_route(policy.method, policy.path, make_handler(
            policy, shared, upstreams[policy.backend],
            _idempotency(policy, store, settings, metrics), stale,
            metrics.shed.labels(policy.route_key).inc))
    app.router.add_get("/v1/status", _status)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/openapi.json", _openapi(openapi.document_bytes(settings)))
    app.cleanup_ctx.append(_upstream_sessions)
    app.cleanup_ctx.append(_housekeeping)
    app.cleanup_ctx.append(_control_sync)
    return app


def _idempotency(policy: RoutePolicy, store: Store, settings: Settings,
                 metrics: Metrics) -> Idempotency | None:
    if not policy.requires_idempotency_key or not settings.idempotency.enabled:
        return None
    return Idempotency(
        policy.route_key, store, settings.idempotency,
        metrics.counter_of(metrics.idempotency, idempotency.EVENTS, policy.route_key),
        success_status=policy.success_status, unknown_outcome=policy.unknown_outcome,
        fail_open=policy.backend == "order" and settings.idempotency.orders_fail_open)


async def _upstream_sessions(app: web.Application) -> AsyncIterator[None]:
    for upstream in app[UPSTREAMS].values():
        await upstream.start()
    app[LIFECYCLE].started = True
    yield
    # Cleanup runs after in-flight requests have finished (or the drain timed out).
    for upstream in app[UPSTREAMS].values():
        await upstream.close()


@contextlib.asynccontextmanager
async def _background(coro: Coroutine[Any, Any, None]) -> AsyncIterator[None]:
    """Run `coro` for as long as the block lasts."""
    task = asyncio.create_task(coro)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _housekeeping(app: web.Application) -> AsyncIterator[None]:
    """On a timer, off the request path: flush the access log, sample the in-flight gauge."""
    access_log = app[ACCESS_LOG]
    in_flight = app[METRICS].in_flight
    admission = app[ADMISSION]

    async def every_tick() -> None:
        while True:
            await asyncio.sleep(HOUSEKEEPING_S)
            access_log.flush()
            in_flight.set(admission.in_flight)

    async with _background(every_tick()):
        yield
    access_log.flush()


async def _control_sync(app: web.Application) -> AsyncIterator[None]:
    """With a shared store, follow SRE changes made through other processes."""
    store = app[STORE]
    if not store.shared:
        yield
        await store.close()
        return
    interval = app[SETTINGS].redis.sync_interval_s
    maintenance = app[MAINTENANCE]
    keys = app[admin.CLIENT_KEYS]
    with contextlib.suppress(StoreUnavailable):
        await maintenance.sync()  # windows in force before the first request
        await keys.sync()  # and the API keys added through the admin API
    async with (_background(follow("breakers", app[admin.BOARD].sync, interval)),
                _background(follow("maintenance", maintenance.sync, interval)),
                _background(follow("api_keys", keys.sync, interval))):
        yield
    await store.close()


class Edge:
    """What every answer goes through on its way out, the parser's refusals included:
    request id, security and CORS headers, metrics, one access-log line."""

    def __init__(self, settings: Settings, metrics: Metrics, access_log: AccessLog) -> None:
        self._server = settings.server
        self._metrics = metrics
        self._access_log = access_log
        self._headers = security_headers(settings.security_headers)
        self.cors = Cors(settings.cors) if settings.cors.allow_origins else None

    def finish(self, request: web.BaseRequest, response: web.StreamResponse, rid: str,
               code: str, route: str, started: float) -> None:
        headers = response.headers
        headers["X-Request-ID"] = rid
        headers.update(self._headers)
        if self.cors is not None:
            self.cors.decorate(request, response)
        elapsed = time.perf_counter() - started
        self._metrics.observe_request(route, response.status, code, elapsed)
        if self._access_log.enabled:
            path = request.path[:_MAX_ECHOED_PATH]
            self._access_log.write({
                "ts": round(time.time(), 3), "request_id": rid, "method": request.method,
                "route": route, "path": path if path == route else privacy.scrub(path),
                "status": response.status, "code": code, "ms": round(elapsed * 1000, 2),
                "replayed": REPLAY_HEADER in headers,
            })

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
        body = orjson.dumps(problem_body(err, rid, "en"))
        lines = ["HTTP/1.1 408 Request Timeout", f"Content-Type: {PROBLEM_JSON}",
                 f"Content-Length: {len(body)}", "Connection: close", "Retry-After: 1",
                 "Cache-Control: no-store", f"X-Request-ID: {rid}",
                 *(f"{name}: {value}" for name, value in self._headers.items())]
        self._metrics.observe_request("unparsed", 408, err.spec.code, 0.0)
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


EDGE = web.AppKey("edge", Edge)


def _edge_middleware(edge: Edge) -> Middleware:
    cors = edge.cors

    @web.middleware
    async def edge_step(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        rid = identity.request_id(request.headers.get("X-Request-ID"))
        request[identity.REQUEST_ID] = rid
        code = "none"
        response: web.StreamResponse
        try:
            if cors is not None and cors.is_preflight(request):
                response = cors.preflight(request)
            else:
                response = await handler(request)
        except GatewayError as err:
            code, response = _problem(err, request, rid)
        except web.HTTPException as exc:
            code, response = _problem(_translate_http_exception(exc, request), request, rid)
        except Exception:
            log.exception("unhandled error", extra={"fields": {"request_id": rid}})
            code, response = _problem(GatewayError(errors.INTERNAL_ERROR), request, rid)
        resource = request.match_info.route.resource
        edge.finish(request, response, rid, code,
                    resource.canonical if resource is not None else "unmatched", started)
        return response

    return edge_step


# After these the rest of the request is not worth keeping the connection for.
_CLOSING = frozenset((errors.PAYLOAD_TOO_LARGE, errors.REQUEST_TIMEOUT))


def _problem(err: GatewayError, request: web.Request, rid: str) -> tuple[str, web.Response]:
    response = render(err, rid, negotiate_language(request.headers.get("Accept-Language")))
    if err.spec in _CLOSING:
        response.force_close()
    return err.spec.code, response


def _translate_http_exception(exc: web.HTTPException, request: web.Request) -> GatewayError:
    """aiohttp's own refusals (no route, wrong method, body too large) as catalog errors."""
    path = privacy.scrub(request.path[:_MAX_ECHOED_PATH])
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(exc.allowed_methods))
        return GatewayError(errors.METHOD_NOT_ALLOWED,
                            params={"method": request.method, "path": path},
                            headers={"Allow": allowed})
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return GatewayError(errors.PAYLOAD_TOO_LARGE,
                            params={"limit": request.app[SETTINGS].server.max_body_bytes})
    if isinstance(exc, web.HTTPNotFound):
        return GatewayError(errors.NOT_FOUND, params={"path": path})
    log.error("unexpected HTTP exception %s", exc.status)
    return GatewayError(errors.INTERNAL_ERROR)


async def _healthz(_request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def _readyz(request: web.Request) -> web.Response:
    lifecycle = request.app[LIFECYCLE]
    if lifecycle.ready:
        return json_response({"status": "ready"})
    return json_response({"status": "draining" if lifecycle.draining else "starting"}, 503,
                 **{"Retry-After": "1"})


async def _metrics(request: web.Request) -> web.Response:
    body = request.app[METRICS].exposition()
    return web.Response(body=body, headers={"Content-Type": METRICS_CONTENT_TYPE})


async def _status(request: web.Request) -> web.Response:
    lang = negotiate_language(request.headers.get("Accept-Language"))
    return web.Response(body=request.app[STATUS].body(lang), content_type="application/json",
                        headers={"Cache-Control": f"public, max-age={status.CACHE_SECONDS}",
                                 "Vary": "Accept-Language", "Content-Language": lang})


def _openapi(document: bytes) -> Handler:
    async def serve_document(_request: web.Request) -> web.Response:
        return web.Response(body=document, content_type="application/json")

    return serve_document
