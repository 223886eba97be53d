"""Small HTTP clients the tests share at both levels (a gateway in-process or a process:
anything with a `url`): the admin API, a request with its answer, a burst of reads, and the
checks every backend failure's problem answer must pass."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import Any, Protocol

import aiohttp

from tests.conftest import ADMIN_TOKEN, GOOD_ORDER

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
AVAILABILITY = "/v1/availability?address=Beijing%201&product=fiber-500"


class Served(Protocol):
    @property
    def url(self) -> str: ...


def soon(seconds: float) -> str:
    return datetime.fromtimestamp(time.time() + seconds, UTC).isoformat()


class Admin:
    def __init__(self, http: aiohttp.ClientSession, gw: Served) -> None:
        self.http, self.gw = http, gw

    async def call(self, method: str, path: str, body: Any = None,
                   headers: dict[str, str] | None = None) -> tuple[int, Any]:
        async with self.http.request(method, self.gw.url + path,
                                     headers=AUTH if headers is None else headers,
                                     json=body) as resp:
            return resp.status, await resp.json(content_type=None)

    async def put(self, **window: Any) -> dict[str, Any]:
        status, body = await self.call("PUT", "/admin/maintenance", window)
        assert status == 200, body
        return dict(body)


async def request(http: aiohttp.ClientSession, gw: Served, method: str, path: str,
                  **headers: str) -> tuple[int, dict[str, str], Any]:
    body = GOOD_ORDER if method == "POST" else None
    if method == "POST":
        headers.setdefault("Idempotency-Key", str(uuid.uuid4()))
    async with http.request(method, gw.url + path, json=body, headers=headers) as resp:
        return resp.status, dict(resp.headers), await resp.json(content_type=None)


# One token a second: slow enough that a busy machine cannot refill a bucket mid-test.
LIMITS = {"rate_limit": {"rate_per_s": 1.0, "burst": 6}}


async def statuses(http: aiohttp.ClientSession, gw: Served, n: int,
                   client: str) -> list[tuple[int, str | None, str | None]]:
    got = []
    for _ in range(n):
        async with http.get(gw.url + AVAILABILITY, headers={"X-Client-ID": client}) as resp:
            body = await resp.json()
            got.append((resp.status, body.get("code"), resp.headers.get("Retry-After")))
    return got


TIMEOUT_S = 1.0  # the suite's backend timeout (loadtest/harness.py SHORT_TIMEOUTS)
MARGIN_S = 0.5


async def check_problem(resp: aiohttp.ClientResponse, status: int, code: str, lang: str,
                         started: float) -> dict[str, Any]:
    elapsed = time.monotonic() - started
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/problem+json"
    body: dict[str, Any] = await resp.json()
    assert body["code"] == code
    assert body["status"] == status
    assert body["retryable"] is True
    assert body["request_id"] == resp.headers["X-Request-ID"]
    assert body["type"].startswith("https://errors.order-gateway.dev/")
    assert int(resp.headers["Retry-After"]) >= 1
    assert resp.headers["Content-Language"] == lang
    if lang == "zh-CN":
        assert any("\u4e00" <= ch <= "\u9fff" for ch in body["title"] + body["hint"])
    else:
        assert body["title"].isascii() and body["hint"].isascii()
    assert "Traceback" not in str(body)
    assert elapsed < TIMEOUT_S + MARGIN_S, f"answered after {elapsed:.2f}s"
    return body
