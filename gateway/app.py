"""The composition root: `build_app` makes every part once and wires them together.

It builds the stores, the breakers and backends, the edge (`edge/middleware.py`), the
pipeline of each route in the route table (`proxy.py`), the admin API, and
the operational routes (`/healthz`, `/readyz`, `/metrics`, `/v1/status`,
`/openapi.json`), plus the background tasks that live as long as the app.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from gateway.backends.breaker import Breaker, Transition
from gateway.backends.breaker_control import BreakerBoard
from gateway.backends.faults import Faults
from gateway.backends.stale_cache import StaleCache
from gateway.backends.timer_wheel import TimerWheel
from gateway.backends.upstream import HeadLimits, Upstream
from gateway.contract import chinese_script
from gateway.contract.clock import Clock, SystemClock, iso_utc
from gateway.contract.observability import METRICS_CONTENT_TYPE, AccessLog, Metrics
from gateway.contract.problem import json_response, negotiate_language
from gateway.contract.routes import BACKENDS, ROUTES, RoutePolicy
from gateway.contract.settings import Settings
from gateway.edge import connections
from gateway.edge.admission import ADJUST_S, Admission, AdmitAll
from gateway.edge.auth import AdminTokens, ClientKeys, FailedChecks
from gateway.edge.middleware import EDGE, Edge, Handler, middleware
from gateway.ops import admin, events, openapi, status
from gateway.ops.status import StatusPage
from gateway.ops.timeline import FLUSH_S, Timeline
from gateway.ops.tracing import BackendTracing, Tracing
from gateway.ops.traffic import Traffic
from gateway.pipeline import idempotency, rate_limit
from gateway.pipeline.arrivals import Arrivals, EarlyRefusal, refuses_early
from gateway.pipeline.idempotency import Idempotency, RefusedRecords
from gateway.pipeline.maintenance import Maintenance
from gateway.pipeline.proxy import Shared, make_handler
from gateway.pipeline.queue_poll import poll_route
from gateway.pipeline.rate_limit import RateLimiter
from gateway.pipeline.waiting_room import TICK_S, WaitingRoom
from gateway.state.common import StoreUnavailable, follow
from gateway.state.record_store import IdempotencyRecords
from gateway.state.stores import Stores, memory_stores

log = logging.getLogger("gateway")

HOUSEKEEPING_S = 0.5


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
STORES = web.AppKey("stores", Stores)
MAINTENANCE = admin.MAINTENANCE
STATUS = web.AppKey("status", StatusPage)
ADMISSION = web.AppKey[Admission | AdmitAll]("admission")
# What the connection layer decides on a head as it is read; None: admission is off.
ARRIVALS = web.AppKey[Arrivals | None]("arrivals")


def _make_stores(settings: Settings, clock: Clock, metrics: Metrics) -> Stores:
    redis = settings.redis
    if redis.url is None:
        return memory_stores(clock, settings.idempotency.memory_max_records,
                             settings.rate_limit.memory_max_clients)
    # Imported only when used: the demo and single-process setups never load redis-py.
    from gateway.state.stores import redis_stores

    return redis_stores(redis.url, redis.timeout_s, min_replica_acks=redis.min_replica_acks,
                        replica_ack_timeout_ms=redis.replica_ack_timeout_ms,
                        count_ack=metrics.ack_counter())


def build_app(settings: Settings, clock: Clock | None = None) -> web.Application:
    clock = clock or SystemClock()
    metrics = Metrics()
    access_log = AccessLog(settings.server.access_log)
    stores = _make_stores(settings, clock, metrics)
    timeline = Timeline(stores.timeline, clock)
    tracing = Tracing(settings.tracing) if settings.tracing.enabled else None
    breakers, faults, upstreams = _backends(settings, clock, metrics, stores, timeline, tracing)
    if not settings.idempotency.enabled:
        log.warning("idempotency records are off: resubmitted orders and payments are "
                    "protected only by the backends' own key deduplication")
    edge = Edge(settings, metrics, access_log)
    app = web.Application(
        middlewares=[middleware(edge, tracing)],
        client_max_size=settings.server.max_body_bytes,
        handler_args=connections.handler_args(settings.server),
    )
    app[EDGE] = edge
    _export_spans(app, tracing, settings.server.drain_timeout_s)
    app[admin.FAULTS] = faults
    app[admin.TIMELINE] = timeline
    app[events.STOPPING] = asyncio.Event()
    app[admin.TRAFFIC] = Traffic(metrics, clock)
    app[SETTINGS] = settings
    app[UPSTREAMS] = upstreams
    app[LIFECYCLE] = Lifecycle()
    app[METRICS] = metrics
    app[ACCESS_LOG] = access_log
    app[STORES] = stores
    app[admin.BOARD] = BreakerBoard(breakers, stores.breakers)
    admin_tokens = None
    if settings.admin.token is not None:
        admin_tokens = AdminTokens(settings.admin.token, settings.admin.previous_token)
    chinese_script.load()  # announcements are converted as windows are set: never a wait then
    maintenance = Maintenance(ROUTES, stores.windows, clock, settings.maintenance.windows,
                              admin_tokens)
    app[MAINTENANCE] = maintenance
    room = WaitingRoom(settings.waiting_room, stores.queue, stores.room, breakers, clock,
                       metrics, shared=stores.shared, workers=settings.server.workers,
                       buckets=stores.buckets, drawn=_draw_noted(timeline))
    app[admin.WAITING_ROOM] = room
    app[STATUS] = StatusPage(upstreams, maintenance, room, clock)
    failed = FailedChecks(settings.admin.rate_per_s, settings.admin.burst, clock)
    bypass_here: Callable[[web.Request], bool] = _anywhere
    if admin_tokens is not None:
        listener = admin.add_routes(app, settings, admin_tokens, failed)
        if listener.separate:
            bypass_here = listener.admits
    limiter = None
    if limits := rate_limit.tier_limits(settings.rate_limit):
        limiter = RateLimiter(stores.buckets, limits,
                              metrics.counter_of(metrics.rate_limit, rate_limit.EVENTS))
    keys = ClientKeys(settings.auth, stores.keys)
    app[admin.CLIENT_KEYS] = keys
    stale_caches = {policy.path: StaleCache(clock, settings.stale_cache.max_age_s,
                                            settings.stale_cache.max_entries,
                                            metrics.stale_served.labels(policy.path).inc)
                    for policy in ROUTES
                    if policy.cacheable and settings.stale_cache.max_entries > 0}
    early = {policy.path: EarlyRefusal(maintenance, maintenance.route_windows(policy),
                                       breakers[policy.backend], room.gate(policy))
             for policy in ROUTES if settings.overload.enabled and refuses_early(
                 policy, limited=limiter is not None, keyed=keys.enabled,
                 stale=policy.path in stale_caches)}
    admission = _admission(app, settings, edge, metrics, early)
    shared = Shared(maintenance, admission, limiter, keys if keys.enabled else None, room,
                    settings.server.max_body_bytes, settings.overload.request_deadline_s,
                    settings.server.body_timeout_s, failed,
                    tuple(settings.server.trusted_proxies), bypass_here)
    refused = RefusedRecords(settings.idempotency, stores.buckets, clock)
    for policy in ROUTES:
        app.router.add_route(policy.method, policy.path, make_handler(
            policy, shared, upstreams[policy.backend],
            _idempotency(policy, stores.records, settings, metrics, refused, clock, tracing),
            stale_caches.get(policy.path), metrics.shed.labels(policy.path).inc))
    app.router.add_get("/v1/queue/{ticket}",
                       poll_route(room, keys if keys.enabled else None, failed))
    _own_routes(app, settings)
    return app


def _draw_noted(timeline: Timeline) -> Callable[[int, datetime], None]:
    def drawn(tickets: int, starts_at: datetime) -> None:
        timeline.note("waiting_room", f"sale drawn: {tickets} pre-queue tickets put in "
                      "random order", action="sale_drawn", tickets=tickets,
                      sale_starts_at=iso_utc(starts_at.timestamp()))
    return drawn


def _backends(settings: Settings, clock: Clock, metrics: Metrics, stores: Stores,
              timeline: Timeline, tracing: Tracing | None,
              ) -> tuple[dict[str, Breaker], Faults, dict[str, Upstream]]:
    """A breaker and an upstream per backend, sharing the fault rules and one timer wheel."""

    def transition(t: Transition) -> None:
        metrics.breaker_transition(t.breaker, t.old, t.new, t.reason)
        figures = t.figures
        timeline.note("breaker", f"{t.breaker}: {t.old} -> {t.new} ({t.reason})",
                      backend=t.breaker, from_state=t.old, to_state=t.new, reason=t.reason,
                      window={"calls": figures.calls,
                              "failure_rate": round(figures.failure_rate, 4),
                              "slow_call_rate": round(figures.slow_call_rate, 4)})

    breakers: dict[str, Breaker] = {
        name: Breaker(name, settings.upstreams.get(name).breaker, clock, transition)
        for name in BACKENDS
    }
    faults = Faults(stores.faults, clock, metrics)
    wheel = TimerWheel()  # every backend call's deadline, on one loop timer
    head_limits = HeadLimits(settings.server.max_headers, settings.server.max_header_bytes)
    upstreams: dict[str, Upstream] = {
        name: Upstream(name, settings.upstreams.get(name), breakers[name], metrics, clock,
                       bulkheads=settings.overload.enabled, faults=faults, wheel=wheel,
                       head_limits=head_limits,
                       tracing=None if tracing is None else _backend_tracing(
                           tracing, name, settings.upstreams.get(name).url))
        for name in BACKENDS
    }
    for name in BACKENDS:
        metrics.breaker_state.labels(name).set(0)
    return breakers, faults, upstreams


def _admission(app: web.Application, settings: Settings, edge: Edge, metrics: Metrics,
               early: dict[str, EarlyRefusal]) -> Admission | AdmitAll:
    """Admission control, and the decisions it takes at arrival; none when it is off."""
    app[ARRIVALS] = None
    if not settings.overload.enabled:
        log.warning("overload protection is off: no admission control, no bulkheads")
        app[ADMISSION] = AdmitAll()
        return app[ADMISSION]
    admission = Admission(settings.overload)
    app[ARRIVALS] = Arrivals(admission, ROUTES, edge, metrics,
                             holds=settings.overload.hold_early_retries, early=early)
    app[ADMISSION] = admission
    return admission


def _own_routes(app: web.Application, settings: Settings) -> None:
    """The gateway's own routes, and what runs beside the requests while it serves."""
    app.router.add_get("/v1/status", _status)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/openapi.json", _openapi(openapi.document_bytes(settings)))
    app.cleanup_ctx.append(_upstream_sessions)
    app.cleanup_ctx.append(_housekeeping)
    app.cleanup_ctx.append(_control_sync)
    app.cleanup_ctx.append(_room_admissions)
    app.cleanup_ctx.append(_admission_control)
    app.cleanup_ctx.append(_timeline_flush)


async def _timeline_flush(app: web.Application) -> AsyncIterator[None]:
    """Timeline notes to the store on a timer (noting itself is synchronous)."""
    timeline = app[admin.TIMELINE]
    async with _background(follow("timeline", timeline.flush, FLUSH_S)):
        yield
    with contextlib.suppress(StoreUnavailable):
        await timeline.flush()


def _idempotency(policy: RoutePolicy, records: IdempotencyRecords, settings: Settings,
                 metrics: Metrics, refused: RefusedRecords, clock: Clock,
                 tracing: Tracing | None) -> Idempotency | None:
    if not policy.requires_idempotency_key or not settings.idempotency.enabled:
        return None
    count = metrics.counter_of(metrics.idempotency, idempotency.EVENTS, policy.path)
    if tracing is not None:
        counted, noted = count, tracing.idempotency

        def count(event: str) -> None:
            counted(event)
            noted(event)

    return Idempotency(
        policy.route_key, records, settings.idempotency, count,
        success_status=policy.success_status, unknown_outcome=policy.unknown_outcome,
        fail_open=policy.backend == "order" and settings.idempotency.orders_fail_open,
        refused=refused, clock=clock, timed=None if tracing is None else tracing.timed)


def _backend_tracing(tracing: Tracing, name: str, url: str) -> BackendTracing:
    parts = urlsplit(url)
    return tracing.for_backend(name, parts.hostname or "", parts.port or (
        443 if parts.scheme == "https" else 80))


def _export_spans(app: web.Application, tracing: Tracing | None, timeout_s: float) -> None:
    """Registered before every other cleanup, so it runs after them all: the last spans
    (of requests drained, of backends closed) are exported too, within `timeout_s`."""
    if tracing is None:
        return

    async def exported(_: web.Application) -> AsyncIterator[None]:
        yield
        await tracing.close(timeout_s)

    app.cleanup_ctx.append(exported)


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
    """On a timer, off the request path: flush the access log, sample admission's gauges."""
    access_log = app[ACCESS_LOG]
    metrics = app[METRICS]
    admission = app[ADMISSION]
    arrivals = app[ARRIVALS]
    traffic = app[admin.TRAFFIC]
    breakers, faults = app[admin.BOARD].breakers, app[admin.FAULTS]
    forced = {name: metrics.breaker_forced.labels(name) for name in breakers}

    async def every_tick() -> None:
        while True:
            await asyncio.sleep(HOUSEKEEPING_S)
            access_log.flush()
            metrics.flush()
            metrics.in_flight.set(admission.in_flight)
            metrics.admission_limit.set(admission.limit)
            metrics.queue_delay.set(admission.delay_s)
            traffic.sample()
            for name, breaker in breakers.items():
                forced[name].set(0 if breaker.forced is None else 1)
            metrics.fault_rules.set(len(faults.rules()))
            if arrivals is not None:
                arrivals.count()

    async with _background(every_tick()):
        yield
    access_log.flush()


async def _control_sync(app: web.Application) -> AsyncIterator[None]:
    """With a shared store, follow SRE changes made through other processes."""
    stores = app[STORES]
    if not stores.shared:
        yield
        await stores.close()
        return
    interval = app[SETTINGS].redis.sync_interval_s
    maintenance = app[MAINTENANCE]
    keys = app[admin.CLIENT_KEYS]
    room = app[admin.WAITING_ROOM]
    faults = app[admin.FAULTS]
    with contextlib.suppress(StoreUnavailable):
        await stores.upkeep()  # how many replicas must hold a claim, before the first one
        await maintenance.sync()  # windows in force before the first request
        await keys.sync()  # and the API keys added through the admin API
        await room.sync()  # and the waiting room's settings and shared secret
        await faults.sync()  # and the fault rules of a game day under way
    async with (_background(follow("replicas", stores.upkeep, interval)),
                _background(follow("breakers", app[admin.BOARD].sync, interval)),
                _background(follow("maintenance", maintenance.sync, interval)),
                _background(follow("api_keys", keys.sync, interval)),
                _background(follow("waiting_room", room.sync, interval)),
                _background(follow("faults", faults.sync, interval))):
        yield
    await stores.close()


async def _admission_control(app: web.Application) -> AsyncIterator[None]:
    """Admission's limit set again every ADJUST_S from the delay measured, the loop's lag
    (how late this very timer wakes) included."""
    admission = app[ADMISSION]

    async def every_interval() -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + ADJUST_S
            await asyncio.sleep(ADJUST_S)
            admission.adjust(max(0.0, loop.time() - due))

    async with _background(every_interval()):
        yield


async def _room_admissions(app: web.Application) -> AsyncIterator[None]:
    """The waiting room's admission step on every process, on its own timer."""
    room = app[admin.WAITING_ROOM]
    async with _background(follow("waiting_room admissions", room.step, TICK_S)):
        yield


def _anywhere(_request: web.Request) -> bool:
    return True


async def _healthz(_request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def _readyz(request: web.Request) -> web.Response:
    lifecycle = request.app[LIFECYCLE]
    if lifecycle.ready:
        return json_response({"status": "ready"})
    return json_response({"status": "draining" if lifecycle.draining else "starting"}, 503,
                 **{"Retry-After": "1"})


async def _metrics(request: web.Request) -> web.Response:
    if (arrivals := request.app[ARRIVALS]) is not None:
        arrivals.count()  # the refusals at arrival so far, as the rest is current
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
