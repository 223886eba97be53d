"""A route the waiting room covers: a request with a valid pass, or one let straight in
(its answer carries the pass, even a failed one, so a resubmission does not queue again);
else a ticket and 429 QUEUED."""

from __future__ import annotations

import functools

from aiohttp import web

from gateway.contract.errors import GatewayError
from gateway.contract.identity import Network
from gateway.pipeline.exchange import Exchange, Next, Step
from gateway.pipeline.idempotency import Idempotency
from gateway.pipeline.steps.identify import address
from gateway.pipeline.waiting_room import PASS_HEADER, RouteGate, WaitingRoom


def step(room: WaitingRoom, gate: RouteGate, guard: Idempotency | None, *, submits: bool,
         trusted_proxies: tuple[Network, ...]) -> Step:
    """`submits`: the route places orders or payments, which a pass lets through so often;
    `guard`: the route's idempotency records, where a submission already answered passes."""

    def before(after: Next) -> Next:
        async def entered(request: web.Request, exchange: Exchange) -> web.StreamResponse:
            if not gate.covered:  # the room is set at runtime
                return await after(request, exchange)
            answered = None
            if guard is not None and exchange.key is not None:
                answered = functools.partial(guard.answered, exchange.scope, exchange.key)
            queue_pass = await room.let_in(exchange.scope, request.headers, answered,
                                           exchange.key if submits else None,
                                           address(request, trusted_proxies))
            if queue_pass is None:
                return await after(request, exchange)
            try:
                response = await after(request, exchange)
            except GatewayError as err:
                err.headers = {**err.headers, PASS_HEADER: queue_pass}
                raise
            response.headers[PASS_HEADER] = queue_pass
            return response

        return entered

    return before
