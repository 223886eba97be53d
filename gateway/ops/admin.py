"""The admin API for SREs: breakers, maintenance windows, client API keys, the waiting room,
fault injection (docs/api.md, "Admin API"; docs/operations.md shows each in use).

Registered only when an admin token is configured; otherwise `/admin/*` is
simply not found. Every admin request passes, in order:
1. its listener: with `admin.port` set, only requests that arrived there (the
   public port answers 404, as if there were no admin API);
2. a token bucket per remote address (`admin.rate_per_s`, `admin.burst`): 429;
3. `Authorization: Bearer <token>`, compared in constant time with the token
   and, during a rotation, the previous one: 401, logged as `admin.denied`.
Every action is then logged as one audit line: who (which token, its
fingerprint, the remote address, and `X-Admin-Actor` if sent), what, and the
state before and after.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
from aiohttp import web
from pydantic import BaseModel, ValidationError

from gateway.backends.breaker_control import BreakerBoard
from gateway.backends.faults import MAX_RULES, FaultRuleSettings, Faults
from gateway.contract import errors, field_errors, identity, privacy, validation
from gateway.contract.clock import iso_utc
from gateway.contract.errors import GatewayError
from gateway.contract.problem import json_response
from gateway.contract.settings import ApiKeySettings, MaintenanceWindowSettings, Settings
from gateway.edge import auth, connections
from gateway.edge.auth import AdminTokens, ClientKeys, FailedChecks
from gateway.edge.middleware import REQUEST_ID, Handler
from gateway.ops import console, events
from gateway.ops.timeline import DEFAULT_LIMIT, KEEP, Kind, Timeline
from gateway.ops.traffic import Traffic
from gateway.pipeline.maintenance import Maintenance
from gateway.pipeline.waiting_room import WaitingRoom
from gateway.state.bucket_store import MemoryTokenBuckets
from gateway.state.common import StoreUnavailable

log = logging.getLogger("gateway.audit")
BOARD = web.AppKey("breaker_board", BreakerBoard)
MAINTENANCE = web.AppKey("maintenance", Maintenance)
CLIENT_KEYS = web.AppKey("client_keys", ClientKeys)
WAITING_ROOM = web.AppKey("waiting_room", WaitingRoom)
# On a settings change: the stored settings that another one keeps from acting.
OVERRIDDEN_HEADER = "Settings-Overridden"
FAULTS = web.AppKey("faults", Faults)
TIMELINE = web.AppKey("timeline", Timeline)
TRAFFIC = web.AppKey("traffic", Traffic)
ACTOR_HEADER = "X-Admin-Actor"
_TIERS = web.AppKey("rate_limit_tiers", tuple[str, ...])
# Where the guard leaves, on the request, who is acting and the body limits.
_WHO = web.RequestKey("admin_who", dict[str, Any])
_BODY = web.RequestKey("admin_body_limits", tuple[int, float])
_MAX_REMOTES = 10_000


@dataclass(slots=True)
class Listener:
    """Where admin requests are taken: anywhere (port None and not separate), or only
    on the admin listener's port, known once it is bound."""

    separate: bool
    port: int | None = None

    def admits(self, request: web.Request) -> bool:
        if not self.separate:
            return True
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        return self.port is not None and sockname is not None and sockname[1] == self.port


ADMIN_LISTENER = web.AppKey("admin_listener", Listener)


def _guard(settings: Settings, tokens: AdminTokens, listener: Listener,
           failed: FailedChecks) -> Callable[[Handler], Handler]:
    """The checks every admin route passes; one guard, so one bucket per address for the
    whole admin API, not one per route. A wrong token spends from the failures' bucket
    (`auth.FailedChecks`), a right one from its own: guesses never lock an SRE out."""
    buckets = MemoryTokenBuckets(max_buckets=_MAX_REMOTES)
    rate, burst = settings.admin.rate_per_s, settings.admin.burst
    limit, timeout_s = settings.server.max_body_bytes, settings.server.body_timeout_s
    fingerprints = {"current": _fingerprint(settings.admin.token or ""),
                    "previous": _fingerprint(settings.admin.previous_token or "")}

    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not listener.admits(request):
            raise GatewayError(errors.NOT_FOUND, params={"path": privacy.scrub(request.path)})
        which = tokens.match_bearer(request.headers.get("Authorization"))
        if which is None:
            raise await failed.refusal("admin", GatewayError(errors.UNAUTHORIZED, headers={
                "WWW-Authenticate": 'Bearer realm="order-gateway admin"'}),
                remote=request.remote, request_id=request[REQUEST_ID],
                route=f"{request.method} {privacy.scrub(request.path[:200])}")
        # An SRE's script, bounded by a bucket of its own.
        wait = await buckets.take(request.remote or "unknown", rate, burst)
        if wait > 0:
            raise GatewayError(errors.RATE_LIMITED, retry_after_s=max(1, math.ceil(wait)))
        request[_WHO] = {"token": which, "token_fingerprint": fingerprints[which],
                         "remote": request.remote, "actor": _actor(request)}
        request[_BODY] = (limit, timeout_s)
        try:
            return await handler(request)
        except StoreUnavailable:
            raise GatewayError(errors.STATE_UNAVAILABLE) from None

    def guarded(handler: Handler) -> Handler:
        return functools.partial(check, handler=handler)

    return guarded


def _on_listener(listener: Listener, handler: Handler) -> Handler:
    """The console's files: on the admin listener, without the token (they hold no data)."""
    async def on_listener(request: web.Request) -> web.StreamResponse:
        if not listener.admits(request):
            raise GatewayError(errors.NOT_FOUND, params={"path": privacy.scrub(request.path)})
        return await handler(request)

    return on_listener


def _fingerprint(token: str) -> str:
    """Names a token in audit lines without revealing it."""
    return hashlib.sha256(token.encode()).hexdigest()[:8] if token else ""


def _actor(request: web.Request) -> str | None:
    """The SRE's own name for themselves, if sane; it is a label, not a credential."""
    sent = request.headers.get(ACTOR_HEADER)
    if sent is None or not identity.is_sane_id(sent):
        return None
    return sent

def _breaker_name(request: web.Request) -> str:
    name = request.match_info["name"]
    if name not in request.app[BOARD].breakers:
        raise _not_found(request)
    return name


_Model = TypeVar("_Model", bound=BaseModel)


def _not_found(request: web.Request) -> GatewayError:
    return GatewayError(errors.NOT_FOUND, params={"path": request.path[:200]})


def _strict(model: type[_Model], data: dict[str, Any]) -> _Model:
    """`data` as `model`, strictly as JSON (an ISO-8601 string for a time, not a number);
    422 with field errors otherwise."""
    try:
        return model.model_validate_json(orjson.dumps(data), strict=True)
    except ValidationError as exc:
        raise field_errors.failed(field_errors.from_pydantic(exc)) from None


def _audit(request: web.Request, action: str, before: Any, after: Any, **fields: Any) -> None:
    who = request[_WHO]
    log.info("admin %s", action, extra={"fields": {
        "audit": True, "action": action, "request_id": request.get(REQUEST_ID),
        "who": who, "before": before, "after": after, **fields}})
    kind = _TIMELINE_KINDS.get(action.split(".", 1)[0], "admin")
    request.app[TIMELINE].note(kind, _summary(action, before, after, fields), action=action,
                               actor=who["actor"], token=who["token"], **fields)


# Admin actions on these appear under their own kind in the timeline; others as "admin".
_TIMELINE_KINDS: dict[str, Kind] = {"maintenance": "maintenance", "fault": "fault",
                                    "waiting_room": "waiting_room"}


def _summary(action: str, before: Any, after: Any, fields: dict[str, Any]) -> str:
    """One line for the timeline: the action and what it was about."""
    subject = after if after is not None else before
    about = ""
    if isinstance(subject, dict):
        about = " ".join(str(subject[k]) for k in ("id", "scope") if k in subject)
    elif isinstance(subject, list):
        about = f"{len(subject)} item(s)"
    elif subject is not None:
        about = str(subject)
    target = fields.get("breaker", "")
    return " ".join(part for part in (action, target, about) if part)


async def list_breakers(request: web.Request) -> web.Response:
    board = request.app[BOARD]
    await board.sync()
    return json_response({"breakers": [b.snapshot() for b in board.breakers.values()]})


async def _json_object(request: web.Request, what: str) -> dict[str, Any]:
    validation.check_content_type(request.headers.get("Content-Type", ""))
    limit, timeout_s = request[_BODY]
    validation.check_declared_length(request.content_length, limit)
    raw = await connections.read_body(request, limit, timeout_s)
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise GatewayError(errors.MALFORMED_JSON, params={"reason": str(exc)}) from None
    if not isinstance(data, dict) or not data:
        raise field_errors.invalid_field("body", f"must be a non-empty JSON object of {what}",
                                         "object_required")
    return data


async def change_breaker(request: web.Request) -> web.Response:
    name = _breaker_name(request)
    board = request.app[BOARD]
    changes = await _json_object(request, "settings")
    before = board.breakers[name].settings.model_dump()
    try:
        board.validate_changes(name, changes)
    except ValidationError as exc:
        raise field_errors.failed(field_errors.from_pydantic(exc)) from None
    await board.change_settings(name, changes)
    after = board.breakers[name].settings.model_dump()
    _audit(request, "breaker.settings", before, after, breaker=name)
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
        _audit(request, f"breaker.{action}", before, snapshot["state"], breaker=name)
        return json_response(snapshot)

    return act


async def list_windows(request: web.Request) -> web.Response:
    maintenance = request.app[MAINTENANCE]
    await maintenance.sync()
    now = maintenance.now()
    return json_response({"windows": [w.public(now) for w in maintenance.windows()]})


async def set_window(request: web.Request) -> web.Response:
    data = await _json_object(request, "window fields")
    given = _strict(MaintenanceWindowSettings, data)
    maintenance = request.app[MAINTENANCE]
    if given.ends_at is not None and given.ends_at.timestamp() <= maintenance.now():
        raise field_errors.invalid_field("ends_at", "must be in the future", "future_required")
    window = await maintenance.put(given)
    shown = window.public(maintenance.now())
    _audit(request, "maintenance.set", None, shown)
    return json_response(shown)


async def end_window(request: web.Request) -> web.Response:
    window = await request.app[MAINTENANCE].delete(request.match_info["id"])
    if window is None:
        raise _not_found(request)
    _audit(request, "maintenance.end", window.public(request.app[MAINTENANCE].now()), None)
    return json_response({"ended": [window.id]})


async def end_all_windows(request: web.Request) -> web.Response:
    maintenance = request.app[MAINTENANCE]
    windows = await maintenance.delete_all()
    ended = [w.id for w in windows]
    _audit(request, "maintenance.end_all", [w.public(maintenance.now()) for w in windows], None)
    return json_response({"ended": ended})


async def list_api_keys(request: web.Request) -> web.Response:
    keys = request.app[CLIENT_KEYS]
    await keys.sync()
    return json_response({"api_keys": [c.public() for c in keys.clients()]})


async def add_api_key(request: web.Request) -> web.Response:
    """Add a client key; without `key_sha256` one is generated and shown this once. Refused
    while the public API takes no keys: a key listed but never asked for would look like
    protection that is not there."""
    if not request.app[CLIENT_KEYS].enabled:
        raise GatewayError(errors.SETTING_CONFLICT, extra={"setting": "auth.required"},
                           params={"what": "An API key added at runtime",
                                   "setting": "auth.required", "value": "false"})
    data = await _json_object(request, "client fields")
    key = None
    if "key_sha256" not in data:
        key = auth.new_key()
        data = {**data, "key_sha256": auth.key_sha256(key)}
    try:
        given = ApiKeySettings.model_validate(data, strict=True)
    except ValidationError as exc:
        raise field_errors.failed(field_errors.from_pydantic(exc)) from None
    tiers = request.app[_TIERS]
    if given.tier not in tiers:
        raise field_errors.invalid_field("tier", f"must be one of: {', '.join(tiers)}",
                                         "unknown_choice", expected=", ".join(tiers))
    client = await request.app[CLIENT_KEYS].add(given)
    _audit(request, "api_key.add", None, client.public())
    shown: dict[str, Any] = client.public()
    if key is not None:
        shown["key"] = key
    return json_response(shown, 201)


async def revoke_api_key(request: web.Request) -> web.Response:
    client = await request.app[CLIENT_KEYS].revoke(request.match_info["key_id"])
    if client is None:
        raise _not_found(request)
    _audit(request, "api_key.revoke", client.public(), None)
    return json_response({"revoked": [client.key_id]})


async def show_waiting_room(request: web.Request) -> web.Response:
    room = request.app[WAITING_ROOM]
    await room.sync()
    return json_response(await room.figures())


async def change_waiting_room(request: web.Request) -> web.Response:
    room = request.app[WAITING_ROOM]
    changes = await _json_object(request, "waiting-room settings")
    await room.sync()  # merge over the newest stored changes, not this process's last view
    before = room.public_settings()
    await room.change(changes)
    after = room.public_settings()
    _audit(request, "waiting_room.settings", before, after)
    response = json_response(after)
    if overridden := room.overridden():
        response.headers[OVERRIDDEN_HEADER] = ", ".join(overridden)
    return response


async def list_faults(request: web.Request) -> web.Response:
    faults = request.app[FAULTS]
    await faults.sync()
    return json_response({"faults": [rule.public() for rule in faults.rules()]})


async def add_fault(request: web.Request) -> web.Response:
    data = await _json_object(request, "fault rule fields")
    given = _strict(FaultRuleSettings, data)
    rule = await request.app[FAULTS].add(given)
    if rule is None:
        raise field_errors.invalid_field(
            "body", f"at most {MAX_RULES} fault rules at once; end one first",
            "too_many_rules", limit=MAX_RULES)
    _audit(request, "fault.add", None, rule.public())
    return json_response(rule.public())


async def end_fault(request: web.Request) -> web.Response:
    rule = await request.app[FAULTS].end(request.match_info["id"])
    if rule is None:
        raise _not_found(request)
    _audit(request, "fault.end", rule.public(), None)
    return json_response({"ended": [rule.id]})


async def end_all_faults(request: web.Request) -> web.Response:
    rules = await request.app[FAULTS].end_all()
    _audit(request, "fault.end_all", [rule.public() for rule in rules], None)
    return json_response({"ended": [rule.id for rule in rules]})


async def snapshot(app: web.Application) -> dict[str, Any]:
    """What the console shows, in one object (`GET /admin/events`)."""
    board, maintenance = app[BOARD], app[MAINTENANCE]
    await board.sync()
    now = maintenance.now()
    return {
        "at": iso_utc(now),
        "breakers": [b.snapshot() for b in board.breakers.values()],
        "maintenance": [w.public(now) for w in maintenance.windows()],
        "faults": [rule.public() for rule in app[FAULTS].rules()],
        "waiting_room": await app[WAITING_ROOM].figures(),
        "traffic": app[TRAFFIC].figures(),
    }


async def show_timeline(request: web.Request) -> web.Response:
    sent = request.query.get("limit")
    limit = DEFAULT_LIMIT
    if sent is not None:
        if not sent.isdigit() or not 1 <= int(sent) <= KEEP:
            raise field_errors.invalid_field("limit", f"must be a whole number from 1 to {KEEP}",
                                             "out_of_range", low=1, high=KEEP)
        limit = int(sent)
    return json_response({"events": await request.app[TIMELINE].recent(limit)})


def add_routes(app: web.Application, settings: Settings, tokens: AdminTokens,
               failed: FailedChecks) -> Listener:
    """The admin API's routes; the listener they are taken on."""
    listener = Listener(separate=settings.admin.port is not None)
    app[ADMIN_LISTENER] = listener
    app[_TIERS] = settings.rate_limit.tier_names

    guarded = _guard(settings, tokens, listener, failed)
    for path, serve_file in console.handlers().items():
        app.router.add_get(path, _on_listener(listener, serve_file))

    def route(method: str, path: str, handler: Handler) -> None:
        app.router.add_route(method, path, guarded(handler))

    route("GET", "/admin/breakers", list_breakers)
    route("PUT", "/admin/breakers/{name}", change_breaker)
    for action in ("open", "close", "reset"):
        route("POST", f"/admin/breakers/{{name}}/{action}", _force_action(action))
    route("GET", "/admin/maintenance", list_windows)
    route("PUT", "/admin/maintenance", set_window)
    route("DELETE", "/admin/maintenance", end_all_windows)
    route("DELETE", "/admin/maintenance/{id}", end_window)
    route("GET", "/admin/api-keys", list_api_keys)
    route("POST", "/admin/api-keys", add_api_key)
    route("DELETE", "/admin/api-keys/{key_id}", revoke_api_key)
    route("GET", "/admin/waiting-room", show_waiting_room)
    route("PUT", "/admin/waiting-room", change_waiting_room)
    route("GET", "/admin/faults", list_faults)
    route("PUT", "/admin/faults", add_fault)
    route("DELETE", "/admin/faults", end_all_faults)
    route("DELETE", "/admin/faults/{id}", end_fault)
    route("GET", "/admin/timeline", show_timeline)
    route("GET", "/admin/events", events.stream(snapshot))
    return listener
