"""The admin API for SREs: breakers and maintenance windows (CONTRACT.md, "Admin API").

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
from gateway.maintenance import Maintenance
from gateway.problem import json_response
from gateway.settings import MaintenanceWindowSettings
from gateway.store import StoreUnavailable

log = logging.getLogger("gateway.audit")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
BOARD = web.AppKey("breaker_board", BreakerBoard)
MAINTENANCE = web.AppKey("maintenance", Maintenance)


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


async def _json_object(request: web.Request, what: str) -> dict[str, Any]:
    validation.check_content_type(request.headers.get("Content-Type", ""))
    try:
        data = orjson.loads(await request.read())
    except orjson.JSONDecodeError as exc:
        raise GatewayError(errors.MALFORMED_JSON, params={"reason": str(exc)}) from None
    if not isinstance(data, dict) or not data:
        raise validation.invalid_field("body", f"must be a non-empty JSON object of {what}")
    return data


async def change_breaker(request: web.Request) -> web.Response:
    name = _breaker_name(request)
    board = request.app[BOARD]
    changes = await _json_object(request, "settings")
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


async def list_windows(request: web.Request) -> web.Response:
    maintenance = request.app[MAINTENANCE]
    await maintenance.sync()
    now = maintenance.now()
    return json_response({"windows": [w.public(now) for w in maintenance.windows()]})


async def set_window(request: web.Request) -> web.Response:
    data = await _json_object(request, "window fields")
    try:
        given = MaintenanceWindowSettings.model_validate(data)
    except ValidationError as exc:
        raise validation.failed(validation.field_errors(exc)) from None
    maintenance = request.app[MAINTENANCE]
    if given.ends_at is not None and given.ends_at.timestamp() <= maintenance.now():
        raise validation.invalid_field("ends_at", "must be in the future")
    window = await maintenance.put(given)
    shown = window.public(maintenance.now())
    _audit(request, "maintenance.set", window=shown)
    return json_response(shown)


async def end_window(request: web.Request) -> web.Response:
    window = await request.app[MAINTENANCE].delete(request.match_info["id"])
    if window is None:
        raise GatewayError(errors.NOT_FOUND, params={"path": request.path[:200]})
    _audit(request, "maintenance.end", window=window.id, scope=window.scope)
    return json_response({"ended": [window.id]})


async def end_all_windows(request: web.Request) -> web.Response:
    ended = [w.id for w in await request.app[MAINTENANCE].delete_all()]
    _audit(request, "maintenance.end_all", windows=ended)
    return json_response({"ended": ended})


def add_routes(app: web.Application, token: str) -> None:
    def route(method: str, path: str, handler: Handler) -> None:
        app.router.add_route(method, path, _guarded(token, handler))

    route("GET", "/admin/breakers", list_breakers)
    route("PUT", "/admin/breakers/{name}", change_breaker)
    for action in ("open", "close", "reset"):
        route("POST", f"/admin/breakers/{{name}}/{action}", _force_action(action))
    route("GET", "/admin/maintenance", list_windows)
    route("PUT", "/admin/maintenance", set_window)
    route("DELETE", "/admin/maintenance", end_all_windows)
    route("DELETE", "/admin/maintenance/{id}", end_window)
