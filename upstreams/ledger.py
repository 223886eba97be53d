"""Idempotency as a real backend does it: answers remembered by (client, key).

Shared by the order and payment simulators. `replay` returns the first answer
for a key; `received_by_key` counts the POSTs that reached processing per key
(`requests_by_key` in `_stats`); `lookup` serves `GET /...?idempotency_key=K` with the body of a
request that actually created something.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from upstreams.faults import SimulatorState
from upstreams.http import error, read_object

ANONYMOUS = "anonymous"
Handler = Callable[[web.Request], Awaitable[web.Response]]


def caller(request: web.Request) -> tuple[str, str | None]:
    """(client scope, idempotency key) of a request."""
    return (request.headers.get("X-Client-ID") or ANONYMOUS,
            request.headers.get("Idempotency-Key"))


class Ledger:
    def __init__(self) -> None:
        self._answers: dict[tuple[str, str], tuple[int, bytes]] = {}
        self._created: dict[tuple[str, str], bytes] = {}
        # POSTs that reached processing, per key: what tests count forwards by.
        self.received_by_key: Counter[str] = Counter()

    def replay(self, client: str, key: str | None) -> tuple[int, bytes] | None:
        return self._answers.get((client, key)) if key else None

    def remember(self, client: str, key: str | None, status: int, body: bytes) -> None:
        if not key:
            return
        self._answers.setdefault((client, key), (status, body))
        if 200 <= status < 300:
            self._created.setdefault((client, key), body)

    def lookup(self, client: str, key: str) -> bytes | None:
        return self._created.get((client, key))


def lookup_handler(ledger: Ledger, name: str) -> Handler:
    """`GET /<resource>?idempotency_key=K`: the original answer, or 404."""

    async def handle(request: web.Request) -> web.Response:
        key = request.query.get("idempotency_key")
        if not key:
            return error(400, "BAD_REQUEST", "idempotency_key is required")
        body = ledger.lookup(caller(request)[0], key)
        if body is None:
            return error(404, "NOT_FOUND", f"no {name} was created with this key")
        return web.Response(status=200, body=body, content_type="application/json")

    return handle


def _raw(status: int, body: bytes) -> web.Response:
    return web.Response(status=status, body=body, content_type="application/json")


def create_handler(
    state: SimulatorState,
    ledger: Ledger,
    check: Callable[[dict[str, Any]], web.Response | None],
    create: Callable[[dict[str, Any], str | None], bytes],
) -> Handler:
    """`POST` of a resource: replayed by key when dedup is on, checked, created once."""

    async def handle(request: web.Request) -> web.Response:
        client, key = caller(request)
        if key:
            ledger.received_by_key[key] += 1
        if state.faults.dedup and (replay := ledger.replay(client, key)) is not None:
            return _raw(*replay)
        data = await read_object(request)
        if isinstance(data, web.Response):
            return data
        refusal = check(data)
        if refusal is not None:
            # aiohttp types a body as bytes or a payload; error() always gives bytes
            ledger.remember(client, key, refusal.status, bytes(refusal.body))  # type: ignore[arg-type]
            return refusal
        body = create(data, key)
        ledger.remember(client, key, 201, body)
        return _raw(201, body)

    return handle


def read_handler(records: dict[str, bytes], param: str, code: str) -> Handler:
    """`GET /<resource>/{id}`."""

    async def handle(request: web.Request) -> web.Response:
        body = records.get(request.match_info[param])
        return error(404, code, "no such resource") if body is None else _raw(200, body)

    return handle
