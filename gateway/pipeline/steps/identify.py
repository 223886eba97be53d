"""Who is calling: with API keys, the key's client (401 without a valid key, 403 for a
reader's write); without them, the scope the client names in X-Client-ID. Also where the
call comes from, for the per-address bounds and the audit lines."""

from __future__ import annotations

from aiohttp import web

from gateway.contract import errors, identity, privacy
from gateway.contract.errors import GatewayError
from gateway.contract.identity import Network
from gateway.contract.routes import RoutePolicy
from gateway.edge.auth import API_KEY_HEADER, ClientKeys, FailedChecks
from gateway.edge.middleware import REQUEST_ID
from gateway.pipeline.rate_limit import DEFAULT_TIER


def by_header(request: web.Request) -> tuple[str, str]:
    """The scope and tier of a client without API keys."""
    return identity.client_scope(request.headers.get("X-Client-ID")), DEFAULT_TIER


async def by_key(request: web.Request, keys: ClientKeys, failed: FailedChecks, *,
                 route: str | None = None, writes: RoutePolicy | None = None
                 ) -> tuple[str, str]:
    """The scope and tier of the key's client, or 401; 403 for a reader's key on `writes`,
    a route that writes. `route`: as audit lines name it (else the scrubbed path)."""
    client = await keys.checked(request.headers.get(API_KEY_HEADER), failed,
                                remote=request.remote, request_id=request[REQUEST_ID],
                                route=route or audit_route(request))
    if writes is not None and client.reads_only:
        raise GatewayError(errors.FORBIDDEN, params={
            "who": f"Client {client.id}", "what": f"{writes.method} {writes.path}"})
    return client.id, client.tier


def address(request: web.Request, trusted_proxies: tuple[Network, ...]) -> str:
    """The client's address, behind the trusted proxies (for per-address bounds)."""
    return identity.client_address(request.remote, request.headers.get("X-Forwarded-For"),
                                   trusted_proxies)


def audit_route(request: web.Request) -> str:
    return f"{request.method} {privacy.scrub(request.path[:200])}"
