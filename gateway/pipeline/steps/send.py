"""The backend call, retried when safe and worth it (`upstream.py`); on failure, a recent
answer marked stale where the route keeps them (`stale_cache.py`)."""

from __future__ import annotations

from aiohttp import web

from gateway.backends.stale_cache import StaleCache
from gateway.backends.upstream import Call, Repeat, Upstream
from gateway.contract.errors import GatewayError
from gateway.contract.reply import Reply
from gateway.contract.routes import RoutePolicy
from gateway.pipeline.exchange import Exchange, Next, backend_headers
from gateway.pipeline.waiting_room import RouteGate, WaitingRoom


def send(upstream: Upstream, policy: RoutePolicy, stale: StaleCache | None, room: WaitingRoom,
         gate: RouteGate) -> Next:
    repeat = Repeat.ALWAYS if policy.safe_to_retry else Repeat.IF_UNSENT
    # An order or a payment the room covers is paced to the room's rate just before it goes.
    submits = policy.requires_idempotency_key

    async def sent(request: web.Request, exchange: Exchange) -> web.StreamResponse:
        if submits and gate.covered:
            await room.paced(policy.route_key, exchange.deadline)
        try:
            reply = await upstream.call(Call(
                policy.method, exchange.path, backend_headers(request, exchange), exchange.deadline,
                exchange.query, exchange.body, repeat, policy.unknown_outcome, policy,
                request.headers))
        except GatewayError:
            if stale is None or (kept := stale.stale(_cache_key(exchange.query))) is None:
                raise
            return respond(kept)
        if stale is not None:
            stale.keep(_cache_key(exchange.query), reply)
        return respond(reply)

    return sent


def respond(reply: Reply) -> web.Response:
    return web.Response(status=reply.status, body=reply.body, content_type=reply.content_type,
                        headers=reply.headers)


def _cache_key(query: dict[str, str] | None) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(query.items())) if query else ()
