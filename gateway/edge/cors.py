"""Cross-origin calls from browsers: an allow-list of origins, preflights answered here.

A preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) is
answered by the gateway and never forwarded: 204 with the methods the path
takes for an allowed origin, 403 FORBIDDEN for any other origin or for the
admin API (never meant for browsers). On ordinary answers an allowed origin
is named in `Access-Control-Allow-Origin`; any other gets no CORS headers, so
the browser keeps the answer from the page. No wildcard, no credentials: the
API authenticates with `X-API-Key`, not cookies.
"""

from __future__ import annotations

from aiohttp import web

from gateway.contract import errors
from gateway.contract.errors import GatewayError
from gateway.contract.settings import CorsSettings

_ADMIN_PREFIX = "/admin"


class Cors:
    def __init__(self, settings: CorsSettings) -> None:
        self._origins = frozenset(settings.allow_origins)
        self._preflight_headers = {
            "Access-Control-Allow-Headers": ", ".join(settings.allow_headers),
            "Access-Control-Max-Age": str(settings.max_age_s),
            "Vary": "Origin",
        }
        self._expose = ", ".join(settings.expose_headers)

    @staticmethod
    def is_preflight(request: web.Request) -> bool:
        return (request.method == "OPTIONS" and "Origin" in request.headers
                and "Access-Control-Request-Method" in request.headers)

    def preflight(self, request: web.Request) -> web.Response:
        origin = request.headers["Origin"].lower()
        if request.path.startswith(_ADMIN_PREFIX) or origin not in self._origins:
            raise GatewayError(errors.FORBIDDEN, params={
                "who": "This origin", "what": "call this API from a browser"})
        exc = request.match_info.http_exception
        if isinstance(exc, web.HTTPMethodNotAllowed):
            methods = sorted(exc.allowed_methods)
        elif exc is None:
            methods = [request.match_info.route.method]
        else:
            raise exc  # no such path: 404 as for any other method
        return web.Response(status=204, headers={
            "Access-Control-Allow-Origin": request.headers["Origin"],
            "Access-Control-Allow-Methods": ", ".join(methods),
            **self._preflight_headers})

    def decorate(self, request: web.BaseRequest, response: web.StreamResponse) -> None:
        """Name an allowed origin on an ordinary answer; `Vary` either way, for caches."""
        origin = request.headers.get("Origin")
        response.headers.add("Vary", "Origin")
        if origin is None or origin.lower() not in self._origins:
            return
        if request.path.startswith(_ADMIN_PREFIX):
            return
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Expose-Headers"] = self._expose
