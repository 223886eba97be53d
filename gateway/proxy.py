"""The request pipeline of a proxied route, top to bottom.

`make_handler` turns one route policy into one aiohttp handler at start-up, so
no per-request work decides what a route needs. Each step either answers
(raises a catalog error) or passes on:

    path ids, query, content type, body size, idempotency key, body schema   (validation)
    -> client scope                                                             (identity)
    -> backend call                                                             (upstream)
    -> pass-through answer
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from gateway import errors, idempotency, identity, validation
from gateway.errors import GatewayError
from gateway.routes import RoutePolicy
from gateway.upstream import Upstream

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Client headers the backends are told about; everything else stays at the edge.
FORWARDED_HEADERS = ("traceparent", "tracestate", "Accept-Language")


def make_handler(policy: RoutePolicy, upstream: Upstream, max_body_bytes: int) -> Handler:
    unknown_outcome = errors.PAYMENT_OUTCOME_UNKNOWN if policy.backend == "payment" and (
        policy.method == "POST") else None
    templated = bool(policy.path_params)

    async def handle(request: web.Request) -> web.StreamResponse:
        if templated:
            validation.check_path_ids(request.match_info)
            path = policy.upstream_path.format_map(request.match_info)
        else:
            path = policy.upstream_path
        query = None
        if policy.query_schema is not None:
            query = validation.parse_query(policy.query_schema, request.query).model_dump()
        key = None
        body = None
        if policy.body_schema is not None:
            validation.check_content_type(request.headers.get("Content-Type", ""))
            validation.check_declared_length(request.content_length, max_body_bytes)
            if policy.requires_idempotency_key:
                key = idempotency.require_key(request.headers.get("Idempotency-Key"))
            body = validation.parse_body(policy.body_schema, await _read_body(request,
                                                                                max_body_bytes))
        headers = _backend_headers(request, key, has_body=body is not None)
        result = await upstream.call(policy.method, path, headers=headers, query=query,
                                     body=body, unknown_outcome=unknown_outcome)
        return web.Response(status=result.status, body=result.body,
                            content_type=result.content_type, headers=result.headers)

    return handle


async def _read_body(request: web.Request, limit: int) -> bytes:
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        # A chunked body with no declared length, found too large while reading.
        raise GatewayError(errors.PAYLOAD_TOO_LARGE, params={"limit": limit}) from None


def _backend_headers(request: web.Request, key: str | None, *, has_body: bool) -> dict[str, str]:
    sent = request.headers
    headers = {
        "X-Request-ID": request[identity.REQUEST_ID],
        "X-Client-ID": identity.client_scope(sent.get("X-Client-ID")),
    }
    for name in FORWARDED_HEADERS:
        value = sent.get(name)
        if value is not None:
            headers[name] = value
    if key is not None:
        headers["Idempotency-Key"] = key
    if has_body:
        headers["Content-Type"] = "application/json"
    return headers
