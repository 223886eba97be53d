"""429 RATE_LIMITED when the client's token bucket of its tier is empty."""

from __future__ import annotations

from aiohttp import web

from gateway.pipeline.exchange import Exchange, Next, Step
from gateway.pipeline.rate_limit import RateLimiter


def step(limiter: RateLimiter) -> Step:
    def before(after: Next) -> Next:
        async def limited(request: web.Request, exchange: Exchange) -> web.StreamResponse:
            await limiter.check(exchange.scope, exchange.tier)
            return await after(request, exchange)

        return limited

    return before
