"""Per-client rate limits: a token bucket per client scope, in memory or shared through Redis.

Each client scope (the API key's client, else `X-Client-ID`; anonymous clients
share one) has a bucket of its tier's `burst` tokens (`rate_limit.tiers`, or
`rate_limit.burst` for the default tier) refilled at its `rate_per_s`; each request
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

from gateway.contract import errors
from gateway.contract.errors import GatewayError
from gateway.contract.settings import RateLimitSettings
from gateway.state.bucket_store import TokenBuckets
from gateway.state.common import StoreUnavailable

log = logging.getLogger("gateway.rate_limit")

EVENTS = ("limited", "store_unavailable")
DEFAULT_TIER = "default"


Limits = tuple[float, int]  # (rate_per_s, burst)


def tier_limits(settings: RateLimitSettings) -> dict[str, Limits]:
    """The limited tiers; `default` (clients without an API key, or a key without a
    tier) only when `rate_limit.rate_per_s` is set."""
    limits = {name: (tier.rate_per_s, tier.burst) for name, tier in settings.tiers.items()}
    if settings.rate_per_s is not None:
        limits.setdefault(DEFAULT_TIER, (settings.rate_per_s, settings.burst))
    return limits


class RateLimiter:
    def __init__(self, store: TokenBuckets, limits: dict[str, Limits],
                 count: Callable[[str], None]) -> None:
        self._store = store
        self._limits = limits
        self._count = count
        self._store_failing = False

    async def check(self, scope: str, tier: str = "default") -> None:
        limits = self._limits.get(tier)
        if limits is None:
            return  # this tier is not limited
        rate, burst = limits
        try:
            # Tiers share no bucket: a client moved to another tier starts afresh.
            wait = await self._store.take(f"{tier}/{scope}", rate, burst)
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
