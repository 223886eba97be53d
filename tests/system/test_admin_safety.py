"""The admin API: its own listener, rotated tokens, a rate limit, and an audit line per
action saying who did what, before and after."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from loadtest.harness import Gateway, Upstreams, free_port

NEW_TOKEN = "new-admin-token-0123456789abcdef"
OLD_TOKEN = "old-admin-token-0123456789abcdef"


@pytest.fixture(scope="module")
def rotating(log_dir: Path, upstreams: Upstreams) -> Iterator[tuple[Gateway, str]]:
    admin_port = free_port()
    gw = Gateway(log_dir, upstreams.urls, env={
        "GATEWAY_ADMIN_TOKEN": NEW_TOKEN, "GATEWAY_ADMIN_TOKEN_PREVIOUS": OLD_TOKEN,
        "GATEWAY_ADMIN_PORT": str(admin_port)})
    yield gw, f"http://127.0.0.1:{admin_port}"
    gw.stop()


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_admin_routes_live_on_their_own_port_only(
        rotating: tuple[Gateway, str], http: aiohttp.ClientSession) -> None:
    gw, admin_url = rotating
    async with http.get(gw.url + "/admin/breakers", headers=_bearer(NEW_TOKEN)) as resp:
        assert resp.status == 404
        assert (await resp.json())["code"] == "NOT_FOUND"
    async with http.get(admin_url + "/admin/breakers", headers=_bearer(NEW_TOKEN)) as resp:
        assert resp.status == 200
    async with http.get(gw.url + "/v1/availability?address=a&product=b") as resp:
        assert resp.status == 200


@pytest.mark.parametrize(("headers", "status"), [
    (_bearer(NEW_TOKEN), 200), (_bearer(OLD_TOKEN), 200),
    ({"Authorization": f"bearer {NEW_TOKEN}"}, 200),
    (_bearer(NEW_TOKEN[:-1]), 401), (_bearer(NEW_TOKEN + OLD_TOKEN), 401),
    ({"Authorization": NEW_TOKEN}, 401), ({"Authorization": f"Basic {NEW_TOKEN}"}, 401), ({}, 401),
])
async def test_both_tokens_work_during_a_rotation(rotating: tuple[Gateway, str],
                                                  http: aiohttp.ClientSession,
                                                  headers: dict[str, str], status: int) -> None:
    async with http.get(rotating[1] + "/admin/maintenance", headers=headers) as resp:
        assert resp.status == status
        if status == 401:
            assert (await resp.json())["code"] == "UNAUTHORIZED"
            assert resp.headers["WWW-Authenticate"].startswith("Bearer")


def _audit_lines(gw: Gateway) -> list[dict[str, Any]]:
    lines = []
    for line in gw.proc.log_text().splitlines():
        if line.startswith("{") and '"audit":true' in line:
            lines.append(orjson.loads(line))
    return lines


async def test_every_action_is_audited_with_who_what_before_and_after(
        rotating: tuple[Gateway, str], http: aiohttp.ClientSession) -> None:
    gw, admin_url = rotating
    async with http.put(admin_url + "/admin/breakers/payment", json={"minimum_calls": 7},
                        headers={**_bearer(OLD_TOKEN), "X-Admin-Actor": "sre.alice"}) as resp:
        assert resp.status == 200
    async with http.post(admin_url + "/admin/breakers/payment/open",
                         headers=_bearer(NEW_TOKEN)) as resp:
        assert resp.status == 200
    async with http.post(admin_url + "/admin/breakers/payment/reset",
                         headers=_bearer(NEW_TOKEN)) as resp:
        assert resp.status == 200
    async with http.put(admin_url + "/admin/maintenance", headers=_bearer(NEW_TOKEN),
                        json={"scope": "payment", "message": {"en": "upgrade"}}) as resp:
        window = await resp.json()
    async with http.delete(admin_url + f"/admin/maintenance/{window['id']}",
                           headers=_bearer(NEW_TOKEN)) as resp:
        assert resp.status == 200
    async with http.get(admin_url + "/admin/breakers", headers=_bearer("guess")) as resp:
        assert resp.status == 401
    lines = {line["action"]: line for line in _audit_lines(gw)}
    settings = lines["breaker.settings"]
    assert settings["who"]["token"] == "previous" and settings["who"]["actor"] == "sre.alice"
    assert settings["who"]["remote"] == "127.0.0.1"
    assert len(settings["who"]["token_fingerprint"]) == 8
    assert settings["before"]["minimum_calls"] == 10 and settings["after"]["minimum_calls"] == 7
    assert (lines["breaker.open"]["before"], lines["breaker.open"]["after"]) == ("closed", "open")
    assert lines["breaker.open"]["who"]["token"] == "current"
    assert lines["maintenance.set"]["before"] is None
    assert lines["maintenance.set"]["after"]["id"] == window["id"]
    assert lines["maintenance.end"]["before"]["id"] == window["id"]
    assert lines["maintenance.end"]["after"] is None
    assert "admin.denied" in lines
    log = gw.proc.log_text()
    assert NEW_TOKEN not in log and OLD_TOKEN not in log and "guess" not in log


async def test_guesses_are_throttled_and_never_lock_out_the_right_token(
        log_dir: Path, upstreams: Upstreams, http: aiohttp.ClientSession) -> None:
    gw = Gateway(log_dir, upstreams.urls, env={"GATEWAY_ADMIN_TOKEN": NEW_TOKEN},
                 config={"admin": {"rate_per_s": 0.5, "burst": 4}})
    try:
        statuses = []
        # One bucket of failures per address for the whole admin API: switching routes
        # does not help a guesser.
        paths = ("/admin/breakers", "/admin/maintenance", "/admin/api-keys")
        for i in range(6):
            async with http.get(gw.url + paths[i % 3], headers=_bearer(f"guess-{i}")) as resp:
                statuses.append(resp.status)
                if resp.status == 429:
                    assert (await resp.json())["code"] == "RATE_LIMITED"
                    assert int(resp.headers["Retry-After"]) >= 1
        assert statuses == [401, 401, 401, 401, 429, 429]
        # The SRE at the same address (behind the same NAT) is not refused for them.
        for path in paths:
            async with http.get(gw.url + path, headers=_bearer(NEW_TOKEN)) as resp:
                assert resp.status == 200
        async with http.get(gw.url + "/v1/availability?address=a&product=b") as resp:
            assert resp.status == 200  # the public API is not affected
        log = gw.proc.log_text()
        assert log.count('"action":"admin.denied"') == 4, "each refusal audited, not each 429"
    finally:
        gw.stop()


async def test_the_bypass_is_throttled_audited_and_honoured_only_on_the_admin_listener(
        rotating: tuple[Gateway, str], http: aiohttp.ClientSession) -> None:
    gw, admin_url = rotating
    async with http.put(admin_url + "/admin/maintenance", headers=_bearer(NEW_TOKEN),
                        json={"scope": "GET /v1/orders/{order_id}"}) as resp:
        assert resp.status == 200
        window = await resp.json()

    async def read(base: str, bypass: str) -> int:
        async with http.get(base + "/v1/orders/ord_none",
                            headers={"X-Maintenance-Bypass": bypass}) as resp:
            return resp.status

    try:
        # The public port never honours it while the admin listener is a separate one.
        assert await read(gw.url, NEW_TOKEN) == 503
        assert await read(admin_url, NEW_TOKEN) == 404  # through, to the backend's 404
        # The default allowance (admin.burst 200, refilled at 50/s): guess until refused.
        statuses = [await read(admin_url, "guess-0")]
        while statuses[-1] == 503 and len(statuses) < 3000:
            statuses.append(await read(admin_url, f"guess-{len(statuses)}"))
        assert statuses[0] == 503 and statuses[-1] == 429, statuses[-5:]
        assert await read(admin_url, NEW_TOKEN) == 404, "the right token still passes"
        assert '"action":"maintenance_bypass.denied"' in gw.proc.log_text()
    finally:
        async with http.delete(admin_url + f"/admin/maintenance/{window['id']}",
                               headers=_bearer(NEW_TOKEN)) as resp:
            assert resp.status == 200
