"""Per-client rate limits: a token bucket per client scope, in memory or shared through Redis.

Each client scope (the `X-Client-ID`; anonymous clients share one) has a bucket
of `rate_limit.burst` tokens refilled at `rate_limit.rate_per_s`; each request
takes one. An empty bucket answers `429 RATE_LIMITED` with `Retry-After` = the
whole seconds until the next token is due. With Redis every process and
replica draws on the same bucket (one atomic script, one round trip); if Redis
cannot be reached, requests are let through (failing open: a rate limit
protects capacity, it must not take the service down with it) and counted.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

from gateway import errors
from gateway.errors import GatewayError
from gateway.settings import RateLimitSettings
from gateway.store import Store, StoreUnavailable

log = logging.getLogger("gateway.rate_limit")

EVENTS = ("limited", "store_unavailable")


class RateLimiter:
    def __init__(self, store: Store, settings: RateLimitSettings,
                 count: Callable[[str], None]) -> None:
        assert settings.rate_per_s is not None, "build a RateLimiter only when limits are on"
        self._store = store
        self._rate = settings.rate_per_s
        self._burst = settings.burst
        self._count = count
        self._store_failing = False

    async def check(self, scope: str) -> None:
        try:
            wait = await self._store.take_token(scope, self._rate, self._burst)
        except StoreUnavailable as exc:
            self._count("store_unavailable")
            if not self._store_failing:
                log.warning("rate-limit store unreachable: letting requests through",
                            extra={"fields": {"error": str(exc)}})
            self._store_failing = True
            return
        self._store_failing = False
        if wait > 0:
            self._count("limited")
            raise GatewayError(errors.RATE_LIMITED, retry_after_s=max(1, math.ceil(wait)))
