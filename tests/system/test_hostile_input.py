"""Hostile input is refused at the edge as problem+json, never reaches a backend, and
never holds the gateway: oversized heads, smuggling attempts, slow clients, deep JSON.

These talk raw bytes over sockets to a real gateway process, because what is
tested is the HTTP layer itself: a client library would refuse to send most of it.
"""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from loadtest.harness import Gateway, Upstreams
from tests.conftest import GOOD_ORDER

TIMEOUT_S = 1.0  # header and body timeouts of this module's gateway
LIMITS = {"server": {"max_url_bytes": 1024, "max_header_bytes": 2048, "max_headers": 32,
                     "header_timeout_s": TIMEOUT_S, "body_timeout_s": TIMEOUT_S}}
ORDER_BODY = orjson.dumps(GOOD_ORDER)


@pytest.fixture(scope="module")
def gw(log_dir: Path, upstreams: Upstreams) -> Iterator[Gateway]:
    gateway = Gateway(log_dir, upstreams.urls, config=LIMITS)
    yield gateway
    gateway.stop()


def _order_head(extra: str = "", length: int | None = None) -> bytes:
    lines = ["POST /v1/orders HTTP/1.1", "Host: gw", "Content-Type: application/json",
             f"Idempotency-Key: {uuid.uuid4()}"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n" + extra).encode()


def _exchange(gw: Gateway, raw: bytes, wait_s: float = 5.0) -> bytes:
    """Send raw bytes, read until the gateway closes the connection."""
    with socket.create_connection(("127.0.0.1", gw.port), timeout=wait_s) as sock:
        sock.sendall(raw)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received


def _answers(raw: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """Every HTTP answer in a byte stream (status, headers, body), in order."""
    found = []
    while raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in
                   (line.partition(":") for line in lines[1:])}
        length = int(headers.get("content-length", "0"))
        found.append((int(lines[0].split()[1]), headers, rest[:length]))
        raw = rest[length:]
    return found


def _problem(raw: bytes, status: int, code: str) -> dict[str, object]:
    answers = _answers(raw)
    assert len(answers) == 1, answers  # nothing smuggled through after it
    got_status, headers, body = answers[0]
    assert got_status == status, raw[:300]
    assert headers["content-type"].startswith("application/problem+json")
    assert headers["x-content-type-options"] == "nosniff"
    problem: dict[str, object] = orjson.loads(body)
    assert problem["code"] == code and problem["status"] == status and problem["request_id"]
    return problem


SECRET = "13800138000"  # stands for anything a client sent: never echoed back

REFUSED = {
    "url too long": (b"GET /v1/availability?address=" + b"a" * 2000 + b" HTTP/1.1\r\nHost: gw"
                     b"\r\n\r\n", 414, "URI_TOO_LONG"),
    "header too long": (b"GET /healthz HTTP/1.1\r\nHost: gw\r\nX-Pad: " + SECRET.encode() * 300
                        + b"\r\n\r\n", 431, "HEADERS_TOO_LARGE"),
    "too many headers": (b"GET /healthz HTTP/1.1\r\nHost: gw\r\n"
                         + b"".join(b"X-H%d: 1\r\n" % i for i in range(40)) + b"\r\n",
                         431, "HEADERS_TOO_LARGE"),
    "content-length and chunked": (_order_head("Transfer-Encoding: chunked\r\n\r\n", 4)
                                   + b"0\r\n\r\n", 400, "MALFORMED_REQUEST"),
    "two content-lengths": (_order_head("Content-Length: 3\r\n\r\n", 4) + b"{}{}", 400,
                            "MALFORMED_REQUEST"),
    "unknown transfer coding": (_order_head("Transfer-Encoding: chunked, identity\r\n\r\n")
                                + b"0\r\n\r\n", 400, "MALFORMED_REQUEST"),
    # Read as chunked by aiohttp's parser, refused by nginx (501): two readings of one stream.
    "identity then chunked": (_order_head("Transfer-Encoding: identity, chunked\r\n\r\n")
                              + b"2\r\n{}\r\n0\r\n\r\n", 400, "MALFORMED_REQUEST"),
    "gzip then chunked": (_order_head("Transfer-Encoding: gzip, chunked\r\n\r\n")
                          + b"2\r\n{}\r\n0\r\n\r\n", 400, "MALFORMED_REQUEST"),
    "space before colon": (b"GET /healthz HTTP/1.1\r\nHost: gw\r\nX-Client-ID : "
                           + SECRET.encode() + b"\r\n\r\n", 400, "MALFORMED_REQUEST"),
    "tls on the plain port": (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64,
                              400, "MALFORMED_REQUEST"),
    "not http": (b"HELLO " + SECRET.encode() + b"\r\n\r\n", 400, "MALFORMED_REQUEST"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_malformed_heads_are_refused_as_problems_before_any_backend(
        gw: Gateway, upstreams: Upstreams, case: str) -> None:
    raw, status, code = REFUSED[case]
    before = {name: upstreams.stats(name)["requests"] for name in upstreams.urls}
    problem = _problem(_exchange(gw, raw), status, code)
    assert SECRET not in orjson.dumps(problem).decode()
    assert {name: upstreams.stats(name)["requests"] for name in upstreams.urls} == before


def test_a_request_smuggled_behind_conflicting_lengths_is_never_answered(gw: Gateway) -> None:
    # A front proxy trusting Content-Length would pass this on as one request; a backend
    # trusting chunked would see a second, smuggled request. The gateway refuses both.
    smuggled = b"GET /admin/breakers HTTP/1.1\r\nHost: gw\r\n\r\n"
    body = b"0\r\n\r\n" + smuggled
    raw = _order_head("Transfer-Encoding: chunked\r\n\r\n", len(body)) + body
    _problem(_exchange(gw, raw), 400, "MALFORMED_REQUEST")


def test_limits_leave_ordinary_requests_alone(gw: Gateway) -> None:
    headers = "".join(f"X-Extra-{i}: {'v' * 100}\r\n" for i in range(20))
    raw = (f"GET /v1/availability?address={'a' * 200}&product=fiber HTTP/1.1\r\nHost: gw\r\n"
           f"{headers}Connection: close\r\n\r\n").encode()
    assert _answers(_exchange(gw, raw))[0][0] == 200


async def _slow_head(port: int, sent: list[bytes]) -> tuple[float, bytes]:
    """Trickle a request head a header every 0.3 s; return when and what the gateway said."""
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n")
    received = b""
    try:
        for i in range(50):
            writer.write(b"X-Slow-%d: 1\r\n" % i)
            sent.append(b"x")
            try:
                received = await asyncio.wait_for(reader.read(4096), 0.3)
                break
            except TimeoutError:
                continue
    except ConnectionError:
        pass
    finally:
        writer.close()
    return time.monotonic() - started, received


async def test_slowloris_is_cut_off_and_does_not_hold_the_gateway(gw: Gateway) -> None:
    sent: list[bytes] = []
    slow = [asyncio.create_task(_slow_head(gw.port, sent)) for _ in range(30)]
    await asyncio.sleep(0.3)
    # Meanwhile an ordinary client is served at once.
    started = time.monotonic()
    answer = await asyncio.to_thread(
        _exchange, gw, b"GET /healthz HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
    assert _answers(answer)[0][0] == 200 and time.monotonic() - started < TIMEOUT_S
    for elapsed, received in await asyncio.gather(*slow):
        assert TIMEOUT_S - 0.1 <= elapsed <= TIMEOUT_S + 1.5, elapsed
        _problem(received, 408, "REQUEST_TIMEOUT")


def test_a_connection_that_sends_nothing_is_closed(gw: Gateway) -> None:
    started = time.monotonic()
    received = _exchange(gw, b"")
    assert time.monotonic() - started <= TIMEOUT_S + 1.5
    _problem(received, 408, "REQUEST_TIMEOUT")


def test_a_slow_second_request_on_a_kept_alive_connection_is_cut_off(gw: Gateway) -> None:
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n")
        first = sock.recv(65536)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n")  # and never the rest
        started = time.monotonic()
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    assert _answers(first)[0][0] == 200
    assert time.monotonic() - started <= TIMEOUT_S + 1.5
    _problem(received, 408, "REQUEST_TIMEOUT")


def test_an_idle_kept_alive_connection_is_not_cut_off_by_the_head_timer(gw: Gateway) -> None:
    body = ORDER_BODY
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
        # The body in a second packet: its bytes must not start a head timer.
        sock.sendall(_order_head("\r\n", len(body)))
        time.sleep(0.1)
        sock.sendall(body)
        assert _answers(sock.recv(65536))[0][0] == 201
        time.sleep(TIMEOUT_S * 2)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n")
        assert _answers(sock.recv(65536))[0][0] == 200


def test_a_slow_body_is_cut_off_and_never_forwarded(gw: Gateway, upstreams: Upstreams) -> None:
    before = upstreams.stats("order")["requests"]
    started = time.monotonic()
    received = _exchange(gw, _order_head("\r\n", len(ORDER_BODY)) + ORDER_BODY[:10])
    assert time.monotonic() - started <= TIMEOUT_S + 1.5
    _problem(received, 408, "REQUEST_TIMEOUT")
    assert upstreams.stats("order")["requests"] == before


@pytest.mark.parametrize(("body", "status", "code"), [
    (b'{"customer": ' + b"[" * 20_000 + b"]" * 20_000 + b"}", 400, "MALFORMED_JSON"),
    (b'{"customer": ' + b'{"a":' * 5000 + b"1" + b"}" * 5000 + b"}", 400, "MALFORMED_JSON"),
    (orjson.dumps({**GOOD_ORDER, "customer": {**GOOD_ORDER["customer"], "name": "名" * 20_000}}),
     422, "VALIDATION_FAILED"),
    (orjson.dumps({**GOOD_ORDER, "note": "x" * 60_000}), 422, "VALIDATION_FAILED"),
    (orjson.dumps({**GOOD_ORDER, "address": "a" * 201}), 422, "VALIDATION_FAILED"),
])
def test_deep_or_long_json_is_refused_quickly(gw: Gateway, upstreams: Upstreams, body: bytes,
                                              status: int, code: str) -> None:
    before = upstreams.stats("order")["requests"]
    started = time.monotonic()
    received = _exchange(gw, _order_head("Connection: close\r\n\r\n", len(body)) + body)
    assert time.monotonic() - started < 2.0
    _problem(received, status, code)
    assert upstreams.stats("order")["requests"] == before


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", None])
def test_json_routes_take_only_json(gw: Gateway, upstreams: Upstreams,
                                    content_type: str | None) -> None:
    before = upstreams.stats("order")["requests"]
    lines = ["POST /v1/orders HTTP/1.1", "Host: gw", f"Idempotency-Key: {uuid.uuid4()}",
             f"Content-Length: {len(ORDER_BODY)}", "Connection: close"]
    if content_type is not None:
        lines.append(f"Content-Type: {content_type}")
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode() + ORDER_BODY
    _problem(_exchange(gw, raw), 415, "UNSUPPORTED_MEDIA_TYPE")
    assert upstreams.stats("order")["requests"] == before


def test_the_gateway_still_serves_after_all_that(gw: Gateway) -> None:
    raw = _order_head("Connection: close\r\n\r\n", len(ORDER_BODY)) + ORDER_BODY
    assert _answers(_exchange(gw, raw))[0][0] == 201
