"""Fault injection and request statistics shared by the three simulators.

`PUT /_faults` changes the faults (partial JSON), `DELETE /_faults` heals, and
`GET /_stats` reports counters. Faults apply to backend routes only, in this
order: hang (never answers, never processes), latency plus jitter (the request
is dropped unprocessed if its client has gone by then: the server cancels
handlers of closed connections), error_rate (answers `error_status` without
processing), garbage_rate (answers 200 with an HTML body without processing),
then the request is processed and, with reset_rate, the connection is reset
without an answer.
"""

from __future__ import annotations

import asyncio
import random
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import orjson
from aiohttp import web
from aiohttp.typedefs import Middleware

from upstreams.http import error, json_response

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Faults:
    error_rate: float = 0.0
    error_status: int = 500
    latency_ms: int = 0
    jitter_ms: int = 0
    reset_rate: float = 0.0
    garbage_rate: float = 0.0
    hang: bool = False
    dedup: bool = True


_RATES = ("error_rate", "reset_rate", "garbage_rate")


def parse_faults(current: Faults, data: Any) -> Faults:
    """Apply a partial update, or raise ValueError naming the first bad field."""
    if not isinstance(data, dict):
        raise ValueError("body must be a JSON object")
    known = {f.name: f.type for f in fields(Faults)}
    for name, value in data.items():
        if name not in known:
            raise ValueError(f"{name}: unknown fault")
        if name in ("hang", "dedup"):
            if not isinstance(value, bool):
                raise ValueError(f"{name}: must be true or false")
        elif isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{name}: must be a number")
        elif name in _RATES and not 0 <= value <= 1:
            raise ValueError(f"{name}: must be between 0 and 1")
        elif name == "error_status" and not 400 <= value <= 599:
            raise ValueError(f"{name}: must be an HTTP error status")
        elif name in ("latency_ms", "jitter_ms") and value < 0:
            raise ValueError(f"{name}: must not be negative")
    return replace(current, **data)


@dataclass
class SimulatorState:
    """What one simulator knows: its faults, its counters, its random source."""

    rng: random.Random
    faults: Faults = field(default_factory=Faults)
    requests: int = 0
    extra_stats: Callable[[], dict[str, Any]] = dict
    # The last backend request as received, so tests can see what the gateway forwarded.
    last_request: dict[str, Any] = field(default_factory=dict)


def _reset_connection(request: web.Request) -> None:
    """Close with RST, not FIN: the caller sees 'connection reset' and no answer."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def fault_middleware(state: SimulatorState) -> Middleware:
    @web.middleware
    async def apply_faults(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith("/_"):
            return await handler(request)
        state.requests += 1
        state.last_request = {
            "method": request.method, "path": request.path, "query": dict(request.query),
            "headers": {str(name): value for name, value in request.headers.items()},
            "body": (await request.read()).decode("utf-8", "replace"),
        }
        faults = state.faults
        if faults.hang:
            await asyncio.Event().wait()
        delay_ms = faults.latency_ms + state.rng.uniform(0, faults.jitter_ms)
        if delay_ms > 0:
            await asyncio.sleep(delay_ms / 1000)
        if faults.error_rate and state.rng.random() < faults.error_rate:
            return error(faults.error_status, "INJECTED_ERROR", "fault injected by _faults")
        if faults.garbage_rate and state.rng.random() < faults.garbage_rate:
            return web.Response(text="<html><body>502 oops</body></html>",
                                content_type="text/html")
        response = await handler(request)
        if faults.reset_rate and state.rng.random() < faults.reset_rate:
            _reset_connection(request)
        return response

    return apply_faults


def add_control_routes(app: web.Application, state: SimulatorState) -> None:
    async def put_faults(request: web.Request) -> web.Response:
        try:
            state.faults = parse_faults(state.faults, orjson.loads(await request.read()))
        except (ValueError, orjson.JSONDecodeError) as exc:
            return error(422, "INVALID_FAULTS", str(exc))
        return json_response(asdict(state.faults))

    async def delete_faults(_request: web.Request) -> web.Response:
        state.faults = Faults()
        return json_response(asdict(state.faults))

    async def get_faults(_request: web.Request) -> web.Response:
        return json_response(asdict(state.faults))

    async def get_stats(_request: web.Request) -> web.Response:
        return json_response({"requests": state.requests, **state.extra_stats(),
                              "last_request": state.last_request})

    app.router.add_put("/_faults", put_faults)
    app.router.add_delete("/_faults", delete_faults)
    app.router.add_get("/_faults", get_faults)
    app.router.add_get("/_stats", get_stats)


def new_app(state: SimulatorState) -> web.Application:
    app = web.Application(middlewares=[fault_middleware(state)])
    add_control_routes(app, state)
    return app
