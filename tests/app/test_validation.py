"""Edge validation: bad input is refused before any backend call.

Schema, header and JSON checks run against the app in-process; the body-size limits, which
are the HTTP parser's, against a gateway process.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from loadtest.harness import Gateway, Upstreams
from tests.conftest import GOOD_ORDER, GOOD_PAYMENT, StartApp

JSON = {"Content-Type": "application/json"}


def _key() -> dict[str, str]:
    return {"Idempotency-Key": str(uuid.uuid4())}


async def _problem(resp: aiohttp.ClientResponse, status: int, code: str) -> dict[str, Any]:
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/problem+json"
    body: dict[str, Any] = await resp.json()
    assert body["code"] == code
    assert body["retryable"] is False
    assert "Retry-After" not in resp.headers
    return body


def _fields(body: dict[str, Any]) -> set[str]:
    return {item["field"] for item in body["errors"]}


@pytest.fixture
async def app_url(gateway_app: StartApp) -> str:
    """The gateway in-process: schema and header checks cross no process boundary."""
    return (await gateway_app(None)).url


@pytest.fixture
async def no_backend_calls(healthy: Upstreams) -> AsyncIterator[None]:
    """Asserts that the test reached no backend at all."""
    before = {name: healthy.stats(name)["requests"] for name in healthy.urls}
    yield
    after = {name: healthy.stats(name)["requests"] for name in healthy.urls}
    assert after == before


@pytest.mark.parametrize(("body", "fields"), [
    ({}, {"customer", "product", "address"}),
    ({**GOOD_ORDER, "customer": {"name": "x"}}, {"customer.phone", "customer.id_number"}),
    ({**GOOD_ORDER, "customer": {**GOOD_ORDER["customer"], "phone": "12345"}},
     {"customer.phone"}),
    ({**GOOD_ORDER, "customer": {**GOOD_ORDER["customer"], "id_number": "110105194912310021"}},
     {"customer.id_number"}),
    ({**GOOD_ORDER, "customer": {**GOOD_ORDER["customer"], "id_number": "110105194902300020"}},
     {"customer.id_number"}),
    ({**GOOD_ORDER, "product": 42}, {"product"}),
    ({**GOOD_ORDER, "address": "x" * 201}, {"address"}),
    ({**GOOD_ORDER, "surprise": True}, {"surprise"}),
])
async def test_order_schema(body: dict[str, Any], fields: set[str], app_url: str,
                            no_backend_calls: None, http: aiohttp.ClientSession) -> None:
    async with http.post(app_url + "/v1/orders", json=body, headers=_key()) as resp:
        problem = await _problem(resp, 422, "VALIDATION_FAILED")
    assert _fields(problem) == fields
    assert all(item["message"] for item in problem["errors"])


@pytest.mark.parametrize(("change", "field"), [
    ({"amount": 0}, "amount"),
    ({"amount": -5}, "amount"),
    ({"amount": "100"}, "amount"),
    ({"amount": 99.5}, "amount"),
    ({"amount": True}, "amount"),
    ({"currency": "USD"}, "currency"),
    ({"method": "cash"}, "method"),
    ({"order_id": "bad id!"}, "order_id"),
])
async def test_payment_schema(change: dict[str, Any], field: str, app_url: str,
                              no_backend_calls: None, http: aiohttp.ClientSession) -> None:
    async with http.post(app_url + "/v1/payments", json={**GOOD_PAYMENT, **change},
                         headers=_key()) as resp:
        problem = await _problem(resp, 422, "VALIDATION_FAILED")
    assert _fields(problem) == {field}


async def test_field_errors_follow_the_language(app_url: str, no_backend_calls: None,
                                                http: aiohttp.ClientSession) -> None:
    body = {**GOOD_ORDER, "customer": {**GOOD_ORDER["customer"], "phone": "12345"}}
    async with http.post(app_url + "/v1/orders", json=body,
                         headers={**_key(), "Accept-Language": "zh-CN,zh;q=0.9,en;q=0.5"}) as resp:
        problem = await _problem(resp, 422, "VALIDATION_FAILED")
    assert problem["title"] == "请求内容不合法"
    assert "手机号码" in problem["errors"][0]["message"]


@pytest.mark.parametrize("query", [
    "", "?address=x", "?product=y", "?address=&product=y", "?address=x&product=" + "p" * 65,
    "?address=" + "a" * 201 + "&product=y",
])
async def test_availability_query(query: str, app_url: str, no_backend_calls: None,
                                  http: aiohttp.ClientSession) -> None:
    async with http.get(app_url + "/v1/availability" + query) as resp:
        await _problem(resp, 422, "VALIDATION_FAILED")


@pytest.mark.parametrize("path", ["/v1/orders/bad%20id", "/v1/orders/" + "a" * 65,
                                  "/v1/payments/semi;colon", "/v1/payments/%E4%B8%AD"])
async def test_path_ids(path: str, app_url: str, no_backend_calls: None,
                        http: aiohttp.ClientSession) -> None:
    async with http.get(app_url + path) as resp:
        await _problem(resp, 422, "VALIDATION_FAILED")


@pytest.mark.parametrize("raw", [b"{", b"not json", b"", b"\xff\xfe", b'{"a": 1,}'])
async def test_malformed_json(raw: bytes, app_url: str, no_backend_calls: None,
                              http: aiohttp.ClientSession) -> None:
    async with http.post(app_url + "/v1/orders", data=raw,
                         headers={**JSON, **_key()}) as resp:
        await _problem(resp, 400, "MALFORMED_JSON")


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded",
                                          "application/xml", None])
async def test_wrong_content_type(content_type: str | None, app_url: str,
                                  no_backend_calls: None, http: aiohttp.ClientSession) -> None:
    headers = _key() | ({} if content_type is None else {"Content-Type": content_type})
    async with http.post(app_url + "/v1/payments", data=b'{"a": 1}',
                         headers=headers, skip_auto_headers=["Content-Type"]) as resp:
        await _problem(resp, 415, "UNSUPPORTED_MEDIA_TYPE")


async def test_json_with_charset_is_accepted(app_url: str, healthy: Upstreams,
                                             http: aiohttp.ClientSession) -> None:
    import orjson

    async with http.post(app_url + "/v1/payments", data=orjson.dumps(GOOD_PAYMENT),
                         headers={**_key(),
                                  "Content-Type": "application/json; charset=utf-8"}) as resp:
        assert resp.status == 201


async def test_missing_and_malformed_idempotency_key(app_url: str, no_backend_calls: None,
                                                     http: aiohttp.ClientSession) -> None:
    for path, body in (("/v1/orders", GOOD_ORDER), ("/v1/payments", GOOD_PAYMENT)):
        async with http.post(app_url + path, json=body) as resp:
            await _problem(resp, 400, "IDEMPOTENCY_KEY_MISSING")
    # The contract gives VALIDATION_FAILED one status, 422, whatever the field.
    for bad in ("", "k" * 256, "tab\tkey"):
        async with http.post(app_url + "/v1/payments", json=GOOD_PAYMENT,
                             headers={"Idempotency-Key": bad}) as resp:
            problem = await _problem(resp, 422, "VALIDATION_FAILED")
            assert _fields(problem) == {"Idempotency-Key"}


async def test_declared_oversize_body_is_refused_without_reading_it(
        gateway: Gateway, no_backend_calls: None) -> None:
    """A 10 MB body is announced; the gateway answers 413 after the headers alone."""
    host, port = "127.0.0.1", gateway.port
    reader, writer = await asyncio.open_connection(host, port)
    size = 10 * 1024 * 1024
    writer.write((f"POST /v1/orders HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json"
                  f"\r\nIdempotency-Key: k\r\nContent-Length: {size}\r\n\r\n").encode())
    writer.write(b"{" + b" " * 1000)
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
    assert head.startswith(b"HTTP/1.1 413")
    assert b"application/problem+json" in head
    writer.close()


async def test_chunked_oversize_body_is_refused(gateway: Gateway, no_backend_calls: None,
                                                http: aiohttp.ClientSession) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"customer": "'
        for _ in range(100):
            yield b"x" * 1024

    async with http.post(gateway.url + "/v1/orders", data=chunks(),
                         headers={**JSON, **_key()}) as resp:
        problem = await _problem(resp, 413, "PAYLOAD_TOO_LARGE")
    assert "65536" in problem["detail"]
