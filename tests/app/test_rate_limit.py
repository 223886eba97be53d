"""Per-client rate limits in-process: burst, steady rate, Retry-After and isolation
(one bucket shared by two processes through Redis is in tests/system/)."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from tests.clients import LIMITS, statuses
from tests.conftest import InProcess, StartApp


@pytest.fixture
async def gw(gateway_app: StartApp) -> InProcess:
    return await gateway_app(LIMITS)


async def test_burst_then_429_with_retry_after_then_the_steady_rate(
        gw: InProcess, http: aiohttp.ClientSession) -> None:
    got = await statuses(http, gw, 8, "app-burst")
    assert [s for s, _, _ in got[:6]] == [200] * 6
    assert got[6:] == [(429, "RATE_LIMITED", "1")] * 2
    await asyncio.sleep(1.1)  # one token is due a second after the bucket ran dry
    assert [s for s, _, _ in await statuses(http, gw, 2, "app-burst")] == [200, 429]


async def test_clients_do_not_share_a_bucket(gw: InProcess, http: aiohttp.ClientSession) -> None:
    assert {s for s, _, _ in await statuses(http, gw, 7, "app-greedy")} == {200, 429}
    assert [s for s, _, _ in await statuses(http, gw, 6, "app-polite")] == [200] * 6


async def test_the_retry_after_covers_the_wait_for_a_slow_rate(
        gateway_app: StartApp, http: aiohttp.ClientSession) -> None:
    slow = await gateway_app({"rate_limit": {"rate_per_s": 0.2, "burst": 1}})
    got = await statuses(http, slow, 2, "app-slow")
    assert got[0][0] == 200
    assert got[1][:2] == (429, "RATE_LIMITED") and got[1][2] in ("5", "4")
