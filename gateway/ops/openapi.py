"""The OpenAPI 3.1 document, generated from the route table and the schemas.

Built once at start-up; because requests are validated by the same pydantic
models, the published document cannot drift from what the gateway enforces.
"""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from gateway.backends.faults import FaultRuleSettings
from gateway.contract import errors
from gateway.contract.json_types import WHOLE_NUMBERS_RULE
from gateway.contract.routes import BACKENDS, ROUTES, RoutePolicy
from gateway.contract.schemas import (
    ID_PATTERN,
    MaintenanceWindowView,
    Problem,
    QueueState,
    StatusResponse,
)
from gateway.contract.settings import (
    BreakerSettings,
    MaintenanceWindowSettings,
    Settings,
    WaitingRoomSettings,
)
from gateway.pipeline import waiting_room
from gateway.pipeline.idempotency import KEY_PATTERN

_REF = "#/components/schemas/{model}"
_PROBLEM = {"application/problem+json": {"schema": {"$ref": _REF.format(model="Problem")}}}
# Every proxied route may be covered by the waiting room (its routes are a setting).
_COMMON_ERRORS = ("UPSTREAM_UNAVAILABLE", "UPSTREAM_TIMEOUT", "CIRCUIT_OPEN", "OVERLOADED",
                  "RATE_LIMITED", "MAINTENANCE", "QUEUED", "QUEUE_TICKET_EXPIRED",
                  "STATE_UNAVAILABLE")
# What any request to any path may meet before its handler: the connection layer's
# refusals (gateway/edge/connections.py) and a method the path does not take.
_CONNECTION_ERRORS = ("MALFORMED_REQUEST", "URI_TOO_LONG", "HEADERS_TOO_LARGE",
                      "REQUEST_TIMEOUT", "METHOD_NOT_ALLOWED")
# ... and on the public API routes, client authentication (auth.py).
_EDGE_ERRORS = (*_CONNECTION_ERRORS, "UNAUTHORIZED", "FORBIDDEN")
_ADMIN_ERRORS = ("UNAUTHORIZED", "NOT_FOUND", "RATE_LIMITED", "STATE_UNAVAILABLE",
                 *_CONNECTION_ERRORS)
_ADMIN_BODY_ERRORS = ("VALIDATION_FAILED", "MALFORMED_JSON", "PAYLOAD_TOO_LARGE",
                      "UNSUPPORTED_MEDIA_TYPE")


_REPLAY_HEADER = {"Idempotent-Replayed": {
    "description": "`true` when this is the stored answer to an earlier submission with the "
                   "same key (byte-identical body and status), not a new backend call",
    "schema": {"type": "string", "enum": ["true"]}}}


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": _REF.format(model=model.__name__)}


def _problems(codes: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Problem responses for these codes, one entry per status naming its codes."""
    by_status: dict[str, list[str]] = {}
    for code in codes:
        by_status.setdefault(str(errors.CATALOG[code].status), []).append(code)
    return {
        status: {"description": "Problem: " + ", ".join(sorted(set(names))), "content": _PROBLEM}
        for status, names in sorted(by_status.items())
    }


def _error_responses(policy: RoutePolicy) -> dict[str, Any]:
    codes = ["VALIDATION_FAILED", *_COMMON_ERRORS, *_EDGE_ERRORS]
    if policy.body_schema is not None:
        codes += ["MALFORMED_JSON", "PAYLOAD_TOO_LARGE", "UNSUPPORTED_MEDIA_TYPE"]
    if policy.requires_idempotency_key:
        codes += ["IDEMPOTENCY_KEY_MISSING", "IDEMPOTENCY_KEY_REUSED", "IDEMPOTENCY_IN_PROGRESS",
                  "STATE_UNAVAILABLE"]
    if policy.unknown_outcome is not None:
        codes.append(policy.unknown_outcome.code)
    return _problems(codes)


def _parameters(policy: RoutePolicy) -> list[dict[str, Any]]:
    params: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True,
         "schema": {"type": "string", "pattern": ID_PATTERN}}
        for name in policy.path_params
    ]
    if policy.query_schema is not None:
        schema = policy.query_schema.model_json_schema()
        required = set(schema.get("required", ()))
        params += [
            {"name": name, "in": "query", "required": name in required, "schema": prop}
            for name, prop in schema["properties"].items()
        ]
    if policy.requires_idempotency_key:
        params.append({
            "name": "Idempotency-Key", "in": "header", "required": True,
            "description": "One unique key (a UUID) per order or payment, reused unchanged on "
                           "every resubmission; kept per client for 24 h by default",
            "schema": {"type": "string", "pattern": KEY_PATTERN}})
    params += [
        {"name": "X-Request-ID", "in": "header", "required": False,
         "description": "Echoed back and passed on when it is 1-128 characters of "
                        "A-Z a-z 0-9 . _ : - and not shaped like personal data; any other "
                        "value is replaced by a new id (never refused)",
         "schema": {"type": "string"}},
        {"name": "X-Client-ID", "in": "header", "required": False,
         "description": "The client scope of idempotency keys and rate limits when no API "
                        "keys are configured (empty or absent: the shared anonymous scope); "
                        "ignored when they are",
         "schema": {"type": "string", "pattern": "^[A-Za-z0-9._:-]{0,128}$"}},
        {"name": "Accept-Language", "in": "header", "required": False,
         "description": "The language of the gateway's own answers (RFC 4647 lookup): en, "
                        "zh-CN (zh, zh-CN, zh-SG, zh-Hans*) or zh-Hant (zh-TW, zh-HK, zh-MO, "
                        "zh-Hant*); English by default. Content-Language names the one used",
         "schema": {"type": "string", "examples": ["zh-CN", "zh-TW", "en"]}},
        {"name": "X-Request-Timeout-Ms", "in": "header", "required": False,
         "description": "Answer within this many milliseconds (shortens, never lengthens, "
                        "the gateway's own deadline)",
         "schema": {"type": "integer", "minimum": 1}},
    ]
    return params


def _operation(policy: RoutePolicy) -> dict[str, Any]:
    op: dict[str, Any] = {
        "operationId": policy.operation_id,
        # An API key where keys are configured; none in the open (demo) setup.
        "security": [{}, {"apiKey": []}],
        "summary": policy.summary,
        "tags": [policy.backend],
        "parameters": _parameters(policy),
        "responses": {
            str(policy.success_status): {
                "description": "The backend's answer, passed through",
                "content": {"application/json": {"schema": _ref(policy.response_schema)}},
                **({"headers": _REPLAY_HEADER} if policy.requires_idempotency_key else {}),
            },
            "4XX": {"description": "A business error of the backend, passed through "
                                   "(status and JSON body with a `code`)"},
            **_error_responses(policy),
        },
    }
    if policy.body_schema is not None:
        op["requestBody"] = {"required": True, "content": {
            "application/json": {"schema": _ref(policy.body_schema)}}}
    return op


_ANY_OBJECT: dict[str, Any] = {"type": "object"}


def _plain(description: str, schema: dict[str, Any] | None = _ANY_OBJECT,
           media_type: str = "application/json") -> dict[str, Any]:
    """A GET the gateway answers itself, open to all; `schema` None: not JSON."""
    content = {media_type: {} if schema is None else {"schema": schema}}
    return {"get": {"summary": description, "responses": {"200": {
        "description": description, "content": content}, **_problems(_CONNECTION_ERRORS)}}}


def _link(name: str, path: str, method: str, **parameters: str) -> dict[str, Any]:
    """An OpenAPI link: what this answer names, another operation takes (path escaped per
    JSON Pointer), so a client or a stateful test can follow it."""
    pointer = path.replace("~", "~0").replace("/", "~1")
    return {name: {"operationRef": f"#/paths/{pointer}/{method}", "parameters": parameters}}


def _queue_path() -> dict[str, Any]:
    return {"get": {
        "summary": "A waiting-room ticket's state; every poll keeps it alive",
        "parameters": [{"name": "ticket", "in": "path", "required": True,
                        "schema": {"type": "string"}},
                       {"name": "wait_s", "in": "query", "required": False,
                        "description": "from the front of the line, hold the answer up to "
                                       "this long for the admission",
                        "schema": {"type": "number", "minimum": 0,
                                   "maximum": waiting_room.HOLD_POLL_S}},
                       {"name": "return_to", "in": "query", "required": False,
                        "description": "the waiting page (Accept: text/html): where to send "
                                       "the customer once admitted (303, with queue_pass "
                                       "added), if its origin is in "
                                       "waiting_room.return_origins",
                        "schema": {"type": "string", "maxLength": 2048}}],
        "security": [{}, {"apiKey": []}],
        "responses": {"200": {"description": "Waiting (place, ETA, when to poll) or admitted "
                              "(a pass for X-Queue-Pass)",
                              "content": {"application/json": {"schema": _ref(QueueState)},
                                          "text/html": {"schema": {"type": "string"}}}},
                      "303": {"description": "The waiting page, admitted: back to return_to "
                                             "with queue_pass"},
                      **_problems(("NOT_FOUND", "QUEUE_TICKET_EXPIRED", "STATE_UNAVAILABLE",
                                   "VALIDATION_FAILED", *_EDGE_ERRORS))}}}


_SECURED = {"security": [{"adminToken": []}], "tags": ["admin"]}
_BACKEND_NAME = {"name": "name", "in": "path", "required": True,
                 "schema": {"enum": list(BACKENDS)}}
_SNAPSHOT = {"description": "The breaker: name, state, forced, settings, window figures",
             "content": {"application/json": {"schema": {"type": "object"}}}}
_ENDED = {"description": "Ids of the windows ended", "content": {"application/json": {
    "schema": {"type": "object", "properties": {"ended": {
        "type": "array", "items": {"type": "string"}}}}}}}


def _admin_paths(tiers: tuple[str, ...]) -> dict[str, Any]:
    problems = _problems(_ADMIN_ERRORS)
    body_problems = _problems(_ADMIN_ERRORS + _ADMIN_BODY_ERRORS)
    return {**_breaker_paths(problems, body_problems),
            **_maintenance_paths(problems, body_problems),
            **_api_key_paths(tiers, problems, body_problems),
            **_waiting_room_paths(problems, body_problems),
            **_fault_paths(problems, body_problems),
            **_stream_paths(problems)}


def _breaker_paths(problems: dict[str, Any], body_problems: dict[str, Any]) -> dict[str, Any]:
    secured, name, snapshot = _SECURED, _BACKEND_NAME, _SNAPSHOT
    paths: dict[str, Any] = {
        "/admin/breakers": {"get": {**secured, "summary": "Every breaker with its state, "
                                    "settings and window figures",
                                    "responses": {"200": snapshot, **problems}}},
        "/admin/breakers/{name}": {"put": {
            **secured, "summary": "Change settings at runtime (partial), on every process",
            "parameters": [name],
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": {"allOf": [_ref(BreakerSettings)], "minProperties": 1,
                           "description": "any non-empty subset of the fields"}}}},
            "responses": {"200": {"description": "The new settings", "content": {
                "application/json": {"schema": _ref(BreakerSettings)}}}, **body_problems}}},
    }
    for action, summary in (("open", "Force open (sticky until reset)"),
                            ("close", "Force closed (sticky until reset)"),
                            ("reset", "Back to automatic with an empty window")):
        paths[f"/admin/breakers/{{name}}/{action}"] = {"post": {
            **secured, "summary": summary, "parameters": [name],
            "responses": {"200": snapshot, **problems}}}
    return paths


def _maintenance_paths(problems: dict[str, Any],
                       body_problems: dict[str, Any]) -> dict[str, Any]:
    secured, ended = _SECURED, _ENDED
    paths: dict[str, Any] = {}
    windows = {"description": "Current and scheduled windows", "content": {"application/json": {
        "schema": {"type": "object", "properties": {"windows": {
            "type": "array", "items": _ref(MaintenanceWindowView)}}}}}}
    paths["/admin/maintenance"] = {
        "get": {**secured, "summary": "Current and scheduled maintenance windows",
                "responses": {"200": windows, **problems}},
        "put": {**secured, "summary": "Set a window (from now, or scheduled); returns it with "
                                      "its id",
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": _ref(MaintenanceWindowSettings)}}},
                "responses": {"200": {"description": "The window", "content": {
                    "application/json": {"schema": _ref(MaintenanceWindowView)}},
                    "links": _link("EndThisWindow", "/admin/maintenance/{id}", "delete",
                                   id="$response.body#/id")},
                    **body_problems}},
        "delete": {**secured, "summary": "End every window",
                   "responses": {"200": ended, **problems}},
    }
    paths["/admin/maintenance/{id}"] = {"delete": {
        **secured, "summary": "End one window",
        "parameters": [{"name": "id", "in": "path", "required": True,
                        "schema": {"type": "string"}}],
        "responses": {"200": ended, **problems}}}
    return paths


def _api_key_paths(tiers: tuple[str, ...], problems: dict[str, Any],
                   body_problems: dict[str, Any]) -> dict[str, Any]:
    secured = _SECURED
    paths: dict[str, Any] = {}
    key_view = {"type": "object", "required": ["client_id", "role", "tier", "key_id", "source"],
                "properties": {"client_id": {"type": "string"}, "role": {"type": "string"},
                               "tier": {"type": "string"}, "key_id": {"type": "string"},
                               "source": {"enum": ["config", "admin"]},
                               "key": {"type": "string", "description": "the generated key, "
                                       "shown once, when none was given"}}}
    paths["/admin/api-keys"] = {
        "get": {**secured, "summary": "Client API keys (ids, never the keys)", "responses": {
            "200": {"description": "Every key", "content": {"application/json": {"schema": {
                "type": "object", "properties": {"api_keys": {
                    "type": "array", "items": key_view}}}}}}, **problems}},
        "post": {**secured, "summary": "Add a client key on every process; without "
                                       "key_sha256 one is generated and returned once",
                 "requestBody": {"required": True, "content": {"application/json": {"schema": {
                     "type": "object", "additionalProperties": False,
                     "required": ["client_id"],
                     "properties": {
                         "client_id": {"type": "string", "pattern": r"^[A-Za-z0-9._:-]{1,128}$"},
                         "key_sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                         "role": {"enum": ["client", "reader"]},
                         "tier": {"enum": list(tiers)}}}}}},
                 "responses": {"201": {"description": "The key added", "content": {
                     "application/json": {"schema": key_view}},
                     "links": _link("RevokeThisKey", "/admin/api-keys/{key_id}", "delete",
                                    key_id="$response.body#/key_id")},
                     # While auth.required is false and no key is configured.
                     **body_problems, **_problems(["SETTING_CONFLICT"])}},
    }
    paths["/admin/api-keys/{key_id}"] = {"delete": {
        **secured, "summary": "Revoke a key added through this API",
        "parameters": [{"name": "key_id", "in": "path", "required": True,
                        "schema": {"type": "string"}}],
        "responses": {"200": {"description": "Ids of the keys revoked", "content": {
            "application/json": {"schema": {"type": "object", "properties": {"revoked": {
                "type": "array", "items": {"type": "string"}}}}}}}, **problems}}}
    return paths


def _waiting_room_paths(problems: dict[str, Any],
                        body_problems: dict[str, Any]) -> dict[str, Any]:
    secured = _SECURED
    paths: dict[str, Any] = {}
    room_settings = {k: v for k, v in WaitingRoomSettings.model_json_schema()["properties"].items()
                     if k != "secret"}
    paths["/admin/waiting-room"] = {
        "get": {**secured, "summary": "The waiting room: settings and fleet figures",
                "responses": {"200": {"description": "settings, waiting, admitted_total, "
                                      "expired_total", "content": {"application/json": {
                                          "schema": {"type": "object"}}}}, **problems}},
        "put": {**secured, "summary": "Change waiting-room settings (partial) on every process",
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "additionalProperties": False, "minProperties": 1,
                    "properties": room_settings}}}},
                "responses": {"200": {"description": "The settings now in force", "content": {
                    "application/json": {"schema": {"type": "object"}}}}, **body_problems}},
    }
    return paths


def _fault_paths(problems: dict[str, Any], body_problems: dict[str, Any]) -> dict[str, Any]:
    secured, ended = _SECURED, _ENDED
    paths: dict[str, Any] = {}
    fault_view = {"type": "object",
                  "required": ["id", "scope", "ttl_s", "created_at", "expires_at", "injected"],
                  "properties": {
                      **FaultRuleSettings.model_json_schema(ref_template=_REF)["properties"],
                      "id": {"type": "string"}, "created_at": {"type": "string"},
                      "expires_at": {"type": "string"},
                      "injected": {"type": "object", "description": "calls faulted by the "
                                   "answering process, by kind (abort, delay)"}}}
    paths["/admin/faults"] = {
        "get": {**secured, "summary": "Fault rules in force", "responses": {
            "200": {"description": "Every rule", "content": {"application/json": {"schema": {
                "type": "object", "properties": {"faults": {
                    "type": "array", "items": fault_view}}}}}}, **problems}},
        "put": {**secured, "summary": "Add a fault rule (at most 20 at once; a 21st is 422), "
                                      "in force on every process within 1 s",
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": _ref(FaultRuleSettings)}}},
                "responses": {"200": {"description": "The rule", "content": {
                    "application/json": {"schema": fault_view}},
                    "links": _link("EndThisFault", "/admin/faults/{id}", "delete",
                                   id="$response.body#/id")},
                    **body_problems}},
        "delete": {**secured, "summary": "End every rule (the kill switch)",
                   "responses": {"200": ended, **problems}},
    }
    paths["/admin/faults/{id}"] = {"delete": {
        **secured, "summary": "End one rule",
        "parameters": [{"name": "id", "in": "path", "required": True,
                        "schema": {"type": "string"}}],
        "responses": {"200": ended, **problems}}}
    return paths


def _stream_paths(problems: dict[str, Any]) -> dict[str, Any]:
    """The timeline and the live event stream."""
    secured = _SECURED
    paths: dict[str, Any] = {}
    paths["/admin/timeline"] = {"get": {
        **secured, "summary": "The shared timeline, newest first: breaker transitions, "
                              "maintenance, faults, waiting-room changes, admin actions",
        "parameters": [{"name": "limit", "in": "query", "required": False,
                        "schema": {"type": "integer", "minimum": 1, "maximum": 1000,
                                   "default": 100}}],
        "responses": {"200": {"description": "The events", "content": {"application/json": {
            "schema": {"type": "object", "required": ["events"], "properties": {"events": {
                "type": "array", "items": {
                    "type": "object", "required": ["at", "kind", "summary", "process"],
                    "properties": {
                        "at": {"type": "string"}, "summary": {"type": "string"},
                        "process": {"type": "string"},
                        "kind": {"enum": ["breaker", "maintenance", "fault", "waiting_room",
                                          "admin"]}}}}}}}}},
            **_problems((*_ADMIN_ERRORS, "VALIDATION_FAILED"))}}}
    paths["/admin/events"] = {"get": {
        **secured, "summary": "Server-Sent Events: a `snapshot` event every second (breakers, "
                              "maintenance, faults, waiting room, traffic) until the process "
                              "drains",
        "responses": {"200": {"description": "text/event-stream", "content": {
            "text/event-stream": {"schema": {"type": "string"}}}}, **problems}}}
    return paths


def build_document(settings: Settings | None = None) -> dict[str, Any]:
    """The document for these settings (the tiers an API key may name depend on them)."""
    tiers = (settings or Settings()).rate_limit.tier_names
    models = {policy.body_schema for policy in ROUTES if policy.body_schema is not None}
    models |= {policy.response_schema for policy in ROUTES}
    models |= {Problem, StatusResponse, BreakerSettings, MaintenanceWindowSettings,
               MaintenanceWindowView, QueueState, FaultRuleSettings}
    _, defs = models_json_schema([(m, "validation") for m in sorted(models, key=str)],
                                 ref_template=_REF)
    paths: dict[str, dict[str, Any]] = {}
    for policy in ROUTES:
        paths.setdefault(policy.path, {})[policy.method.lower()] = _operation(policy)
    paths["/v1/queue/{ticket}"] = _queue_path()
    paths["/v1/status"] = _plain("Current and scheduled maintenance, and backend health",
                                 _ref(StatusResponse))
    paths["/healthz"] = _plain("Liveness: 200 while the process can serve")
    paths["/readyz"] = _plain("Readiness: 200 when ready, 503 while starting or draining")
    paths["/readyz"]["get"]["responses"]["503"] = {"description": "Starting or draining"}
    paths["/metrics"] = _plain("Prometheus metrics (text format)", None, "text/plain")
    return {
        "openapi": "3.1.0",
        "info": {"title": "order-gateway", "version": "0.1.0",
                 "description": "Resilient self-service order gateway. Every gateway-made "
                                "error is application/problem+json with a stable `code`. "
                                + WHOLE_NUMBERS_RULE},
        "paths": paths | _admin_paths(tiers),
        "components": {
            "schemas": defs["$defs"],
            "securitySchemes": {
                "adminToken": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            },
        },
    }


def document_bytes(settings: Settings) -> bytes:
    return orjson.dumps(build_document(settings))
