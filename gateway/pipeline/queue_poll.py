"""`GET /v1/queue/{ticket}`: a waiting customer's poll. Public, cheap, never forwarded; the
ticket is the caller's own (who is calling as the pipeline reads it, `steps.identify`), or
it is no ticket at all (404). JSON for apps; for a browser, the waiting page
(`waiting_page.py`)."""

from __future__ import annotations

from aiohttp import web

from gateway.contract import errors, field_errors
from gateway.contract.errors import GatewayError
from gateway.contract.problem import json_response, negotiate_language
from gateway.edge.auth import ClientKeys, FailedChecks
from gateway.edge.middleware import Handler
from gateway.pipeline import waiting_page
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
        ticket = request.match_info["ticket"]
        if not waiting_page.prefers_html(request.headers.get("Accept")):
            return json_response(await room.poll(scope, ticket, wait_s))
        return await _page(request, room, scope, ticket, wait_s)

    return poll_ticket


async def _page(request: web.Request, room: WaitingRoom, scope: str, ticket: str,
                wait_s: float) -> web.Response:
    """The same poll, answered as the waiting page; other refusals stay problem+json."""
    lang = negotiate_language(request.headers.get("Accept-Language"))
    try:
        state = await room.poll(scope, ticket, wait_s)
    except GatewayError as err:
        if err.spec is errors.QUEUE_TICKET_EXPIRED:
            return waiting_page.lapsed(lang)
        raise
    if state["state"] == "waiting":
        return waiting_page.waiting(lang, state)
    target = waiting_page.return_url(request.query.get("return_to"),
                                     room.settings.return_origins, state["pass"])
    return waiting_page.admitted(lang) if target is None else waiting_page.back_to(target)


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
