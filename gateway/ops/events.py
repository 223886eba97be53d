"""`GET /admin/events`: a Server-Sent Events stream of fleet snapshots for the console.

Every `SNAPSHOT_S` (the contract asks for at least one every 2 s) the stream
sends `event: snapshot` whose data is one JSON object: the breakers, the
maintenance windows, the fault rules, the waiting room and this process's
backend traffic (see admin.py's `snapshot`). A plain `StreamResponse`: the
console reads it with `fetch()`, so the token travels in a header, never in a
URL. A stream ends at once when the process starts draining (`STOPPING`), so a
console left open never holds a drain up.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from gateway.edge.middleware import EDGE, REQUEST_ID, Handler

SNAPSHOT_S = 1.0
STOPPING = web.AppKey("events_stopping", asyncio.Event)
Snapshot = Callable[[web.Application], Awaitable[dict[str, Any]]]


def stream(snapshot: Snapshot) -> Handler:
    async def events(request: web.Request) -> web.StreamResponse:
        app = request.app
        stopping = app[STOPPING]
        response = web.StreamResponse(headers={
            "Content-Type": "text/event-stream", "Cache-Control": "no-store",
            "X-Accel-Buffering": "no", "X-Request-ID": request[REQUEST_ID],
            **app[EDGE].own_headers})
        await response.prepare(request)
        with contextlib.suppress(ConnectionError):
            while not stopping.is_set():
                data = orjson.dumps(await snapshot(app))
                await response.write(b"event: snapshot\ndata: " + data + b"\n\n")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), SNAPSHOT_S)
        return response

    return events
