"""Maintenance across a process boundary: an SRE's bypass audited in the process's log, and
windows shared through Redis by several gateway processes (restarts included)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from loadtest.harness import Gateway, RedisServer, Upstreams
from tests.clients import AVAILABILITY, Admin, request
from tests.conftest import ADMIN_TOKEN


@pytest.fixture(scope="module")
def gw(log_dir: Path, upstreams: Upstreams) -> Iterator[Gateway]:
    gateway = Gateway(log_dir, upstreams.urls, env={"GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN})
    yield gateway
    gateway.stop()


@pytest.fixture
async def admin(gw: Gateway, http: aiohttp.ClientSession,
                healthy: Upstreams) -> AsyncIterator[Admin]:
    helper = Admin(http, gw)
    yield helper
    await helper.call("DELETE", "/admin/maintenance")


async def test_an_sre_can_bypass_with_the_admin_token_and_is_audited(
        admin: Admin, healthy: Upstreams, http: aiohttp.ClientSession, gw: Gateway) -> None:
    await admin.put(scope="all")
    status, _, _ = await request(http, gw, "GET", AVAILABILITY,
                                 **{"X-Maintenance-Bypass": "wrong"})
    assert status == 503
    status, headers, _ = await request(http, gw, "GET", AVAILABILITY,
                                       **{"X-Maintenance-Bypass": ADMIN_TOKEN})
    assert status == 200
    rid = headers["X-Request-ID"]
    for _ in range(40):
        audit = [orjson.loads(line) for line in gw.proc.log_text().splitlines()
                 if rid in line and '"maintenance.bypass"' in line]
        if audit:
            break
        await asyncio.sleep(0.1)
    assert audit and audit[0]["audit"] is True and ADMIN_TOKEN not in str(audit[0])


# -- several gateways sharing Redis ---------------------------------------------------------

def _shared_gateway(log_dir: Path, sims: Upstreams, redis: RedisServer,
                    config: dict[str, Any] | None = None) -> Gateway:
    return Gateway(log_dir, sims.urls, env={"GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN},
                   config={"redis": {"url": redis.url}, **(config or {})})


async def _until(check: Any, limit_s: float) -> float:
    """Seconds until `check()` is true (polling every 20 ms), or fail after `limit_s`."""
    started = time.monotonic()
    while time.monotonic() - started < limit_s:
        if await check():
            return time.monotonic() - started
        await asyncio.sleep(0.02)
    raise AssertionError(f"not within {limit_s} s")


async def test_a_window_set_on_one_gateway_is_enforced_on_another_within_a_second(
        log_dir: Path, healthy: Upstreams, http: aiohttp.ClientSession) -> None:
    redis = RedisServer(log_dir)
    one = _shared_gateway(log_dir, healthy, redis)
    two = _shared_gateway(log_dir, healthy, redis)
    try:
        async def refused_on(gateway: Gateway) -> bool:
            return (await request(http, gateway, "GET", AVAILABILITY))[0] == 503

        async def served_on(gateway: Gateway) -> bool:
            return not await refused_on(gateway)

        window = await Admin(http, one).put(scope="availability")
        assert await refused_on(one), "at once on the gateway that took it"
        assert await _until(lambda: refused_on(two), 1.0) < 1.0
        two.stop()
        two = _shared_gateway(log_dir, healthy, redis)
        assert await refused_on(two), "a restarted gateway enforces it from its first request"
        assert (await Admin(http, two).call("DELETE", f"/admin/maintenance/{window['id']}"))[
            0] == 200
        assert await _until(lambda: served_on(one), 1.0) < 1.0
    finally:
        one.stop()
        two.stop()
        redis.stop()


async def test_a_config_window_ended_by_an_sre_stays_ended_across_restarts(
        log_dir: Path, healthy: Upstreams, http: aiohttp.ClientSession) -> None:
    redis = RedisServer(log_dir)
    config = {"maintenance": {"windows": [{"scope": "all"}]}}
    gateway = _shared_gateway(log_dir, healthy, redis, config)
    try:
        assert (await request(http, gateway, "GET", AVAILABILITY))[0] == 503
        assert (await Admin(http, gateway).call("DELETE", "/admin/maintenance"))[0] == 200
        gateway.stop()
        gateway = _shared_gateway(log_dir, healthy, redis, config)
        assert (await request(http, gateway, "GET", AVAILABILITY))[0] == 200
    finally:
        gateway.stop()
        redis.stop()
