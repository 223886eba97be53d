"""Scopes: which requests a maintenance window (or any later rule) covers.

A scope is `all`, a backend (`order`, `payment`, `availability`), or a route as
`/openapi.json` names it, with or without its method (`POST /v1/payments`,
`/v1/orders/{order_id}`). The vocabulary comes from the route table, so a new
route is a new scope without another list to keep.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from gateway.contract.routes import BACKENDS, ROUTES, RoutePolicy

ALL = "all"
SCOPE_HELP = ("must be all, a backend (order, payment, availability) or a route such as "
              "'POST /v1/payments' or '/v1/orders/{order_id}'")


@cache
def known() -> frozenset[str]:
    """Every scope there is."""
    scopes = {ALL, *BACKENDS}
    for policy in ROUTES:
        scopes |= {policy.path, policy.route_key}
    return frozenset(scopes)


def check(value: str) -> str:
    """The scope, or ValueError saying what a scope may be."""
    if value not in known():
        raise ValueError(SCOPE_HELP)
    return value


def covers(scope: str, policy: RoutePolicy) -> bool:
    return scope in (ALL, policy.backend, policy.path, policy.route_key)


def publish_choices(schema: dict[str, Any]) -> None:
    """For a pydantic field's JSON schema: the scopes, as an enum."""
    schema["enum"] = sorted(known())
