"""Per-client rate limits through real gateways: burst, steady rate, Retry-After, isolation,
one bucket shared by two processes through Redis, and failing open when Redis is gone."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from loadtest.harness import Gateway, RedisServer, Upstreams

AVAILABILITY = "/v1/availability?address=Beijing%201&product=fiber-500"
# One token a second: slow enough that a busy machine cannot refill a bucket mid-test.
LIMITS = {"rate_limit": {"rate_per_s": 1.0, "burst": 6}}


async def statuses(http: aiohttp.ClientSession, gw: Gateway, n: int,
                   client: str) -> list[tuple[int, str | None, str | None]]:
    got = []
    for _ in range(n):
        async with http.get(gw.url + AVAILABILITY, headers={"X-Client-ID": client}) as resp:
            body = await resp.json()
            got.append((resp.status, body.get("code"), resp.headers.get("Retry-After")))
    return got


@pytest.fixture(scope="module")
def gw(log_dir: Path, upstreams: Upstreams) -> Iterator[Gateway]:
    gateway = Gateway(log_dir, upstreams.urls, config=LIMITS)
    yield gateway
    gateway.stop()


async def test_burst_then_429_with_retry_after_then_the_steady_rate(
        gw: Gateway, http: aiohttp.ClientSession) -> None:
    got = await statuses(http, gw, 8, "app-burst")
    assert [s for s, _, _ in got[:6]] == [200] * 6
    assert got[6:] == [(429, "RATE_LIMITED", "1")] * 2
    await asyncio.sleep(1.1)  # one token is due a second after the bucket ran dry
    assert [s for s, _, _ in await statuses(http, gw, 2, "app-burst")] == [200, 429]


async def test_clients_do_not_share_a_bucket(gw: Gateway, http: aiohttp.ClientSession) -> None:
    assert {s for s, _, _ in await statuses(http, gw, 7, "app-greedy")} == {200, 429}
    assert [s for s, _, _ in await statuses(http, gw, 6, "app-polite")] == [200] * 6


async def test_the_retry_after_covers_the_wait_for_a_slow_rate(
        log_dir: Path, upstreams: Upstreams, http: aiohttp.ClientSession) -> None:
    slow = Gateway(log_dir, upstreams.urls, config={"rate_limit": {"rate_per_s": 0.2,
                                                                   "burst": 1}})
    try:
        got = await statuses(http, slow, 2, "app-slow")
        assert got[0][0] == 200
        assert got[1][:2] == (429, "RATE_LIMITED") and got[1][2] in ("5", "4")
    finally:
        slow.stop()


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
