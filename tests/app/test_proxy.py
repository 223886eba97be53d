"""Each public route proxies to its simulator; statuses, bodies and headers pass as they should.

In-process: a fresh `build_app` per test in front of the suite's simulators (the access
log, a process's output, is checked in tests/system/test_access_log.py)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import aiohttp
import orjson
import pytest

from loadtest.harness import Upstreams
from tests.conftest import GOOD_ORDER, GOOD_PAYMENT, NO_STALE_ANSWERS, InProcess, StartApp

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
TAIWAN = "zh-TW,zh;q=0.9,en;q=0.8"


@pytest.fixture
async def gateway(gateway_app: StartApp) -> InProcess:
    return await gateway_app(NO_STALE_ANSWERS)


def _key() -> dict[str, str]:
    return {"Idempotency-Key": str(uuid.uuid4())}


async def test_availability_is_proxied_with_query(gateway: InProcess, healthy: Upstreams,
                                                  http: aiohttp.ClientSession) -> None:
    async with http.get(gateway.url + "/v1/availability",
                        params={"address": "北京市 1 号", "product": "fiber-500",
                                "_": "cache-buster"}) as resp:
        assert resp.status == 200
        assert resp.content_type == "application/json"
        body = await resp.json()
    assert body["address"] == "北京市 1 号"
    assert isinstance(body["available"], bool)
    forwarded = healthy.stats("availability")["last_request"]
    assert forwarded["path"] == "/availability"
    # Only the validated parameters reach the backend.
    assert forwarded["query"] == {"address": "北京市 1 号", "product": "fiber-500"}


@pytest.mark.parametrize(("route", "body", "id_field", "expected"), [
    ("/v1/orders", GOOD_ORDER, "order_id", {"status": "created"}),
    ("/v1/payments", GOOD_PAYMENT, "payment_id",
     {"status": "succeeded", "amount": GOOD_PAYMENT["amount"],
      "order_id": GOOD_PAYMENT["order_id"]}),
])
async def test_create_and_read_back(gateway: InProcess, healthy: Upstreams,
                                    http: aiohttp.ClientSession, route: str,
                                    body: dict[str, Any], id_field: str,
                                    expected: dict[str, Any]) -> None:
    async with http.post(gateway.url + route, json=body, headers=_key()) as resp:
        assert resp.status == 201
        created = await resp.json()
    assert {name: created[name] for name in expected} == expected
    async with http.get(gateway.url + f"{route}/{created[id_field]}") as resp:
        assert resp.status == 200
        assert (await resp.json())[id_field] == created[id_field]


async def test_headers_that_matter_reach_the_backend_and_others_do_not(
        gateway: InProcess, healthy: Upstreams, http: aiohttp.ClientSession) -> None:
    headers = {
        **_key(), "X-Request-ID": "req-abc.123", "X-Client-ID": "shop-app",
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "Authorization": "Bearer secret", "Connection": "keep-alive, X-Private",
        "X-Private": "hop", "Cookie": "session=1",
    }
    async with http.post(gateway.url + "/v1/payments", json=GOOD_PAYMENT,
                         headers=headers) as resp:
        assert resp.status == 201
        assert resp.headers["X-Request-ID"] == "req-abc.123"
    seen = {k.lower(): v for k, v in healthy.stats("payment")["last_request"]["headers"].items()}
    assert seen["x-request-id"] == "req-abc.123"
    assert seen["idempotency-key"] == headers["Idempotency-Key"]
    assert seen["x-client-id"] == "shop-app"
    assert seen["traceparent"] == headers["traceparent"]
    for private in ("authorization", "x-private", "cookie"):
        assert private not in seen


@pytest.mark.parametrize(("sent", "passed"), [
    ({"traceparent": "00-" + "0" * 32 + "-b7ad6b7169203331-01"}, {}),
    ({"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra"}, {}),
    ({"traceparent": "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}, {}),
    ({"traceparent": "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01"}, {}),
    ({"tracestate": "vendor=1"}, {}),  # no traceparent: the state of no trace
    ({"traceparent": TRACEPARENT, "tracestate": "v=" + "x" * 600}, {"traceparent": TRACEPARENT}),
    ({"traceparent": TRACEPARENT, "tracestate": "v=1,w=2"},
     {"traceparent": TRACEPARENT, "tracestate": "v=1,w=2"}),
    ({"Accept-Language": TAIWAN}, {"Accept-Language": TAIWAN}),
    ({"Accept-Language": "en," * 2600}, {}),
    ({"Accept-Language": "zh-TW<script>"}, {}),
])
async def test_forwarded_headers_go_on_only_valid_and_within_their_limits(
        gateway: InProcess, healthy: Upstreams, http: aiohttp.ClientSession,
        sent: dict[str, str], passed: dict[str, str]) -> None:
    async with http.post(gateway.url + "/v1/payments", json=GOOD_PAYMENT,
                         headers={**_key(), **sent}) as resp:
        assert resp.status == 201
    seen = {k.lower(): v for k, v in healthy.stats("payment")["last_request"]["headers"].items()}
    names = ("traceparent", "tracestate", "accept-language")
    assert {name: seen[name] for name in names if name in seen} == {
        name.lower(): value for name, value in passed.items()}


async def test_a_non_utf8_accept_language_reaches_no_backend(
        gateway: InProcess, healthy: Upstreams) -> None:
    """Raw bytes (Latin-1 0xE9 here) in a header the gateway passes on: dropped."""
    host, port = gateway.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"GET /v1/availability?address=Beijing%201&product=fiber HTTP/1.1\r\n"
                 b"Host: x\r\nAccept-Language: fr-\xe9\r\nConnection: close\r\n\r\n")
    answer = await reader.read()
    writer.close()
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    seen = {k.lower() for k in healthy.stats("availability")["last_request"]["headers"]}
    assert "accept-language" not in seen


async def test_anonymous_clients_share_one_scope(gateway: InProcess, healthy: Upstreams,
                                                 http: aiohttp.ClientSession) -> None:
    async with http.post(gateway.url + "/v1/orders", json=GOOD_ORDER, headers=_key()) as resp:
        assert resp.status == 201
    seen = healthy.stats("order")["last_request"]["headers"]
    assert seen["X-Client-ID"] == "anonymous"


async def test_request_id_is_made_when_missing_or_insane(gateway: InProcess, healthy: Upstreams,
                                                         http: aiohttp.ClientSession) -> None:
    for sent in (None, "bad id with spaces", "x" * 200):
        headers = {} if sent is None else {"X-Request-ID": sent}
        async with http.get(gateway.url + "/healthz", headers=headers) as resp:
            rid = resp.headers["X-Request-ID"]
        assert rid and rid != sent and len(rid) <= 128


async def test_full_width_input_is_normalised_before_forwarding(
        gateway: InProcess, healthy: Upstreams, http: aiohttp.ClientSession) -> None:
    order = {"customer": {"name": " 李四 ", "phone": "１３８ ００１３ ８０００",
                          "id_number": "１１０１０５１９４９１２３１００２ｘ"},
             "product": "ｆｉｂｅｒ－５００", "address": "上海市　徐汇区"}
    async with http.post(gateway.url + "/v1/orders", json=order, headers=_key()) as resp:
        assert resp.status == 201, await resp.text()
    forwarded = orjson.loads(healthy.stats("order")["last_request"]["body"])
    assert forwarded["customer"] == {"name": "李四", "phone": "13800138000",
                                     "id_number": "11010519491231002X"}
    assert forwarded["product"] == "fiber-500"
    assert forwarded["address"] == "上海市 徐汇区"


async def test_backend_business_errors_pass_through(gateway: InProcess, healthy: Upstreams,
                                                    http: aiohttp.ClientSession) -> None:
    cases = [
        ("GET", "/v1/availability?address=unknown%20street&product=fiber", None, 404,
         "ADDRESS_UNKNOWN"),
        ("POST", "/v1/orders", {**GOOD_ORDER, "product": "withdrawn-adsl"}, 422,
         "PRODUCT_WITHDRAWN"),
        ("POST", "/v1/orders", {**GOOD_ORDER, "product": "conflict-fiber"}, 409, "ORDER_CONFLICT"),
        ("POST", "/v1/payments", {**GOOD_PAYMENT, "method": "balance", "amount": 1_000_001}, 402,
         "INSUFFICIENT_BALANCE"),
        ("GET", "/v1/orders/ord_missing", None, 404, "ORDER_NOT_FOUND"),
        ("GET", "/v1/payments/pay_missing", None, 404, "PAYMENT_NOT_FOUND"),
    ]
    for method, path, body, status, code in cases:
        async with http.request(method, gateway.url + path, json=body, headers=_key()) as resp:
            assert resp.status == status, (path, await resp.text())
            assert resp.content_type == "application/json"
            assert (await resp.json())["code"] == code
            assert "X-Request-ID" in resp.headers


async def test_unknown_route_and_wrong_method_are_problems(gateway: InProcess,
                                                           http: aiohttp.ClientSession) -> None:
    async with http.get(gateway.url + "/v2/nothing") as resp:
        assert resp.status == 404
        assert resp.content_type == "application/problem+json"
        assert (await resp.json())["code"] == "NOT_FOUND"
    async with http.delete(gateway.url + "/v1/orders") as resp:
        assert resp.status == 405
        assert resp.content_type == "application/problem+json"
        assert resp.headers["Allow"] == "POST"
        assert (await resp.json())["code"] == "METHOD_NOT_ALLOWED"


async def test_operational_endpoints(gateway: InProcess, healthy: Upstreams,
                                     http: aiohttp.ClientSession) -> None:
    async with http.get(gateway.url + "/healthz") as resp:
        assert resp.status == 200
    async with http.get(gateway.url + "/readyz") as resp:
        assert resp.status == 200
    async with http.get(gateway.url + "/v1/status") as resp:
        assert resp.status == 200
        status = await resp.json()
        assert "max-age" in resp.headers["Cache-Control"]
    assert set(status["backends"]) == {"order", "payment", "availability"}
    assert {b["health"] for b in status["backends"].values()} <= {"up", "degraded", "down"}
    assert status["maintenance"] == {"current": [], "scheduled": []}


async def test_metrics_count_requests_by_route_status_and_code(
        gateway: InProcess, healthy: Upstreams, http: aiohttp.ClientSession) -> None:
    async with http.get(gateway.url + "/v1/availability?address=a&product=b") as resp:
        assert resp.status == 200
    async with http.post(gateway.url + "/v1/orders", data=b"{", headers={
            **_key(), "Content-Type": "application/json"}) as resp:
        assert resp.status == 400
    async with http.get(gateway.url + "/metrics") as resp:
        assert resp.status == 200
        text = await resp.text()
    assert 'gateway_requests_total{code="none",route="/v1/availability",status="200"}' in text
    assert 'gateway_requests_total{code="MALFORMED_JSON",route="/v1/orders",status="400"}' in text
    assert 'gateway_request_duration_seconds_bucket{le="0.005",route="/v1/availability"}' in text
    assert 'gateway_upstream_duration_seconds_count{backend="availability",outcome="ok"}' in text


async def test_openapi_document_describes_every_public_route(
        gateway: InProcess, http: aiohttp.ClientSession) -> None:
    async with http.get(gateway.url + "/openapi.json") as resp:
        assert resp.status == 200
        doc = await resp.json()
    assert doc["openapi"].startswith("3.1")
    for path, method in [("/v1/availability", "get"), ("/v1/orders", "post"),
                         ("/v1/orders/{order_id}", "get"), ("/v1/payments", "post"),
                         ("/v1/payments/{payment_id}", "get"), ("/v1/status", "get"),
                         ("/healthz", "get"), ("/readyz", "get"), ("/metrics", "get"),
                         ("/admin/breakers", "get"), ("/admin/breakers/{name}", "put"),
                         ("/admin/breakers/{name}/open", "post"),
                         ("/admin/breakers/{name}/reset", "post")]:
        assert method in doc["paths"][path], path
    order_schema = doc["components"]["schemas"]["OrderRequest"]
    assert set(order_schema["required"]) == {"customer", "product", "address"}
    assert doc["components"]["schemas"]["PaymentRequest"]["properties"]["method"]["enum"] == [
        "alipay", "wechat", "card", "balance"]
