"""`GET /admin/console`: the SRE console, one page with its own script and styles.

The files (`gateway/ops/static/`) are read once at start-up and served without the
token (they hold no data; every data call of the page needs it), on the admin
listener like every admin route, with their own Content-Security-Policy: the
page runs only its own script (`script-src 'self'`, no inline script), loads only
its own styles, and talks only to this gateway (`connect-src 'self'`).
"""

from __future__ import annotations

from importlib import resources

from aiohttp import web

from gateway.edge.middleware import Handler

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
       "img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
FILES = {
    "/admin/console": ("console.html", "text/html; charset=utf-8"),
    "/admin/console.js": ("console.js", "text/javascript; charset=utf-8"),
    "/admin/console.css": ("console.css", "text/css; charset=utf-8"),
}


def handlers() -> dict[str, Handler]:
    """A handler per file, the bytes read now."""
    static = resources.files("gateway.ops") / "static"
    return {path: _serve(static.joinpath(name).read_bytes(), content_type)
            for path, (name, content_type) in FILES.items()}


def _serve(body: bytes, content_type: str) -> Handler:
    async def serve_file(_request: web.Request) -> web.Response:
        return web.Response(body=body, headers={
            "Content-Type": content_type, "Content-Security-Policy": CSP,
            "Cache-Control": "no-cache"})

    return serve_file
