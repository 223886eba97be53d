"""Breakers end to end: real gateway processes in front of the simulators, and the admin API."""

from __future__ import annotations

import asyncio
import re
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from loadtest.harness import Gateway, RedisServer, Upstreams
from tests.conftest import ADMIN_TOKEN, NO_STALE_ANSWERS, admin_gateway

AVAILABILITY = "/v1/availability?address=Beijing&product=fiber"
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
BASE = {"failure_rate_threshold": 0.5, "slow_call_duration_ms": 2000,
        "slow_call_rate_threshold": 0.8, "minimum_calls": 10, "window_seconds": 30,
        "consecutive_failures": 5, "open_seconds": 1.0, "half_open_calls": 2}


@pytest.fixture(scope="module")
def gw(log_dir: Path, upstreams: Upstreams) -> Iterator[Gateway]:
    with admin_gateway(log_dir, upstreams, NO_STALE_ANSWERS) as gateway:
        yield gateway


@pytest.fixture(autouse=True)
def closed_breakers(gw: Gateway) -> Iterator[None]:
    """Every test starts and ends with this module's gateway's breakers back to automatic."""
    gw.reset_breakers(ADMIN_TOKEN)
    yield
    gw.reset_breakers(ADMIN_TOKEN)


async def configure(http: aiohttp.ClientSession, gw: Gateway, name: str, **changes: Any) -> None:
    async with http.put(f"{gw.url}/admin/breakers/{name}", json=BASE | changes,
                        headers=AUTH) as resp:
        assert resp.status == 200, await resp.text()
    async with http.post(f"{gw.url}/admin/breakers/{name}/reset", headers=AUTH) as resp:
        assert resp.status == 200


async def breaker(http: aiohttp.ClientSession, gw: Gateway, name: str) -> dict[str, Any]:
    async with http.get(gw.url + "/admin/breakers", headers=AUTH) as resp:
        assert resp.status == 200
        found: dict[str, Any] = next(b for b in (await resp.json())["breakers"]
                                     if b["name"] == name)
        return found


async def get_status(http: aiohttp.ClientSession, url: str) -> tuple[int, str | None, float]:
    started = time.monotonic()
    async with http.get(url) as resp:
        body = await resp.json()
        return resp.status, body.get("code"), time.monotonic() - started


async def test_error_rate_one_trips_and_open_breaker_spares_the_backend(
        gw: Gateway, healthy: Upstreams, http: aiohttp.ClientSession) -> None:
    await configure(http, gw, "availability", open_seconds=30.0)
    healthy.set_faults("availability", error_rate=1.0)
    before = healthy.stats("availability")["requests"]
    codes = []
    for _ in range(10):
        _status, code, _ = await get_status(http, gw.url + AVAILABILITY)
        codes.append(code)
        if code == "CIRCUIT_OPEN":
            break
    assert codes == ["UPSTREAM_UNAVAILABLE"] * 5 + ["CIRCUIT_OPEN"]
    assert healthy.stats("availability")["requests"] - before == 5
    timings = []
    for _ in range(30):
        started = time.monotonic()
        async with http.get(gw.url + AVAILABILITY) as resp:
            assert resp.status == 503
            assert (await resp.json())["code"] == "CIRCUIT_OPEN"
            assert 1 <= int(resp.headers["Retry-After"]) <= 30
        timings.append(time.monotonic() - started)
    assert healthy.stats("availability")["requests"] - before == 5  # not one more call
    assert statistics.median(timings) < 0.05
    state = await breaker(http, gw, "availability")
    assert state["state"] == "open" and state["window"]["opened_at"] is not None


async def test_healed_backend_closes_through_a_bounded_number_of_probes(
        gw: Gateway, healthy: Upstreams, http: aiohttp.ClientSession) -> None:
    await configure(http, gw, "availability", open_seconds=1.0, half_open_calls=2)
    healthy.set_faults("availability", error_rate=1.0)
    for _ in range(5):
        await get_status(http, gw.url + AVAILABILITY)
    assert (await breaker(http, gw, "availability"))["state"] == "open"
    # Healed, but slow enough that concurrent callers find the probes still in flight.
    healthy.set_faults("availability", error_rate=0.0, latency_ms=300)
    await asyncio.sleep(1.1)
    before = healthy.stats("availability")["requests"]
    results = await asyncio.gather(*(get_status(http, gw.url + AVAILABILITY)
                                     for _ in range(20)))
    assert healthy.stats("availability")["requests"] - before == 2
    assert sorted(code or "ok" for _, code, _ in results) == ["CIRCUIT_OPEN"] * 18 + ["ok"] * 2
    assert (await breaker(http, gw, "availability"))["state"] == "closed"
    status, _, _ = await get_status(http, gw.url + AVAILABILITY)
    assert status == 200


async def test_forty_percent_errors_trip_the_rate_rule(
        gw: Gateway, healthy: Upstreams, http: aiohttp.ClientSession) -> None:
    await configure(http, gw, "availability", failure_rate_threshold=0.3, minimum_calls=20,
                    consecutive_failures=50, open_seconds=30.0)
    healthy.set_faults("availability", error_rate=0.4)
    calls = 0
    for _ in range(200):
        _, code, _ = await get_status(http, gw.url + AVAILABILITY)
        if code == "CIRCUIT_OPEN":
            break
        calls += 1
    assert 20 <= calls < 200
    async with http.get(gw.url + "/metrics") as resp:
        metrics = await resp.text()
    assert re.search(r'gateway_breaker_transitions_total\{backend="availability",'
                     r'from_state="closed",reason="failure_rate",to_state="open"\} [1-9]', metrics)
    assert 'gateway_breaker_state{backend="availability"} 2.0' in metrics


async def test_slow_calls_trip_the_slow_call_rule(
        gw: Gateway, healthy: Upstreams, http: aiohttp.ClientSession) -> None:
    await configure(http, gw, "availability", slow_call_duration_ms=150,
                    slow_call_rate_threshold=0.5, minimum_calls=5, open_seconds=30.0)
    healthy.set_faults("availability", latency_ms=250)
    statuses = [(await get_status(http, gw.url + AVAILABILITY))[:2] for _ in range(6)]
    assert statuses == [(200, None)] * 5 + [(503, "CIRCUIT_OPEN")]
    assert (await breaker(http, gw, "availability"))["window"]["slow_calls"] == 5


async def test_one_open_breaker_leaves_other_backends_alone(
        gw: Gateway, healthy: Upstreams, http: aiohttp.ClientSession) -> None:
    async with http.post(gw.url + "/admin/breakers/payment/open", headers=AUTH) as resp:
        assert resp.status == 200
        assert (await resp.json())["state"] == "open"
    try:
        async with http.post(gw.url + "/v1/payments", headers={"Idempotency-Key": "k"}, json={
                "order_id": "o", "amount": 1, "currency": "CNY", "method": "card"}) as resp:
            assert resp.status == 503
            assert (await resp.json())["code"] == "CIRCUIT_OPEN"
        status, _, _ = await get_status(http, gw.url + AVAILABILITY)
        assert status == 200
        status, code, _ = await get_status(http, gw.url + "/v1/orders/ord_none")
        assert (status, code) == (404, "ORDER_NOT_FOUND")
        async with http.get(gw.url + "/v1/status") as resp:
            backends = (await resp.json())["backends"]
        assert backends["payment"]["health"] == "down"
        assert backends["order"]["health"] == "up"
    finally:
        async with http.post(gw.url + "/admin/breakers/payment/reset", headers=AUTH) as resp:
            assert resp.status == 200


async def test_forced_states_are_sticky_and_reset_returns_to_automatic(
        gw: Gateway, healthy: Upstreams, http: aiohttp.ClientSession) -> None:
    await configure(http, gw, "availability", consecutive_failures=1, open_seconds=0.2)
    async with http.post(gw.url + "/admin/breakers/availability/close", headers=AUTH) as resp:
        assert (await resp.json())["forced"] == "closed"
    healthy.set_faults("availability", error_rate=1.0)
    for _ in range(5):
        status, code, _ = await get_status(http, gw.url + AVAILABILITY)
        assert code == "UPSTREAM_UNAVAILABLE"  # forced closed: failures never trip it
    healthy.heal()
    async with http.post(gw.url + "/admin/breakers/availability/open", headers=AUTH) as resp:
        assert (await resp.json())["forced"] == "open"
    await asyncio.sleep(0.4)  # longer than open_seconds: still no probe while forced
    status, code, _ = await get_status(http, gw.url + AVAILABILITY)
    assert (status, code) == (503, "CIRCUIT_OPEN")
    async with http.post(gw.url + "/admin/breakers/availability/reset", headers=AUTH) as resp:
        snapshot = await resp.json()
    assert snapshot["state"] == "closed" and snapshot["forced"] is None
    assert snapshot["window"]["calls"] == 0
    status, _, _ = await get_status(http, gw.url + AVAILABILITY)
    assert status == 200


async def test_runtime_setting_takes_effect_on_the_next_call(
        gw: Gateway, healthy: Upstreams, http: aiohttp.ClientSession) -> None:
    await configure(http, gw, "availability", open_seconds=30.0)
    async with http.put(gw.url + "/admin/breakers/availability",
                        json={"consecutive_failures": 1}, headers=AUTH) as resp:
        assert resp.status == 200
        assert (await resp.json())["consecutive_failures"] == 1
    healthy.set_faults("availability", error_rate=1.0)
    assert (await get_status(http, gw.url + AVAILABILITY))[1] == "UPSTREAM_UNAVAILABLE"
    assert (await get_status(http, gw.url + AVAILABILITY))[1] == "CIRCUIT_OPEN"


@pytest.mark.parametrize(("headers", "status"), [
    ({}, 401), ({"Authorization": "Bearer wrong"}, 401), ({"Authorization": ADMIN_TOKEN}, 401),
])
async def test_admin_needs_the_token(gw: Gateway, http: aiohttp.ClientSession,
                                     headers: dict[str, str], status: int) -> None:
    for method, path in (("GET", "/admin/breakers"), ("POST", "/admin/breakers/order/open"),
                         ("PUT", "/admin/breakers/order")):
        async with http.request(method, gw.url + path, headers=headers, json={}) as resp:
            assert resp.status == status
            assert (await resp.json())["code"] == "UNAUTHORIZED"
    assert (await breaker(http, gw, "order"))["state"] == "closed"


@pytest.mark.parametrize(("body", "fields"), [
    ({"failure_rate_threshold": 2}, {"failure_rate_threshold"}),
    ({"minimum_calls": 0, "open_seconds": "soon"}, {"minimum_calls", "open_seconds"}),
    ({"colour": "red"}, {"colour"}),
    ([1, 2], {"body"}),
    ({}, {"body"}),
])
async def test_admin_settings_are_validated(gw: Gateway, http: aiohttp.ClientSession,
                                            body: Any, fields: set[str]) -> None:
    before = (await breaker(http, gw, "order"))["settings"]
    async with http.put(gw.url + "/admin/breakers/order", json=body, headers=AUTH) as resp:
        assert resp.status == 422
        problem = await resp.json()
    assert problem["code"] == "VALIDATION_FAILED"
    assert {e["field"] for e in problem["errors"]} == fields
    assert (await breaker(http, gw, "order"))["settings"] == before


async def test_admin_unknown_breaker_and_bad_json(gw: Gateway,
                                                  http: aiohttp.ClientSession) -> None:
    async with http.post(gw.url + "/admin/breakers/nope/open", headers=AUTH) as resp:
        assert resp.status == 404
        assert (await resp.json())["code"] == "NOT_FOUND"
    async with http.put(gw.url + "/admin/breakers/order", data=b"{oops",
                        headers={**AUTH, "Content-Type": "application/json"}) as resp:
        assert resp.status == 400
        assert (await resp.json())["code"] == "MALFORMED_JSON"


async def test_listing_shows_state_settings_and_window(gw: Gateway,
                                                       http: aiohttp.ClientSession) -> None:
    async with http.get(gw.url + "/admin/breakers", headers=AUTH) as resp:
        listing = (await resp.json())["breakers"]
    assert {b["name"] for b in listing} == {"order", "payment", "availability"}
    for item in listing:
        assert item["state"] in ("closed", "open", "half_open")
        assert set(item["settings"]) == set(BASE)
        assert {"calls", "failure_rate", "slow_call_rate", "opened_at"} <= set(item["window"])


async def test_admin_api_is_absent_without_a_token(log_dir: Path, upstreams: Upstreams,
                                                   http: aiohttp.ClientSession) -> None:
    plain = Gateway(log_dir, upstreams.urls)
    try:
        async with http.get(plain.url + "/admin/breakers", headers=AUTH) as resp:
            assert resp.status == 404
            assert (await resp.json())["code"] == "NOT_FOUND"
    finally:
        plain.stop()


async def test_settings_and_forced_states_reach_another_process_through_redis(
        log_dir: Path, upstreams: Upstreams, redis_server: RedisServer,
        http: aiohttp.ClientSession) -> None:
    env = {"GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN, "GATEWAY_REDIS_URL": redis_server.url}
    first = Gateway(log_dir, upstreams.urls, env=env)
    second = Gateway(log_dir, upstreams.urls, env=env)
    try:
        async with http.put(first.url + "/admin/breakers/payment",
                            json={"open_seconds": 42.0}, headers=AUTH) as resp:
            assert resp.status == 200
        async with http.post(first.url + "/admin/breakers/order/open", headers=AUTH) as resp:
            assert resp.status == 200
        started = time.monotonic()
        while time.monotonic() - started < 1.5:
            payment = await breaker(http, second, "payment")
            order = await breaker(http, second, "order")
            if payment["settings"]["open_seconds"] == 42.0 and order["state"] == "open":
                break
            await asyncio.sleep(0.05)
        assert payment["settings"]["open_seconds"] == 42.0
        assert order["state"] == "open" and order["forced"] == "open"
        assert time.monotonic() - started < 1.0
        status, code, _ = await get_status(http, second.url + "/v1/orders/ord_1")
        assert (status, code) == (503, "CIRCUIT_OPEN")
        async with http.post(second.url + "/admin/breakers/order/reset", headers=AUTH) as resp:
            assert resp.status == 200
        await asyncio.sleep(1.0)
        assert (await breaker(http, first, "order"))["state"] == "closed"
    finally:
        first.stop()
        second.stop()
