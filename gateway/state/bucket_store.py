"""Token buckets: tokens left and last refill per scope, for `rate_limit.py` (and, always in
memory, the admin API's per-address limit). On Redis one script, not safe to repeat.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Protocol

from gateway.contract.clock import Clock, SystemClock
from gateway.state.redis.connection import RedisConnection, Script


class TokenBuckets(Protocol):
    async def take(self, scope: str, rate_per_s: float, burst: int) -> float:
        """Take one token from the bucket: 0.0 if taken, else seconds until one is due.

        A token bucket refilled at `rate_per_s` up to `burst`; a scope never seen
        starts full. Read, refill and take are one atomic step.
        """


def refill_and_take(tokens: float, last: float, now: float, rate_per_s: float,
                    burst: int) -> tuple[float, float]:
    """(tokens left, seconds to wait): the token-bucket step, shared by the memory store
    and mirrored by the Redis script."""
    tokens = min(float(burst), tokens + max(0.0, now - last) * rate_per_s)
    if tokens >= 1.0:
        return tokens - 1.0, 0.0
    return tokens, (1.0 - tokens) / rate_per_s


class MemoryTokenBuckets:
    """Token buckets of one process, the least recently used dropped past `max_buckets`
    (a dropped bucket comes back full)."""

    def __init__(self, clock: Clock | None = None, max_buckets: int = 100_000) -> None:
        self._clock = clock or SystemClock()
        self._max_buckets = max_buckets
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    async def take(self, scope: str, rate_per_s: float, burst: int) -> float:
        now = self._clock.monotonic()
        buckets = self._buckets
        tokens, last = buckets.pop(scope, (float(burst), now))
        tokens, wait = refill_and_take(tokens, last, now, rate_per_s, burst)
        buckets[scope] = (tokens, now)
        if len(buckets) > self._max_buckets:
            buckets.popitem(last=False)
        return wait


RATE_KEY = "og:rl:{scope}"  # hash: tokens, ts (Redis time of the last refill)


# KEYS[1] bucket; ARGV rate per second, burst, ttl_ms. Mirrors store.refill_and_take.
_TAKE_TOKEN = Script.of("""
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(b[1]) or burst
local last = tonumber(b[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - last) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.6f', tokens),
           'ts', string.format('%.6f', now))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return string.format('%.6f', wait)
""")


class RedisTokenBuckets:
    def __init__(self, connection: RedisConnection) -> None:
        self._connection = connection

    async def take(self, scope: str, rate_per_s: float, burst: int) -> float:
        # Idle longer than a full refill, a bucket is full again: no need to keep it.
        ttl_ms = int(burst / rate_per_s * 1000) + 1000
        # Not repeatable: run twice, it would take two tokens.
        wait = await self._connection.eval(_TAKE_TOKEN, (RATE_KEY.format(scope=scope),),
                                           rate_per_s, burst, ttl_ms, repeatable=False)
        return float(wait)
