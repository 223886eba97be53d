"""Maintenance in-process: the admin API, covered and uncovered requests, read-only
windows, scheduled windows starting and ending, the status page and windows from the config
file (a fresh `build_app` per test; what crosses processes is in tests/system/)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from loadtest.harness import Upstreams
from tests.clients import AUTH, AVAILABILITY, Admin, request, soon
from tests.conftest import InProcess, StartApp


@pytest.fixture
async def gw(gateway_app: StartApp) -> InProcess:
    return await gateway_app(None)


@pytest.fixture
async def admin(gw: InProcess, http: aiohttp.ClientSession,
                healthy: Upstreams) -> AsyncIterator[Admin]:
    yield Admin(http, gw)


# -- the admin API --------------------------------------------------------------------------

async def test_admin_maintenance_needs_the_token(admin: Admin) -> None:
    for method, path in (("GET", "/admin/maintenance"), ("PUT", "/admin/maintenance"),
                         ("DELETE", "/admin/maintenance"), ("DELETE", "/admin/maintenance/x")):
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            status, body = await admin.call(method, path, {"scope": "all"}, headers)
            assert (status, body["code"]) == (401, "UNAUTHORIZED"), (method, path)
    assert (await admin.call("GET", "/admin/maintenance"))[1] == {"windows": []}


@pytest.mark.parametrize(("window", "fields"), [
    ({"scope": "nowhere"}, {"scope": "value_error"}),
    ({"scope": "all", "ends_at": "2001-01-01T00:00:00Z"}, {"ends_at": "future_required"}),
    ({"scope": "all", "starts_at": "soon", "read_only": "yes"},
     {"starts_at": "datetime_parsing", "read_only": "bool_type"}),
    ({"scope": "all", "message": {"en": ""}}, {"message.en": "string_too_short"}),
    ({}, {"body": "object_required"}),
])
async def test_bad_windows_get_field_errors_naming_the_rule(
        admin: Admin, window: dict[str, Any], fields: dict[str, str]) -> None:
    status, body = await admin.call("PUT", "/admin/maintenance", window)
    assert (status, body["code"]) == (422, "VALIDATION_FAILED")
    assert {e["field"]: e["type"] for e in body["errors"]} == fields


async def test_a_rule_of_the_gateways_own_reads_in_chinese_too(admin: Admin) -> None:
    status, body = await admin.call("PUT", "/admin/maintenance", {
        "scope": "all", "ends_at": "2001-01-01T00:00:00Z"}, {**AUTH, "Accept-Language": "zh-TW"})
    assert status == 422 and body["errors"][0]["message"] == "必須是未來的時間"


async def test_set_list_end_one_and_end_all(admin: Admin) -> None:
    first = await admin.put(scope="payment", ends_at=soon(600),
                            message={"en": "Payments upgrade", "zh-CN": "支付升级"})
    assert first["id"] and first["state"] == "current" and first["read_only"] is False
    assert first["message"] == {"en": "Payments upgrade", "zh-CN": "支付升级",
                                "zh-Hant": "支付升級"}  # converted when set
    second = await admin.put(scope="all", read_only=True, starts_at=soon(3600))
    assert second["state"] == "scheduled" and second["ends_at"] is None
    listed = (await admin.call("GET", "/admin/maintenance"))[1]["windows"]
    assert [w["id"] for w in listed] == [first["id"], second["id"]]
    assert await admin.call("DELETE", f"/admin/maintenance/{first['id']}") == (
        200, {"ended": [first["id"]]})
    status, body = await admin.call("DELETE", f"/admin/maintenance/{first['id']}")
    assert (status, body["code"]) == (404, "NOT_FOUND")
    assert await admin.call("DELETE", "/admin/maintenance") == (200, {"ended": [second["id"]]})
    assert (await admin.call("GET", "/admin/maintenance"))[1] == {"windows": []}


# -- what clients see -----------------------------------------------------------------------

async def test_a_covered_request_is_refused_in_the_clients_language_and_not_forwarded(
        admin: Admin, healthy: Upstreams, http: aiohttp.ClientSession, gw: InProcess) -> None:
    await admin.put(scope="order", ends_at=soon(120), message={
        "en": "Orders are paused for an upgrade.", "zh-CN": "下单系统升级中。"})
    before = healthy.stats("order")["requests"]
    status, headers, body = await request(http, gw, "POST", "/v1/orders")
    assert (status, body["code"], body["retryable"]) == (503, "MAINTENANCE", True)
    assert headers["Content-Type"] == "application/problem+json"
    assert body["announcement"] == "Orders are paused for an upgrade."
    assert 115 <= int(headers["Retry-After"]) <= 120
    status, headers, body = await request(http, gw, "GET", "/v1/orders/ord_1",
                                          **{"Accept-Language": "zh-CN"})
    assert (status, body["announcement"], headers["Content-Language"]) == (
        503, "下单系统升级中。", "zh-CN")
    assert body["title"] == "系统维护中"
    # Taiwan, Hong Kong: the announcement converted to Traditional when the window was set.
    for tag in ("zh-TW", "zh-HK,zh;q=0.8", "zh-Hant"):
        status, headers, body = await request(http, gw, "GET", "/v1/orders/ord_1",
                                              **{"Accept-Language": tag})
        assert (status, body["announcement"], headers["Content-Language"]) == (
            503, "下單系統升級中。", "zh-Hant"), tag
        assert body["title"] == "系統維護中"
    assert healthy.stats("order")["requests"] == before, "nothing reached the order backend"
    status, _, _ = await request(http, gw, "GET", AVAILABILITY)
    assert status == 200, "other backends are untouched"
    await admin.call("DELETE", "/admin/maintenance")
    status, _, _ = await request(http, gw, "POST", "/v1/orders")
    assert status == 201, "traffic resumes the moment the window ends"


async def test_open_ended_window_says_retry_after_300(
        admin: Admin, http: aiohttp.ClientSession, gw: InProcess) -> None:
    await admin.put(scope="POST /v1/payments")
    async with http.post(gw.url + "/v1/payments", headers={"Idempotency-Key": "k-300"}, json={
            "order_id": "o", "amount": 1, "currency": "CNY", "method": "card"}) as resp:
        assert (resp.status, resp.headers["Retry-After"]) == (503, "300")
        assert (await resp.json())["maintenance"]["ends_at"] is None


async def test_read_only_keeps_reads_and_refuses_writes(
        admin: Admin, http: aiohttp.ClientSession, gw: InProcess) -> None:
    await admin.put(scope="all", read_only=True, ends_at=soon(60))
    assert (await request(http, gw, "GET", AVAILABILITY))[0] == 200
    assert (await request(http, gw, "GET", "/v1/orders/ord_none"))[0] == 404
    status, _, body = await request(http, gw, "POST", "/v1/orders")
    assert (status, body["code"]) == (503, "MAINTENANCE")
    assert body["maintenance"]["read_only"] is True


async def test_a_scheduled_window_starts_and_ends_while_we_watch(
        admin: Admin, http: aiohttp.ClientSession, gw: InProcess) -> None:
    opened = time.time()
    await admin.put(scope="availability", starts_at=soon(1.5), ends_at=soon(3.5))
    seen = []
    while time.time() - opened < 5:
        seen.append((round(time.time() - opened, 2),
                     (await request(http, gw, "GET", AVAILABILITY))[0]))
        await asyncio.sleep(0.1)
    statuses = [s for _, s in seen]
    first_503 = statuses.index(503)
    last_503 = len(statuses) - 1 - statuses[::-1].index(503)
    assert set(statuses[:first_503]) == {200} and set(statuses[last_503 + 1:]) == {200}
    assert set(statuses[first_503:last_503 + 1]) == {503}
    assert 1.3 <= seen[first_503][0] <= 1.9 and 3.3 <= seen[last_503 + 1][0] <= 3.9, seen


async def test_status_page_shows_current_and_scheduled_windows(
        admin: Admin, http: aiohttp.ClientSession, gw: InProcess) -> None:
    now_window = await admin.put(scope="payment", ends_at=soon(600),
                                 message={"en": "Payments upgrade", "zh-CN": "支付升级"})
    later = await admin.put(scope="all", starts_at=soon(7200), ends_at=soon(9000))
    async with http.get(gw.url + "/v1/status") as resp:
        assert resp.headers["Cache-Control"].startswith("public, max-age=")
        status = await resp.json()
    assert status["status"] == "maintenance"
    assert [w["id"] for w in status["maintenance"]["current"]] == [now_window["id"]]
    assert [w["id"] for w in status["maintenance"]["scheduled"]] == [later["id"]]
    assert status["maintenance"]["current"][0]["message"]["zh-CN"] == "支付升级"
    assert status["maintenance"]["current"][0]["announcement"] == "Payments upgrade"
    async with http.get(gw.url + "/v1/status", headers={"Accept-Language": "zh-CN"}) as resp:
        assert resp.headers["Vary"] == "Accept-Language"
        chinese = await resp.json()
    assert chinese["maintenance"]["current"][0]["announcement"] == "支付升级"
    assert status["backends"]["payment"] == {"health": "up", "maintenance": True}
    assert status["backends"]["order"] == {"health": "up", "maintenance": False}


async def test_windows_from_the_config_file(gateway_app: StartApp, healthy: Upstreams,
                                            http: aiohttp.ClientSession) -> None:
    gateway = await gateway_app({
        "maintenance": {"windows": [{"scope": "availability", "read_only": True,
                                     "message": {"en": "Catalogue refresh"}}]}})
    assert (await request(http, gateway, "GET", AVAILABILITY))[0] == 200, "read-only"
    admin = Admin(http, gateway)
    (declared,) = (await admin.call("GET", "/admin/maintenance"))[1]["windows"]
    assert declared["source"] == "config" and declared["id"].startswith("cfg-")
    await admin.put(scope="availability", message={"en": "Full stop"})
    status, _, body = await request(http, gateway, "GET", AVAILABILITY)
    assert (status, body["announcement"]) == (503, "Full stop")
    assert (await admin.call("DELETE", "/admin/maintenance"))[0] == 200
    assert (await request(http, gateway, "GET", AVAILABILITY))[0] == 200
