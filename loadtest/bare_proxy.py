"""The floor: a bare aiohttp pass-through proxy (uvloop, one pooled ClientSession).

No validation, no error mapping, no metrics, no logs. The benchmark measures
the gateway against this to see what the pipeline itself costs.

    python -m loadtest.bare_proxy --port 8099 --upstream http://127.0.0.1:9103
"""

from __future__ import annotations

import argparse
import asyncio

import aiohttp
import uvloop
from aiohttp import web


def build(upstream: str) -> web.Application:
    app = web.Application()
    session_key = web.AppKey("session", aiohttp.ClientSession)

    async def session_ctx(app: web.Application):  # type: ignore[no-untyped-def]
        app[session_key] = aiohttp.ClientSession()
        yield
        await app[session_key].close()

    async def forward(request: web.Request) -> web.Response:
        async with app[session_key].get(upstream + "/availability",
                                        params=request.query) as resp:
            return web.Response(status=resp.status, body=await resp.read(),
                                content_type=resp.content_type)

    app.cleanup_ctx.append(session_ctx)
    app.router.add_get("/v1/availability", forward)
    app.router.add_get("/readyz", lambda _r: asyncio.sleep(0, web.Response(text="ok")))
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    args = parser.parse_args()
    uvloop.install()
    web.run_app(build(args.upstream), host="127.0.0.1", port=args.port, access_log=None,
                print=None)


if __name__ == "__main__":
    main()
