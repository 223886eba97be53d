"""The floor: a minimal aiohttp pass-through proxy (uvloop, one pooled ClientSession).

No validation, no error mapping, no metrics, no logs. The benchmark measures the
gateway against this to see what the pipeline itself costs. With `--redis URL`
it also makes one Redis `SET NX` per order submission (keyed by its
Idempotency-Key, with a TTL): the floor for a proxy that keeps any per-request
state in Redis.

    python -m loadtest.bare_proxy --port 8099 --availability http://127.0.0.1:9103 \
        --order http://127.0.0.1:9101 [--redis redis://127.0.0.1:6379/0]
"""

from __future__ import annotations

import argparse
import asyncio

import aiohttp
import redis.asyncio as redis
import uvloop
from aiohttp import web

SESSION = web.AppKey("session", aiohttp.ClientSession)
KEY_TTL_S = 86_400


def build(availability: str, order: str, redis_url: str | None) -> web.Application:
    app = web.Application()
    store = redis.Redis.from_url(redis_url) if redis_url else None

    async def session_ctx(app: web.Application):  # type: ignore[no-untyped-def]
        app[SESSION] = aiohttp.ClientSession()
        yield
        await app[SESSION].close()
        if store is not None:
            await store.aclose()

    async def availability_get(request: web.Request) -> web.Response:
        async with app[SESSION].get(availability + "/availability",
                                    params=request.query) as resp:
            return web.Response(status=resp.status, body=await resp.read(),
                                content_type=resp.content_type)

    async def orders_post(request: web.Request) -> web.Response:
        key = request.headers.get("Idempotency-Key", "")
        if store is not None and not await store.set(f"bare:{key}", b"1", nx=True,
                                                     ex=KEY_TTL_S):
            return web.Response(status=409)
        headers = {"Content-Type": "application/json", "Idempotency-Key": key}
        async with app[SESSION].post(order + "/orders", data=await request.read(),
                                     headers=headers) as resp:
            return web.Response(status=resp.status, body=await resp.read(),
                                content_type=resp.content_type)

    app.cleanup_ctx.append(session_ctx)
    app.router.add_get("/v1/availability", availability_get)
    app.router.add_post("/v1/orders", orders_post)
    app.router.add_get("/readyz", lambda _r: asyncio.sleep(0, web.Response(text="ok")))
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--availability", required=True)
    parser.add_argument("--order", required=True)
    parser.add_argument("--redis", default=None)
    args = parser.parse_args()
    uvloop.install()
    web.run_app(build(args.availability, args.order, args.redis), host="127.0.0.1",
                port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
