"""The request pipeline of a proxied route, top to bottom.

`make_handler` turns one route policy into one aiohttp handler at start-up, so
no per-request work decides what a route needs. Each step either answers
(raises a catalog error) or passes on:

    admission: 503 at once when the route's priority has no room left, or the
               request already waited too long (often decided at arrival)      (admission)
    -> deadline: the default, or sooner if the client asks                      (overload)
    -> who: API key (401, or 403 for a reader's write), else X-Client-ID  (auth, identity)
    -> path ids, query, content type, body size, idempotency key, body schema (validation)
    -> 503 when a maintenance window covers it (an SRE may bypass)            (maintenance)
    -> 429 when the client's token bucket is empty                            (rate_limit)
    -> covered by the waiting room: a pass, or a ticket and 429 QUEUED      (waiting_room)
       (a covered submission is paced to the room's rate just before it is sent)
    -> claim / replay / conflict, then settle the record     (idempotency, keyed POSTs only)
    -> backend call, retried when safe and worth it                  (upstream, retry)
    -> on failure, a recent answer marked stale (cacheable routes)            (stale_cache)
    -> pass-through answer
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn

from aiohttp import web

from gateway.backends.stale_cache import StaleCache
from gateway.backends.upstream import Call, Repeat, Upstream
from gateway.contract import errors, identity, overload, privacy, validation
from gateway.contract.errors import GatewayError
from gateway.contract.forwarded import forwarded
from gateway.contract.headers import REPLAY_HEADER
from gateway.contract.identity import Network
from gateway.contract.reply import Reply
from gateway.contract.routes import RoutePolicy
from gateway.edge import connections
from gateway.edge.admission import Admission, AdmitAll
from gateway.edge.auth import API_KEY_HEADER, ClientKeys, FailedChecks
from gateway.edge.middleware import REQUEST_ID, Handler
from gateway.pipeline import idempotency
from gateway.pipeline.idempotency import Idempotency
from gateway.pipeline.maintenance import BYPASS_HEADER, Maintenance, RouteWindows
from gateway.pipeline.rate_limit import DEFAULT_TIER, RateLimiter
from gateway.pipeline.waiting_room import PASS_HEADER, WaitingRoom

audit = logging.getLogger("gateway.audit")

# Client headers the backends are told about; everything else stays at the edge.


@dataclass(frozen=True, slots=True)
class Shared:
    """What every proxied route's pipeline uses, built once per app."""

    maintenance: Maintenance
    admission: Admission | AdmitAll
    limiter: RateLimiter | None
    keys: ClientKeys | None  # None: no API keys, the client scope is X-Client-ID
    room: WaitingRoom
    max_body_bytes: int
    deadline_s: float
    body_timeout_s: float
    failed: FailedChecks  # every failed secret check: audited, throttled per address
    trusted_proxies: tuple[Network, ...]  # whose X-Forwarded-For names the client
    # Whether X-Maintenance-Bypass is honoured on the listener this request came in on:
    # only on the admin listener, when it is a separate one.
    bypass_here: Callable[[web.Request], bool]


def make_handler(policy: RoutePolicy, shared: Shared, upstream: Upstream,
                 guard: Idempotency | None = None, stale: StaleCache | None = None,
                 shed: Callable[[], None] | None = None) -> Handler:
    unknown_outcome = policy.unknown_outcome
    maintenance, limiter, admission = shared.maintenance, shared.limiter, shared.admission
    keys = shared.keys
    writes = policy.method != "GET"
    max_body_bytes, deadline_s = shared.max_body_bytes, shared.deadline_s
    body_timeout_s = shared.body_timeout_s
    windows = maintenance.route_windows(policy)
    room = shared.room
    gate = room.gate(policy)
    templated = bool(policy.path_params)
    lookup_path = policy.lookup_path or ""
    priority = policy.priority
    repeat = Repeat.ALWAYS if policy.safe_to_retry else Repeat.IF_UNSENT
    submits = policy.requires_idempotency_key  # an order or a payment: paced when covered

    async def admitted(request: web.Request) -> web.StreamResponse:
        # Shed before reading anything: under overload this must cost microseconds.
        counted, arrived_at = connections.arrival(request)
        if not counted and not admission.enter(priority):
            _shed(shed)
        try:
            if not admission.started(priority, asyncio.get_running_loop().time() - arrived_at):
                _shed(shed)  # waited too long already
            try:
                return await handle(request)
            except GatewayError as err:
                if err.spec is errors.OVERLOADED:
                    admission.congested()  # a full bulkhead further on
                raise
        finally:
            admission.leave()

    async def handle(request: web.Request) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        deadline = overload.deadline_of(loop.time(), deadline_s,
                                        request.headers.get(overload.DEADLINE_HEADER))
        if keys is None:
            scope, tier = identity.client_scope(request.headers.get("X-Client-ID")), DEFAULT_TIER
        else:
            client = await keys.checked(request.headers.get(API_KEY_HEADER), shared.failed,
                                        remote=request.remote, request_id=request[REQUEST_ID],
                                        route=_audit_route(request))
            if writes and client.reads_only:
                raise GatewayError(errors.FORBIDDEN, params={
                    "who": f"Client {client.id}", "what": f"{policy.method} {policy.path}"})
            scope, tier = client.id, client.tier
        if templated:
            validation.check_path_ids(request.match_info)
            path = policy.upstream_path.format_map(request.match_info)
        else:
            path = policy.upstream_path
        query = None
        if policy.query_schema is not None:
            query = validation.query_fields(policy.query_schema, request.query)
        key = None
        body = None
        if policy.body_schema is not None:
            validation.check_content_type(request.headers.get("Content-Type", ""))
            validation.check_declared_length(request.content_length, max_body_bytes)
            if policy.requires_idempotency_key:
                key = idempotency.require_key(request.headers.get("Idempotency-Key"))
            body = validation.parse_body(policy.body_schema, await connections.read_body(
                request, max_body_bytes, body_timeout_s))
        if windows.windows:
            await _check_maintenance(maintenance, windows, request, shared)
        if limiter is not None:
            await limiter.check(scope, tier)
        if not gate.covered:
            return await to_backend(request, scope, key, path, query, body, deadline)
        answered = None
        if guard is not None and key is not None:
            answered = functools.partial(guard.answered, scope, key)
        queue_pass = await room.let_in(scope, request.headers, answered,
                                       key if submits else None, _address(request, shared))
        if queue_pass is None:
            return await to_backend(request, scope, key, path, query, body, deadline)
        try:
            response = await to_backend(request, scope, key, path, query, body, deadline)
        except GatewayError as err:
            # Let in is let in: a failed answer still carries the pass, so a resubmission
            # does not queue again.
            err.headers = {**err.headers, PASS_HEADER: queue_pass}
            raise
        response.headers[PASS_HEADER] = queue_pass
        return response

    async def to_backend(request: web.Request, scope: str, key: str | None, path: str,
                         query: dict[str, str] | None, body: bytes | None,
                         deadline: float) -> web.StreamResponse:
        headers = _backend_headers(request, scope, key, has_body=body is not None)
        if guard is None or key is None or body is None:
            if submits and gate.covered:
                await room.paced(policy.route_key, deadline)
            try:
                reply = await upstream.call(Call(policy.method, path, headers, deadline, query,
                                                 body, repeat, unknown_outcome, policy,
                                                 request.headers))
            except GatewayError:
                if stale is None or (kept := stale.stale(_cache_key(query))) is None:
                    raise
                return _respond(kept)
            if stale is not None:
                stale.keep(_cache_key(query), reply)
            return _respond(reply)

        submit = Call(policy.method, path, headers, deadline, body=body,
                      unknown_outcome=unknown_outcome, route=policy,
                      client_headers=request.headers)

        async def forward() -> Reply:
            if gate.covered:
                await room.paced(policy.route_key, deadline)
            return await upstream.call(submit)

        async def lookup() -> Reply:
            # Built only when needed: most submissions are never looked up.
            return await upstream.call(Call("GET", lookup_path, _lookup_headers(headers),
                                            deadline, query={"idempotency_key": key},
                                            repeat=Repeat.ALWAYS, route=policy,
                                            client_headers=request.headers))

        async def may_resend(err: GatewayError, attempt: int) -> bool:
            return await upstream.pause_before_retry(err, attempt, deadline)

        reply, replayed = await guard.run(scope, key, body,
                                          idempotency.Submission(forward, lookup, may_resend),
                                          _address(request, shared))
        response = _respond(reply)
        if replayed:
            response.headers[REPLAY_HEADER] = "true"
        return response

    return admitted


def _shed(shed: Callable[[], None] | None) -> NoReturn:
    if shed is not None:
        shed()
    raise GatewayError(errors.OVERLOADED)


def _cache_key(query: dict[str, str] | None) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(query.items())) if query else ()


def _address(request: web.Request, shared: Shared) -> str:
    """The client's address, behind the trusted proxies (for per-address bounds)."""
    return identity.client_address(request.remote, request.headers.get("X-Forwarded-For"),
                                   shared.trusted_proxies)


def _audit_route(request: web.Request) -> str:
    return f"{request.method} {privacy.scrub(request.path[:200])}"


async def _check_maintenance(maintenance: Maintenance, route_windows: RouteWindows,
                             request: web.Request, shared: Shared) -> None:
    window = maintenance.refusal(route_windows, request.method)
    if window is None:
        return
    sent = request.headers.get(BYPASS_HEADER)
    if sent is None or not shared.bypass_here(request):
        raise maintenance.error(window)
    if not maintenance.bypassed(sent):
        raise await shared.failed.refusal("maintenance_bypass", maintenance.error(window),
                                          remote=request.remote,
                                          request_id=request[REQUEST_ID],
                                          route=_audit_route(request))
    audit.info("maintenance bypassed", extra={"fields": {
        "audit": True, "action": "maintenance.bypass", "window": window.id,
        "route": _audit_route(request), "request_id": request[REQUEST_ID],
        "remote": request.remote}})


def _respond(reply: Reply) -> web.Response:
    return web.Response(status=reply.status, body=reply.body, content_type=reply.content_type,
                        headers=reply.headers)


def _backend_headers(request: web.Request, scope: str, key: str | None, *,
                     has_body: bool) -> dict[str, str]:
    headers = {"X-Request-ID": request[REQUEST_ID], "X-Client-ID": scope,
               **forwarded(request.headers)}
    if key is not None:
        headers["Idempotency-Key"] = key
    if has_body:
        headers["Content-Type"] = "application/json"
    return headers


def _lookup_headers(headers: dict[str, str]) -> dict[str, str]:
    """A reconciling lookup asks as the same client, about the same request id."""
    return {"X-Request-ID": headers["X-Request-ID"], "X-Client-ID": headers["X-Client-ID"]}
