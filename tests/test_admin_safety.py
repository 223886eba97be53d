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


async def test_admin_requests_are_rate_limited(log_dir: Path, upstreams: Upstreams,
                                               http: aiohttp.ClientSession) -> None:
    gw = Gateway(log_dir, upstreams.urls, env={"GATEWAY_ADMIN_TOKEN": NEW_TOKEN},
                 config={"admin": {"rate_per_s": 0.5, "burst": 4}})
    try:
        statuses = []
        # One bucket per address for the whole admin API: switching routes does not help.
        paths = ("/admin/breakers", "/admin/maintenance", "/admin/api-keys")
        for i, token in enumerate((NEW_TOKEN, "guess-1", "guess-2", NEW_TOKEN, "guess-3",
                                   NEW_TOKEN)):
            async with http.get(gw.url + paths[i % 3], headers=_bearer(token)) as resp:
                statuses.append(resp.status)
                if resp.status == 429:
                    assert (await resp.json())["code"] == "RATE_LIMITED"
                    assert int(resp.headers["Retry-After"]) >= 1
        assert statuses[:4] == [200, 401, 401, 200]
        assert statuses[4:] == [429, 429]  # guesses and SREs alike
        async with http.get(gw.url + "/v1/availability?address=a&product=b") as resp:
            assert resp.status == 200  # the public API is not affected
    finally:
        gw.stop()
