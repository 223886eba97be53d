"""The admin API for SREs: breakers today (see CONTRACT.md for the whole surface).

Registered only when an admin token is configured; otherwise `/admin/*` is
simply not found. Every route checks `Authorization: Bearer <token>` in
constant time, and every action is logged as an audit line.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web
from pydantic import ValidationError

from gateway import errors, identity, validation
from gateway.breaker_control import BreakerBoard
from gateway.errors import GatewayError
from gateway.problem import json_response
from gateway.store import StoreUnavailable

log = logging.getLogger("gateway.audit")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
BOARD = web.AppKey("breaker_board", BreakerBoard)


def _guarded(token: str, handler: Handler) -> Handler:
    expected = f"Bearer {token}".encode()

    async def check(request: web.Request) -> web.StreamResponse:
        sent = request.headers.get("Authorization", "").encode()
        if not hmac.compare_digest(sent, expected):
            raise GatewayError(errors.UNAUTHORIZED)
        try:
            return await handler(request)
        except StoreUnavailable:
            raise GatewayError(errors.STATE_UNAVAILABLE) from None

    return check


def _breaker_name(request: web.Request) -> str:
    name = request.match_info["name"]
    if name not in request.app[BOARD].breakers:
        raise GatewayError(errors.NOT_FOUND, params={"path": request.path[:200]})
    return name


def _audit(request: web.Request, action: str, **fields: Any) -> None:
    log.info("admin %s", action, extra={"fields": {
        "audit": True, "action": action, "request_id": request.get(identity.REQUEST_ID),
        "remote": request.remote, **fields}})


async def list_breakers(request: web.Request) -> web.Response:
    board = request.app[BOARD]
    await board.sync()
    return json_response({"breakers": [b.snapshot() for b in board.breakers.values()]})


async def change_breaker(request: web.Request) -> web.Response:
    name = _breaker_name(request)
    board = request.app[BOARD]
    validation.check_content_type(request.headers.get("Content-Type", ""))
    try:
        changes = orjson.loads(await request.read())
    except orjson.JSONDecodeError as exc:
        raise GatewayError(errors.MALFORMED_JSON, params={"reason": str(exc)}) from None
    if not isinstance(changes, dict) or not changes:
        raise validation.invalid_field("body", "must be a non-empty JSON object of settings")
    before = board.breakers[name].settings.model_dump()
    try:
        board.validate_changes(name, changes)
    except ValidationError as exc:
        raise validation.failed(validation.field_errors(exc)) from None
    await board.change_settings(name, changes)
    after = board.breakers[name].settings.model_dump()
    _audit(request, "breaker.settings", breaker=name, before=before, after=after)
    return json_response(after)


def _force_action(action: str) -> Handler:
    async def act(request: web.Request) -> web.Response:
        name = _breaker_name(request)
        board = request.app[BOARD]
        before = board.breakers[name].snapshot()["state"]
        if action == "reset":
            await board.reset(name)
        else:
            await board.force(name, "open" if action == "open" else "closed")
        snapshot = board.breakers[name].snapshot()
        _audit(request, f"breaker.{action}", breaker=name, before=before,
               after=snapshot["state"])
        return json_response(snapshot)

    return act


def add_routes(app: web.Application, token: str) -> None:
    def route(method: str, path: str, handler: Handler) -> None:
        app.router.add_route(method, path, _guarded(token, handler))

    route("GET", "/admin/breakers", list_breakers)
    route("PUT", "/admin/breakers/{name}", change_breaker)
    for action in ("open", "close", "reset"):
        route("POST", f"/admin/breakers/{{name}}/{action}", _force_action(action))
