"""Per-client rate limits across processes: one bucket shared by two gateways through
Redis, and failing open when Redis is killed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp

from loadtest.harness import Gateway, RedisServer, Upstreams
from tests.clients import LIMITS, statuses


def _shared(log_dir: Path, upstreams: Upstreams, redis: RedisServer) -> Gateway:
    config: dict[str, Any] = {"redis": {"url": redis.url}, **LIMITS}
    return Gateway(log_dir, upstreams.urls, config=config)


async def test_two_processes_draw_on_one_bucket_and_redis_down_fails_open(
        log_dir: Path, upstreams: Upstreams, http: aiohttp.ClientSession) -> None:
    redis = RedisServer(log_dir)
    one, two = _shared(log_dir, upstreams, redis), _shared(log_dir, upstreams, redis)
    try:
        first = await statuses(http, one, 3, "app-shared")
        second = await statuses(http, two, 3, "app-shared")
        assert [s for s, _, _ in first + second] == [200] * 6
        assert (await statuses(http, one, 1, "app-shared"))[0][:2] == (429, "RATE_LIMITED")
        assert (await statuses(http, two, 1, "app-shared"))[0][:2] == (429, "RATE_LIMITED")
        redis.kill()
        assert [s for s, _, _ in await statuses(http, one, 3, "app-shared")] == [200] * 3
        async with http.get(one.url + "/metrics") as resp:
            text = await resp.text()
        assert 'gateway_rate_limit_events_total{event="store_unavailable"} 3.0' in text
        assert 'gateway_rate_limit_events_total{event="limited"} 1.0' in text
    finally:
        one.stop()
        two.stop()
        redis.stop()
