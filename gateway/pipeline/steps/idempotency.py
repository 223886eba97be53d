"""A keyed submission, sent at most once per key: claim, replay or conflict, then the
record settled (`idempotency.py`), with the backend calls bound to this request."""

from __future__ import annotations

from aiohttp import web

from gateway.backends.upstream import Call, Repeat, Upstream
from gateway.contract.errors import GatewayError
from gateway.contract.headers import REPLAY_HEADER
from gateway.contract.identity import Network
from gateway.contract.reply import Reply
from gateway.contract.routes import RoutePolicy
from gateway.pipeline.exchange import Exchange, Next, backend_headers
from gateway.pipeline.idempotency import Idempotency, Submission
from gateway.pipeline.steps.identify import address
from gateway.pipeline.steps.send import respond
from gateway.pipeline.waiting_room import RouteGate, WaitingRoom


def once(guard: Idempotency, upstream: Upstream, policy: RoutePolicy, room: WaitingRoom,
         gate: RouteGate, trusted_proxies: tuple[Network, ...], plain: Next) -> Next:
    """`plain`: how a request of the route without a key or body goes (it cannot have one
    past validation; kept so that the types say so)."""
    lookup_path = policy.lookup_path or ""

    async def answered_once(request: web.Request, exchange: Exchange) -> web.StreamResponse:
        key, body, deadline = exchange.key, exchange.body, exchange.deadline
        if key is None or body is None:
            return await plain(request, exchange)
        headers = backend_headers(request, exchange)
        submit = Call(policy.method, exchange.path, headers, deadline, body=body,
                      unknown_outcome=policy.unknown_outcome, route=policy,
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
                                            client_headers=request.headers, lookup=True))

        async def may_resend(err: GatewayError, attempt: int) -> bool:
            return await upstream.pause_before_retry(err, attempt, deadline)

        reply, replayed = await guard.run(exchange.scope, key, body,
                                          Submission(forward, lookup, may_resend),
                                          address(request, trusted_proxies))
        response = respond(reply)
        if replayed:
            response.headers[REPLAY_HEADER] = "true"
        return response

    return answered_once


def _lookup_headers(headers: dict[str, str]) -> dict[str, str]:
    """A reconciling lookup asks as the same client, about the same request id, in the
    same trace."""
    asked = {"X-Request-ID": headers["X-Request-ID"], "X-Client-ID": headers["X-Client-ID"]}
    for name in ("traceparent", "tracestate"):
        if name in headers:
            asked[name] = headers[name]
    return asked
