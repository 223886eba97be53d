"""`GET /v1/queue/{ticket}`: a waiting customer's poll. Public, cheap, never forwarded; the
ticket is the caller's own (who is calling as the pipeline reads it, `steps.identify`), or
it is no ticket at all (404)."""

from __future__ import annotations

from aiohttp import web

from gateway.contract import field_errors
from gateway.contract.problem import json_response
from gateway.edge.auth import ClientKeys, FailedChecks
from gateway.edge.middleware import Handler
from gateway.pipeline.steps import identify
from gateway.pipeline.waiting_room import HOLD_POLL_S, WAIT_PARAM, WaitingRoom

ROUTE = "GET /v1/queue/{ticket}"


def poll_route(room: WaitingRoom, keys: ClientKeys | None, failed: FailedChecks) -> Handler:
    async def poll_ticket(request: web.Request) -> web.Response:
        if keys is None:
            scope, _ = identify.by_header(request)
        else:
            scope, _ = await identify.by_key(request, keys, failed, route=ROUTE)
        wait_s = _wait_s(request.query.get(WAIT_PARAM))
        return json_response(await room.poll(scope, request.match_info["ticket"], wait_s))

    return poll_ticket


def _wait_s(sent: str | None) -> float:
    if sent is None:
        return 0.0
    try:
        wait_s = float(sent)
    except ValueError:
        wait_s = -1.0
    if not 0 <= wait_s <= HOLD_POLL_S:  # NaN fails this too
        raise field_errors.invalid_field(WAIT_PARAM, f"must be a number of seconds from 0 to "
                                                     f"{HOLD_POLL_S:g}", "out_of_range",
                                         low=0, high=f"{HOLD_POLL_S:g}")
    return wait_s
