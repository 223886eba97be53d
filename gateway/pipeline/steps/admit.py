"""Admission: 503 OVERLOADED at once when the route's priority has no room left, or when
the request already waited too long (often decided at arrival, `arrivals.py`)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import NoReturn

from aiohttp import web

from gateway.contract import errors
from gateway.contract.errors import GatewayError
from gateway.edge import connections
from gateway.edge.admission import Admission, AdmitAll
from gateway.edge.middleware import Handler


def admit(admission: Admission | AdmitAll, priority: int, shed: Callable[[], None] | None,
          handle: Handler) -> Handler:
    """`handle`, run only for a request admission takes on, and counted until it ends."""

    async def admitted(request: web.Request) -> web.StreamResponse:
        # Shed before reading anything: under overload this must cost microseconds.
        counted, arrived_at = connections.arrival(request)
        if not counted and not admission.enter(priority):
            _shed(shed)
        try:
            if not admission.started(priority, asyncio.get_running_loop().time() - arrived_at):
                _shed(shed)  # waited too long already
            try:
                return await handle(request)
            except GatewayError as err:
                if err.spec is errors.OVERLOADED:
                    admission.congested()  # a full bulkhead further on
                raise
        finally:
            admission.leave()

    return admitted


def _shed(shed: Callable[[], None] | None) -> NoReturn:
    if shed is not None:
        shed()
    raise GatewayError(errors.OVERLOADED)
