"""503 MAINTENANCE while a window covers the route; an SRE's valid `X-Maintenance-Bypass`
passes (audited), a wrong one is a failed secret check."""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiohttp import web

from gateway.edge.auth import FailedChecks
from gateway.edge.middleware import REQUEST_ID
from gateway.pipeline.exchange import Exchange, Next, Step
from gateway.pipeline.maintenance import BYPASS_HEADER, Maintenance, RouteWindows
from gateway.pipeline.steps.identify import audit_route

audit = logging.getLogger("gateway.audit")


def step(maintenance: Maintenance, windows: RouteWindows, failed: FailedChecks,
         bypass_here: Callable[[web.Request], bool]) -> Step:
    """`bypass_here`: whether the listener a request came in on honours the bypass."""

    def before(after: Next) -> Next:
        async def checked(request: web.Request, exchange: Exchange) -> web.StreamResponse:
            if windows.windows:  # windows come and go at runtime
                await _check(maintenance, windows, request, failed, bypass_here)
            return await after(request, exchange)

        return checked

    return before


async def _check(maintenance: Maintenance, windows: RouteWindows, request: web.Request,
                 failed: FailedChecks, bypass_here: Callable[[web.Request], bool]) -> None:
    window = maintenance.refusal(windows, request.method)
    if window is None:
        return
    sent = request.headers.get(BYPASS_HEADER)
    if sent is None or not bypass_here(request):
        raise maintenance.error(window)
    if not maintenance.bypassed(sent):
        raise await failed.refusal("maintenance_bypass", maintenance.error(window),
                                   remote=request.remote, request_id=request[REQUEST_ID],
                                   route=audit_route(request))
    audit.info("maintenance bypassed", extra={"fields": {
        "audit": True, "action": "maintenance.bypass", "window": window.id,
        "route": audit_route(request), "request_id": request[REQUEST_ID],
        "remote": request.remote}})
