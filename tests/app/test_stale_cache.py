"""Stale availability through the gateway in-process: a recent answer, marked, instead of an
error (a failing backend, an open breaker); never past its age; never for orders or
payments."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import aiohttp
import pytest

from loadtest.harness import Upstreams
from tests.conftest import ADMIN_TOKEN, InProcess, StartApp


@pytest.fixture
async def gw(gateway_app: StartApp) -> InProcess:
    return await gateway_app({"stale_cache": {"max_age_s": 1.5}})


async def _breaker(http: aiohttp.ClientSession, gw: InProcess, action: str) -> None:
    async with http.post(f"{gw.url}/admin/breakers/availability/{action}",
                         headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as resp:
        assert resp.status == 200


@dataclass
class Got:
    status: int
    headers: dict[str, str]
    body: bytes


async def _get(http: aiohttp.ClientSession, gw: InProcess, address: str) -> Got:
    async with http.get(gw.url + "/v1/availability",
                        params={"address": address, "product": "fiber-500"}) as resp:
        return Got(resp.status, dict(resp.headers), await resp.read())


async def test_backend_failure_and_open_breaker_serve_the_stale_answer_until_max_age(
        gw: InProcess, healthy: Upstreams, http: aiohttp.ClientSession) -> None:
    fresh = await _get(http, gw, "Hangzhou 1")
    assert fresh.status == 200 and "X-Gateway-Stale" not in fresh.headers
    healthy.set_faults("availability", error_rate=1.0)
    stale = await _get(http, gw, "Hangzhou 1")
    assert (stale.status, stale.headers["X-Gateway-Stale"]) == (200, "true")
    assert stale.body == fresh.body
    assert (await _get(http, gw, "Hangzhou 2")).status == 502, "never asked: no answer kept"
    healthy.heal()
    await _breaker(http, gw, "open")
    assert (await _get(http, gw, "Hangzhou 1")).headers["X-Gateway-Stale"] == "true"
    await asyncio.sleep(1.6)
    too_old = await _get(http, gw, "Hangzhou 1")
    assert too_old.status == 503
    async with http.get(gw.url + "/metrics") as resp:
        assert 'gateway_stale_served_total{route="/v1/availability"} 2.0' in await resp.text()
    await _breaker(http, gw, "reset")


async def test_orders_and_payments_are_never_served_stale(
        gw: InProcess, healthy: Upstreams, http: aiohttp.ClientSession) -> None:
    async with http.post(gw.url + "/v1/orders", headers={"Idempotency-Key": "stale-o1"}, json={
            "customer": {"name": "Li", "phone": "13800138000", "id_number": "11010519491231002X"},
            "product": "fiber-500", "address": "Hangzhou 3"}) as resp:
        order_id = (await resp.json())["order_id"]
    async with http.get(f"{gw.url}/v1/orders/{order_id}") as resp:
        assert resp.status == 200
    healthy.set_faults("order", error_rate=1.0)
    async with http.get(f"{gw.url}/v1/orders/{order_id}") as resp:
        assert resp.status == 502
