"""Browsers: CORS from an allow-list (preflights answered here, never forwarded) and
security headers on every answer."""

from __future__ import annotations

import uuid

import aiohttp
import pytest

from loadtest.harness import Upstreams
from tests.conftest import ADMIN_TOKEN, GOOD_ORDER, InProcess, StartApp

SHOP = "https://shop.example.com"
ELSEWHERE = "https://evil.example.net"
AVAILABILITY = "/v1/availability?address=Beijing&product=fiber"
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "Strict-Transport-Security": "max-age=31536000",
}


@pytest.fixture
async def gw(gateway_app: StartApp) -> InProcess:
    return await gateway_app({"cors": {"allow_origins": [SHOP, "http://localhost:3000"]},
                              "security_headers": {"hsts_max_age_s": 31536000}})


def _preflight(origin: str, method: str = "POST") -> dict[str, str]:
    return {"Origin": origin, "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": "content-type, idempotency-key, x-api-key"}


async def test_a_preflight_from_an_allowed_origin_is_answered_here(
        gw: InProcess, upstreams: Upstreams, http: aiohttp.ClientSession) -> None:
    before = upstreams.stats("order")["requests"]
    async with http.options(gw.url + "/v1/orders", headers=_preflight(SHOP)) as resp:
        assert resp.status == 204
        assert resp.headers["Access-Control-Allow-Origin"] == SHOP
        assert resp.headers["Access-Control-Allow-Methods"] == "POST"
        allowed = {h.strip().lower()
                   for h in resp.headers["Access-Control-Allow-Headers"].split(",")}
        assert {"content-type", "idempotency-key", "x-api-key"} <= allowed
        assert resp.headers["Access-Control-Max-Age"] == "600"
        assert "Origin" in resp.headers.getall("Vary")
        assert "Access-Control-Allow-Credentials" not in resp.headers
    async with http.options(gw.url + "/v1/orders/ord_1", headers=_preflight(SHOP, "GET")) as resp:
        assert resp.status == 204
        assert resp.headers["Access-Control-Allow-Methods"] == "GET"
    assert upstreams.stats("order")["requests"] == before


@pytest.mark.parametrize(("origin", "path", "status", "code"), [
    (ELSEWHERE, "/v1/orders", 403, "FORBIDDEN"),
    ("null", "/v1/orders", 403, "FORBIDDEN"),
    (SHOP + ".evil.net", "/v1/orders", 403, "FORBIDDEN"),
    (SHOP, "/admin/breakers", 403, "FORBIDDEN"),
    (SHOP, "/v1/nothing-here", 404, "NOT_FOUND"),
])
async def test_other_preflights_are_refused(gw: InProcess, http: aiohttp.ClientSession,
                                            origin: str, path: str, status: int,
                                            code: str) -> None:
    async with http.options(gw.url + path, headers=_preflight(origin)) as resp:
        assert resp.status == status
        assert resp.content_type == "application/problem+json"
        assert (await resp.json())["code"] == code
        # Only an allowed origin may read the refusal (the 404), never another's.
        assert resp.headers.get("Access-Control-Allow-Origin") == (
            SHOP if status == 404 else None)


async def test_answers_name_only_an_allowed_origin(gw: InProcess,
                                                   http: aiohttp.ClientSession) -> None:
    async with http.get(gw.url + AVAILABILITY, headers={"Origin": SHOP}) as resp:
        assert resp.status == 200
        assert resp.headers["Access-Control-Allow-Origin"] == SHOP
        exposed = resp.headers["Access-Control-Expose-Headers"]
        assert "X-Request-ID" in exposed and "Retry-After" in exposed
        assert "Origin" in resp.headers.getall("Vary")
    async with http.get(gw.url + AVAILABILITY, headers={"Origin": ELSEWHERE}) as resp:
        assert resp.status == 200  # CORS is the browser's to enforce, not an auth check
        assert "Access-Control-Allow-Origin" not in resp.headers
    async with http.get(gw.url + "/admin/breakers", headers={
            "Origin": SHOP, "Authorization": f"Bearer {ADMIN_TOKEN}"}) as resp:
        assert resp.status == 200
        assert "Access-Control-Allow-Origin" not in resp.headers


@pytest.mark.parametrize(("method", "path", "status"), [
    ("GET", AVAILABILITY, 200), ("GET", "/healthz", 200), ("GET", "/metrics", 200),
    ("GET", "/v1/status", 200), ("GET", "/openapi.json", 200), ("GET", "/nowhere", 404),
    ("DELETE", "/v1/orders", 405), ("POST", "/v1/orders", 400), ("GET", "/admin/breakers", 401),
    ("POST", "/v1/orders+key", 201),
])
async def test_every_answer_carries_the_security_headers(
        gw: InProcess, http: aiohttp.ClientSession, method: str, path: str, status: int) -> None:
    kwargs: dict[str, object] = {}
    if path == "/v1/orders+key":
        path = "/v1/orders"
        kwargs = {"json": GOOD_ORDER, "headers": {"Idempotency-Key": str(uuid.uuid4())}}
    elif method == "POST":
        kwargs = {"json": GOOD_ORDER}
    async with http.request(method, gw.url + path, **kwargs) as resp:  # type: ignore[arg-type]
        assert resp.status == status
        for name, value in SECURITY_HEADERS.items():
            assert resp.headers.get(name) == value, name
        assert resp.headers["Server"] == "order-gateway"


async def test_without_an_allow_list_there_is_no_cross_origin_access(
        gateway_app: StartApp, http: aiohttp.ClientSession) -> None:
    gateway = await gateway_app(None)
    async with http.options(gateway.url + "/v1/orders", headers=_preflight(SHOP)) as resp:
        assert resp.status == 405
        assert "Access-Control-Allow-Origin" not in resp.headers
    async with http.get(gateway.url + AVAILABILITY, headers={"Origin": SHOP}) as resp:
        assert "Access-Control-Allow-Origin" not in resp.headers
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        assert "Strict-Transport-Security" not in resp.headers
