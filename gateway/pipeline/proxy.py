"""The request pipeline of a proxied route, top to bottom, as it is built.

`make_handler` turns one route policy into one aiohttp handler at start-up, so
no per-request work decides what a route needs, and a step a route does not
need is left out of its chain. Each step (a module of `steps/`) either answers
(raises a catalog error) or passes on:

    admit: 503 at once when the route's priority has no room left, or the
           request already waited too long (often decided at arrival)       (steps.admit)
    -> deadline: the default, or sooner if the client asks                      (overload)
    -> who: API key (401, or 403 for a reader's write), else X-Client-ID    (steps.identify)
    -> path ids, query, content type, body size, idempotency key, body schema
       (then the request is an `Exchange`)                                  (steps.validate)
    -> 503 when a maintenance window covers it (an SRE may bypass)       (steps.maintenance)
    -> 429 when the client's token bucket is empty            (steps.rate_limit, if limited)
    -> covered by the waiting room: a pass, or a ticket and 429 QUEUED  (steps.waiting_room)
       (a covered submission is paced to the room's rate just before it is sent)
    -> claim / replay / conflict, then settle the record (steps.idempotency, keyed POSTs)
       or the backend call, retried when safe and worth it, and on failure a
       recent answer marked stale (cacheable routes)                            (steps.send)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from gateway.backends.stale_cache import StaleCache
from gateway.backends.upstream import Upstream
from gateway.contract import overload
from gateway.contract.clock import loop_now
from gateway.contract.identity import Network
from gateway.contract.routes import RoutePolicy
from gateway.edge.admission import Admission, AdmitAll
from gateway.edge.auth import ClientKeys, FailedChecks
from gateway.edge.middleware import Handler
from gateway.pipeline.exchange import Next, Step, chain
from gateway.pipeline.idempotency import Idempotency
from gateway.pipeline.maintenance import Maintenance
from gateway.pipeline.rate_limit import RateLimiter
from gateway.pipeline.steps import (
    admit,
    idempotency,
    identify,
    maintenance,
    rate_limit,
    send,
    validate,
    waiting_room,
)
from gateway.pipeline.waiting_room import RouteGate, WaitingRoom


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
    gate = shared.room.gate(policy)
    rest = chain(_steps(policy, shared, gate, guard),
                 _last(policy, shared, gate, upstream, guard, stale))
    keys, failed, deadline_s = shared.keys, shared.failed, shared.deadline_s
    limits = validate.BodyLimits(shared.max_body_bytes, shared.body_timeout_s)
    writes = policy if policy.method != "GET" else None

    async def handle(request: web.Request) -> web.StreamResponse:
        deadline = overload.deadline_of(loop_now(), deadline_s,
                                        request.headers.get(overload.DEADLINE_HEADER))
        if keys is None:
            scope, tier = identify.by_header(request)
        else:
            scope, tier = await identify.by_key(request, keys, failed, writes=writes)
        exchange = await validate.exchange_of(request, policy, limits, scope, tier, deadline)
        return await rest(request, exchange)

    return admit.admit(shared.admission, policy.priority, shed, handle)


def _steps(policy: RoutePolicy, shared: Shared, gate: RouteGate,
           guard: Idempotency | None) -> list[Step]:
    """The steps between the exchange and the backend that this route needs, in order."""
    steps = [maintenance.step(shared.maintenance, shared.maintenance.route_windows(policy),
                              shared.failed, shared.bypass_here)]
    if shared.limiter is not None:
        steps.append(rate_limit.step(shared.limiter))
    steps.append(waiting_room.step(shared.room, gate, guard,
                                   submits=policy.requires_idempotency_key,
                                   trusted_proxies=shared.trusted_proxies))
    return steps


def _last(policy: RoutePolicy, shared: Shared, gate: RouteGate, upstream: Upstream,
          guard: Idempotency | None, stale: StaleCache | None) -> Next:
    """The backend call: once per key for a keyed submission, else as it comes."""
    plain = send.send(upstream, policy, stale, shared.room, gate)
    if guard is None or not policy.requires_idempotency_key:
        return plain
    return idempotency.once(guard, upstream, policy, shared.room, gate,
                            shared.trusted_proxies, plain)
