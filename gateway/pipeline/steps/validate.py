"""What is asked: path ids, query, content type, body size, idempotency key and body schema,
each refused as the catalog says (422, 415, 413, 400) before anything else is spent."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from gateway.contract import validation
from gateway.contract.routes import RoutePolicy
from gateway.edge import connections
from gateway.pipeline import idempotency
from gateway.pipeline.exchange import Exchange


@dataclass(frozen=True, slots=True)
class BodyLimits:
    max_bytes: int
    timeout_s: float


async def exchange_of(request: web.Request, policy: RoutePolicy, limits: BodyLimits,
                      scope: str, tier: str, deadline: float) -> Exchange:
    """The exchange of a request whose path, query and body pass; else their refusal."""
    if policy.path_params:
        validation.check_path_ids(request.match_info)
        path = policy.upstream_path.format_map(request.match_info)
    else:
        path = policy.upstream_path
    query = None
    if policy.query_schema is not None:
        query = validation.query_fields(policy.query_schema, request.query)
    key = body = None
    if policy.body_schema is not None:
        validation.check_content_type(request.headers.get("Content-Type", ""))
        validation.check_declared_length(request.content_length, limits.max_bytes)
        if policy.requires_idempotency_key:
            key = idempotency.require_key(request.headers.get("Idempotency-Key"))
        body = validation.parse_body(policy.body_schema, await connections.read_body(
            request, limits.max_bytes, limits.timeout_s))
    return Exchange(scope, tier, key, path, query, body, deadline)
