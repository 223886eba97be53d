"""Stale availability: a recent answer, marked, instead of an error; never past its age."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from gateway.backends.stale_cache import StaleCache
from gateway.contract.clock import FakeClock
from gateway.contract.reply import Reply
from loadtest.harness import Gateway, Upstreams
from tests.conftest import ADMIN_TOKEN

OK = Reply(200, b'{"available":true}', "application/json", (("Cache-Control", "no-cache"),))


def test_kept_answers_come_back_marked_with_their_age_until_too_old() -> None:
    clock = FakeClock()
    cache = StaleCache(clock, max_age_s=30, max_entries=10)
    cache.keep("a", OK)
    clock.advance(12.7)
    stale = cache.stale("a")
    assert stale is not None
    assert (stale.status, stale.body) == (OK.status, OK.body)
    assert dict(stale.headers) == {"Cache-Control": "no-cache", "X-Gateway-Stale": "true",
                                   "Age": "12"}
    clock.advance(20)
    assert cache.stale("a") is None
    assert len(cache) == 0


def test_only_successes_are_kept_and_the_cache_is_bounded() -> None:
    cache = StaleCache(FakeClock(), max_age_s=30, max_entries=3)
    cache.keep("refused", Reply(404, b"{}", "application/json"))
    assert cache.stale("refused") is None
    for key in "abcd":
        cache.keep(key, OK)
    assert len(cache) == 3
    assert cache.stale("a") is None and cache.stale("d") is not None


@pytest.fixture(scope="module")
def gw(log_dir: Path, upstreams: Upstreams) -> Iterator[Gateway]:
    gateway = Gateway(log_dir, upstreams.urls, env={"GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN},
                      config={"stale_cache": {"max_age_s": 1.5}})
    yield gateway
    gateway.stop()


@dataclass
class Got:
    status: int
    headers: dict[str, str]
    body: bytes


async def _get(http: aiohttp.ClientSession, gw: Gateway, address: str) -> Got:
    async with http.get(gw.url + "/v1/availability",
                        params={"address": address, "product": "fiber-500"}) as resp:
        return Got(resp.status, dict(resp.headers), await resp.read())


async def test_backend_failure_and_open_breaker_serve_the_stale_answer_until_max_age(
        gw: Gateway, healthy: Upstreams, http: aiohttp.ClientSession) -> None:
    fresh = await _get(http, gw, "Hangzhou 1")
    assert fresh.status == 200 and "X-Gateway-Stale" not in fresh.headers
    healthy.set_faults("availability", error_rate=1.0)
    stale = await _get(http, gw, "Hangzhou 1")
    assert (stale.status, stale.headers["X-Gateway-Stale"]) == (200, "true")
    assert stale.body == fresh.body
    assert (await _get(http, gw, "Hangzhou 2")).status == 502, "never asked: no answer kept"
    healthy.heal()
    gw.admin("POST", "/admin/breakers/availability/open", ADMIN_TOKEN)
    assert (await _get(http, gw, "Hangzhou 1")).headers["X-Gateway-Stale"] == "true"
    await asyncio.sleep(1.6)
    too_old = await _get(http, gw, "Hangzhou 1")
    assert too_old.status == 503
    async with http.get(gw.url + "/metrics") as resp:
        assert 'gateway_stale_served_total{route="GET /v1/availability"} 2.0' in await resp.text()
    gw.admin("POST", "/admin/breakers/availability/reset", ADMIN_TOKEN)


async def test_orders_and_payments_are_never_served_stale(
        gw: Gateway, healthy: Upstreams, http: aiohttp.ClientSession) -> None:
    async with http.post(gw.url + "/v1/orders", headers={"Idempotency-Key": "stale-o1"}, json={
            "customer": {"name": "Li", "phone": "13800138000", "id_number": "11010519491231002X"},
            "product": "fiber-500", "address": "Hangzhou 3"}) as resp:
        order_id = (await resp.json())["order_id"]
    async with http.get(f"{gw.url}/v1/orders/{order_id}") as resp:
        assert resp.status == 200
    healthy.set_faults("order", error_rate=1.0)
    async with http.get(f"{gw.url}/v1/orders/{order_id}") as resp:
        assert resp.status == 502
