"""Client API keys: who may call, as whom (idempotency scope, rate-limit tier), and
keys rotated through the admin API on every replica without a restart."""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from loadtest.harness import Gateway, RedisServer, Upstreams
from tests.conftest import ADMIN_TOKEN, GOOD_ORDER, StartApp

WEB_KEY = "ogk_web_" + "w" * 40
READER_KEY = "ogk_reader_" + "r" * 40
AVAILABILITY = "/v1/availability?address=Beijing&product=fiber"


def _sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


CONFIG: dict[str, Any] = {
    "auth": {"api_keys": [
        {"client_id": "web-shop", "key_sha256": _sha(WEB_KEY)},
        {"client_id": "status-board", "key_sha256": _sha(READER_KEY), "role": "reader",
         "tier": "slow"},
    ]},
    "rate_limit": {"tiers": {"slow": {"rate_per_s": 0.2, "burst": 3}}},
    "redis": {"sync_interval_s": 0.2},
}


@pytest.fixture(scope="module")
def pair(log_dir: Path, upstreams: Upstreams,
         redis_server: RedisServer) -> Iterator[tuple[Gateway, Gateway]]:
    env = {"GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN, "GATEWAY_REDIS_URL": redis_server.url}
    first = Gateway(log_dir, upstreams.urls, config=CONFIG, env=env)
    second = Gateway(log_dir, upstreams.urls, config=CONFIG, env=env)
    yield first, second
    first.stop()
    second.stop()


def _order_headers(key: str | None, **extra: str) -> dict[str, str]:
    headers = {"Idempotency-Key": str(uuid.uuid4()), **extra}
    if key is not None:
        headers["X-API-Key"] = key
    return headers


@pytest.mark.parametrize("sent", [None, "", "wrong-key", WEB_KEY + "x", WEB_KEY.upper(),
                                  "x" * 5000, _sha(WEB_KEY)])
async def test_public_routes_need_a_valid_key(pair: tuple[Gateway, Gateway],
                                              upstreams: Upstreams, http: aiohttp.ClientSession,
                                              sent: str | None) -> None:
    gw = pair[0]
    before = upstreams.stats("order")["requests"]
    for method, path, body in (("GET", AVAILABILITY, None), ("POST", "/v1/orders", GOOD_ORDER),
                               ("GET", "/v1/orders/ord_1", None)):
        async with http.request(method, gw.url + path, json=body,
                                headers=_order_headers(sent)) as resp:
            assert resp.status == 401
            assert (await resp.json())["code"] == "UNAUTHORIZED"
            assert "X-API-Key" in resp.headers["WWW-Authenticate"]
    assert upstreams.stats("order")["requests"] == before
    async with http.get(gw.url + "/healthz") as resp:  # operational routes stay open
        assert resp.status == 200


async def test_the_key_names_the_client_and_x_client_id_is_ignored(
        pair: tuple[Gateway, Gateway], upstreams: Upstreams,
        http: aiohttp.ClientSession) -> None:
    gw = pair[0]
    key = str(uuid.uuid4())
    async with http.post(gw.url + "/v1/orders", json=GOOD_ORDER, headers={
            "X-API-Key": WEB_KEY, "Idempotency-Key": key, "X-Client-ID": "someone-else"}) as resp:
        assert resp.status == 201
        first = await resp.read()
    assert upstreams.stats("order")["last_request"]["headers"]["X-Client-ID"] == "web-shop"
    # Another X-Client-ID is still the same client: the same key replays.
    async with http.post(gw.url + "/v1/orders", json=GOOD_ORDER, headers={
            "X-API-Key": WEB_KEY, "Idempotency-Key": key, "X-Client-ID": "third"}) as resp:
        assert resp.status == 201
        assert resp.headers["Idempotent-Replayed"] == "true"
        assert await resp.read() == first


async def test_a_reader_may_read_but_not_write(pair: tuple[Gateway, Gateway],
                                               upstreams: Upstreams,
                                               http: aiohttp.ClientSession) -> None:
    gw = pair[1]
    before = upstreams.stats("order")["requests"]
    async with http.post(gw.url + "/v1/orders", json=GOOD_ORDER,
                         headers=_order_headers(READER_KEY)) as resp:
        assert resp.status == 403
        problem = await resp.json()
        assert problem["code"] == "FORBIDDEN" and "status-board" in problem["detail"]
    assert upstreams.stats("order")["requests"] == before
    async with http.get(gw.url + AVAILABILITY, headers={"X-API-Key": READER_KEY}) as resp:
        assert resp.status == 200


async def test_the_rate_limit_follows_the_keys_tier(pair: tuple[Gateway, Gateway],
                                                    http: aiohttp.ClientSession) -> None:
    statuses = []
    for _ in range(6):
        async with http.get(pair[0].url + AVAILABILITY, headers={"X-API-Key": READER_KEY}) as resp:
            statuses.append(resp.status)
            if resp.status == 429:
                assert (await resp.json())["code"] == "RATE_LIMITED"
    assert 429 in statuses  # the slow tier's burst is 3 (one spent by the reader test)
    for _ in range(6):  # the default tier (no limit configured) is not limited
        async with http.get(pair[0].url + AVAILABILITY, headers={"X-API-Key": WEB_KEY}) as resp:
            assert resp.status == 200


async def _status_with(http: aiohttp.ClientSession, gw: Gateway, key: str) -> int:
    async with http.get(gw.url + AVAILABILITY, headers={"X-API-Key": key}) as resp:
        return resp.status


async def _until(check: Any, want: int, timeout_s: float = 3.0) -> float:
    started = time.monotonic()
    while (got := await check()) != want:
        assert time.monotonic() - started < timeout_s, got
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def test_keys_rotate_through_the_admin_api_on_every_replica(
        pair: tuple[Gateway, Gateway], http: aiohttp.ClientSession) -> None:
    first, second = pair
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with http.post(first.url + "/admin/api-keys", headers=admin,
                         json={"client_id": "mobile-app", "tier": "slow"}) as resp:
        assert resp.status == 201
        added = await resp.json()
    new_key = added["key"]
    assert added["client_id"] == "mobile-app" and added["source"] == "admin"
    assert added["key_id"] == _sha(new_key)[:12]
    await _until(lambda: _status_with(http, second, new_key), 200)
    async with http.get(second.url + "/admin/api-keys", headers=admin) as resp:
        listed = (await resp.json())["api_keys"]
    assert {k["client_id"] for k in listed} == {"web-shop", "status-board", "mobile-app"}
    assert all("key" not in k and "key_sha256" not in k for k in listed)
    async with http.post(first.url + "/admin/api-keys", headers=admin,
                         json={"client_id": "x", "tier": "platinum"}) as resp:
        assert resp.status == 422
    async with http.delete(second.url + f"/admin/api-keys/{added['key_id']}",
                           headers=admin) as resp:
        assert resp.status == 200
    await _until(lambda: _status_with(http, first, new_key), 401)
    async with http.delete(first.url + f"/admin/api-keys/{_sha(WEB_KEY)[:12]}",
                           headers=admin) as resp:
        assert resp.status == 404  # config keys go with a config change
    log = first.proc.log_text() + second.proc.log_text()
    assert new_key not in log and WEB_KEY not in log and READER_KEY not in log
    assert '"action":"api_key.add"' in log and '"action":"api_key.revoke"' in log


async def test_a_key_added_while_keys_are_not_required_is_refused_naming_the_setting(
        gateway_app: StartApp, http: aiohttp.ClientSession) -> None:
    gw = await gateway_app(None)  # the defaults: no keys configured, auth.required false
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with http.post(gw.url + "/admin/api-keys", headers=admin,
                         json={"client_id": "mobile-app"}) as resp:
        assert resp.status == 409
        body = await resp.json(content_type=None)
    assert body["code"] == "SETTING_CONFLICT" and body["setting"] == "auth.required"
    assert "auth.required" in body["detail"]
    async with http.get(gw.url + "/admin/api-keys", headers=admin) as resp:
        assert (await resp.json())["api_keys"] == []


async def test_wrong_keys_are_throttled_per_address_and_the_right_one_still_passes(
        gateway_app: StartApp, http: aiohttp.ClientSession) -> None:
    gw = await gateway_app({"auth": CONFIG["auth"], "rate_limit": CONFIG["rate_limit"],
                            "admin": {"rate_per_s": 0.5, "burst": 3}})

    async def status(key: str) -> int:
        async with http.get(gw.url + AVAILABILITY, headers={"X-API-Key": key}) as resp:
            return resp.status

    assert [await status(f"ogk_guess_{i}") for i in range(5)] == [401, 401, 401, 429, 429]
    assert await status(WEB_KEY) == 200, "a valid key is never refused for others' guesses"
    # Odd bytes in a key are no key: 401 (here 429, the address's allowance being spent),
    # never a 500.
    async with http.get(gw.url + AVAILABILITY, headers={"X-API-Key": "ogk_é"}) as resp:
        assert resp.status == 429
    async with http.get(gw.url + "/v1/queue/1.x", headers={"X-API-Key": "guess"}) as resp:
        assert resp.status == 429, "the waiting room's poll checks keys the same way"
