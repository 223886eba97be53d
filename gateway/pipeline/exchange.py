"""One proxied request as the pipeline carries it once it is read, and how steps chain.

The first steps (admission, deadline, who is calling, what is asked) read the request;
they end in an `Exchange`, the value every later step is given. A later step is a
`Step`: given what comes after it, the function that runs it first. `chain` composes
them at start-up, once per route, in the order `proxy.py` draws.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from aiohttp import web

from gateway.contract.forwarded import forwarded
from gateway.edge.middleware import REQUEST_ID


@dataclass(frozen=True, slots=True)
class Exchange:
    """What one request asks of its backend, and for whom."""

    scope: str  # the client: an API key's client id, or X-Client-ID
    tier: str  # its rate-limit tier
    key: str | None  # the Idempotency-Key of a keyed submission
    path: str  # the backend's path
    query: dict[str, str] | None  # validated, normalised
    body: bytes | None  # validated JSON
    deadline: float  # loop time the answer is due by


Next = Callable[[web.Request, Exchange], Awaitable[web.StreamResponse]]
Step = Callable[[Next], Next]


def chain(steps: Sequence[Step], last: Next) -> Next:
    """`steps` in order, each passing on to the next, then `last`."""
    for step in reversed(steps):
        last = step(last)
    return last


def backend_headers(request: web.Request, exchange: Exchange) -> dict[str, str]:
    """What a backend is told: the request id and client, the forwarded headers that pass
    (`forwarded.py`), the key and the body's type. Built by the last step only: a request
    refused on the way never pays for it."""
    headers = {"X-Request-ID": request[REQUEST_ID], "X-Client-ID": exchange.scope,
               **forwarded(request.headers)}
    if exchange.key is not None:
        headers["Idempotency-Key"] = exchange.key
    if exchange.body is not None:
        headers["Content-Type"] = "application/json"
    return headers
