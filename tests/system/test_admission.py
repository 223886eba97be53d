"""Admission at arrival and the batch listener, against real gateway processes and sockets.

The controller's arithmetic (limit, shares, delay) is tested as logic in
test_overload.py; here is what only a process boundary shows: the refusal
written by the connection layer as soon as the parser read the head, the hold of a
client that retries sooner than it was told, counts that never leak when
clients vanish, and connections accepted in batches while the loop is busy.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import uvloop
from aiohttp import web
from aiohttp.base_protocol import BaseProtocol
from aiohttp.http_parser import HttpRequestParser

from gateway.app import ARRIVALS, build_app
from gateway.contract.settings import Settings
from gateway.edge.connections import EdgeSite
from gateway.pipeline.arrivals import Arrivals
from loadtest.harness import Gateway, Upstreams
from tests.conftest import ADMIN_TOKEN, NO_STALE_ANSWERS, admin_gateway

_RESET_ON_CLOSE = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends a reset
AVAILABILITY = "/v1/availability?address=Beijing%201&product=fiber-500"
HEAD = (f"GET {AVAILABILITY} HTTP/1.1\r\nHost: gw\r\nX-Request-ID: probe-1\r\n"
        "Accept-Language: zh-CN,zh;q=0.9\r\n\r\n").encode()


# -- which heads are decided at arrival (logic) -----------------------------------------------

@pytest.fixture(scope="module")
def arrivals() -> Arrivals:
    app = build_app(Settings.model_validate({"server": {"access_log": False}}))
    found = app[ARRIVALS]
    assert found is not None
    return found


def _read(head: bytes) -> list[Any]:
    """The requests aiohttp's parser reads in `head`."""
    loop = asyncio.new_event_loop()
    try:
        parser = HttpRequestParser(BaseProtocol(loop), loop, 2**16)
        return [message for message, _ in parser.feed_data(head)[0]]
    finally:
        loop.close()


@pytest.mark.parametrize(("head", "route"), [
    (HEAD, "GET /v1/availability"),
    (b"GET /v1/availability HTTP/1.1\r\nHost: gw\r\n\r\n", "GET /v1/availability"),
    (b"GET /v1/orders/ord_1-a HTTP/1.1\r\nHost: gw\r\n\r\n", "GET /v1/orders/{order_id}"),
    (b"GET /v1/payments/pay9?x=1 HTTP/1.1\r\nHost: gw\r\n\r\n",
     "GET /v1/payments/{payment_id}"),
    # The usual way: a body, connection handling, CORS, HTTP/1.0.
    (b"POST /v1/orders HTTP/1.1\r\nHost: gw\r\nContent-Length: 2\r\n\r\n{}", None),
    (b"GET /v1/availability HTTP/1.1\r\nHost: gw\r\nContent-Length: 0\r\n\r\n", None),
    (b"GET /v1/availability HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n", None),
    (b"GET /v1/availability HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n", None),
    (b"GET /v1/availability HTTP/1.1\r\nHost: gw\r\nOrigin: https://shop.example\r\n\r\n", None),
    (b"GET /v1/availability HTTP/1.1\r\nHost: gw\r\nExpect: 100-continue\r\n\r\n", None),
    (b"GET /v1/availability HTTP/1.0\r\n\r\n", None),
    # Not a proxied route's exact path, or an id the handler must judge.
    (b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n", None),
    (b"GET /v1/availability/ HTTP/1.1\r\nHost: gw\r\n\r\n", None),
    (b"GET /v1/orders/a%2Fb HTTP/1.1\r\nHost: gw\r\n\r\n", None),
    (b"GET /v1/orders/%C3%A9 HTTP/1.1\r\nHost: gw\r\n\r\n", None),
    (b"GET /v1/orders/ HTTP/1.1\r\nHost: gw\r\n\r\n", None),
    (b"GET /v1/orders/a/b HTTP/1.1\r\nHost: gw\r\n\r\n", None),
    (b"DELETE /v1/orders/ord_1 HTTP/1.1\r\nHost: gw\r\n\r\n", None),
    (b"GET http://gw/v1/availability HTTP/1.1\r\nHost: gw\r\n\r\n", None),
])
def test_only_a_plain_request_of_a_proxied_route_is_decided_at_arrival(
        arrivals: Arrivals, head: bytes, route: str | None) -> None:
    (message,) = _read(head)
    policy = arrivals.route_of(message)
    assert (policy.route_key if policy is not None else None) == route


def test_each_pipelined_request_is_decided_and_a_part_is_no_request() -> None:
    """The parser reads pipelined requests one by one (each may be decided at arrival when
    the ones before it are answered), and an unfinished head as nothing yet."""
    two = b"GET /v1/availability HTTP/1.1\r\nHost: gw\r\n\r\n" * 2
    assert [m.path for m in _read(two)] == ["/v1/availability"] * 2
    assert _read(b"GET /v1/availability HTTP/1.1\r\nHost: g") == []


# -- the refusal at arrival, on a real process ------------------------------------------------

@pytest.fixture
def tight(log_dir: Path, upstreams: Upstreams) -> Iterator[Gateway]:
    """Room for one availability request at a time; the backend holds each for 0.9 s."""
    gw = Gateway(log_dir, upstreams.urls, config={
        **NO_STALE_ANSWERS, "overload": {"max_in_flight": 2, "browse_share": 0.5}})
    upstreams.set_faults("availability", latency_ms=900)
    try:
        yield gw
    finally:
        upstreams.heal()
        gw.stop()


def _answers(sock: socket.socket, count: int) -> list[tuple[int, dict[str, str], bytes]]:
    """`count` HTTP/1.1 answers with Content-Length bodies, read off a raw socket in order
    (pipelined answers may arrive in one read)."""
    data = b""
    answers = []
    for _ in range(count):
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, "connection closed"
            data += chunk
        head, _, data = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers["content-length"])
        while len(data) < length:
            chunk = sock.recv(65536)
            assert chunk, "connection closed"
            data += chunk
        answers.append((int(lines[0].split(" ")[1]), headers, data[:length]))
        data = data[length:]
    assert not data, "more bytes than the answers asked for"
    return answers


def _answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 answer with a Content-Length body, read off a raw socket."""
    return _answers(sock, 1)[0]


async def test_a_refusal_at_arrival_is_the_handlers_answer_and_keeps_the_connection(
        tight: Gateway, http: aiohttp.ClientSession) -> None:
    held = asyncio.create_task(http.get(tight.url + AVAILABILITY))
    await asyncio.sleep(0.5)  # the one slot is taken
    port = int(tight.url.rsplit(":", 1)[1])
    raw = await asyncio.to_thread(socket.create_connection, ("127.0.0.1", port), 5)
    raw.settimeout(5)
    try:
        raw.sendall(HEAD)
        status, headers, body = await asyncio.to_thread(_answer, raw)
        # The same request the usual way (a header sends it there): the handler's answer.
        async with http.get(tight.url + AVAILABILITY, headers={
                "X-Request-ID": "probe-1", "Accept-Language": "zh-CN,zh;q=0.9",
                "Connection": "keep-alive"}) as usual:
            usual_body = await usual.read()
            usual_headers = {k.lower(): v for k, v in usual.headers.items()}
        assert status == usual.status == 503
        assert orjson.loads(body) == orjson.loads(usual_body)
        assert orjson.loads(body)["code"] == "OVERLOADED"
        assert orjson.loads(body)["request_id"] == "probe-1"
        assert orjson.loads(body)["title"] == "系统繁忙"
        for name in ("content-type", "content-language", "cache-control", "retry-after",
                     "x-request-id", "x-content-type-options", "content-security-policy",
                     "x-frame-options", "referrer-policy", "server"):
            assert headers[name] == usual_headers[name], name

        # Asked again at once: told Retry-After 1, so the answer waits out that second,
        # and tells the client to wait twice as long.
        asked = time.monotonic()
        raw.sendall(HEAD.replace(b"probe-1", b"probe-2"))
        status, headers, body = await asyncio.to_thread(_answer, raw)
        assert status == 503 and orjson.loads(body)["request_id"] == "probe-2"
        assert headers["retry-after"] == "2"
        assert time.monotonic() - asked > 0.6

        async with await held as first:
            assert first.status == 200
        # The connection is still open and, with room again, gets its answer.
        raw.sendall(HEAD.replace(b"probe-1", b"probe-3"))
        status, headers, _ = await asyncio.to_thread(_answer, raw)
        assert status == 200 and headers["x-request-id"] == "probe-3"
    finally:
        raw.close()
    await asyncio.sleep(0.7)  # refusals at arrival reach the metrics on the housekeeping tick
    async with http.get(tight.url + "/metrics") as resp:
        metrics = await resp.text()
    assert 'gateway_shed_requests_total{route="/v1/availability"} 3.0' in metrics
    assert ('gateway_requests_total{code="OVERLOADED",route="/v1/availability",'
            'status="503"} 3.0') in metrics


def _in_flight(gw: Gateway) -> float:
    import urllib.request
    with urllib.request.urlopen(gw.url + "/metrics", timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith("gateway_requests_in_flight "):
                return float(line.split()[1])
    raise AssertionError("no in-flight gauge")


@pytest.mark.parametrize("settings", ["defaults", "tight"])
async def test_counts_never_leak_when_clients_vanish_or_pipeline(
        log_dir: Path, upstreams: Upstreams, settings: str) -> None:
    config = {"overload": {"max_in_flight": 4, "browse_share": 0.5}} if settings == "tight" else {}
    gw = Gateway(log_dir, upstreams.urls, config=config)
    upstreams.set_faults("availability", latency_ms=200)
    port = int(gw.url.rsplit(":", 1)[1])
    try:
        def vanish(count: int) -> None:
            # Heads sent, then gone before (or while) they are answered.
            socks = [socket.create_connection(("127.0.0.1", port), 5) for _ in range(count)]
            for sock in socks:
                sock.sendall(HEAD)
            for sock in socks[::2]:
                sock.close()
            time.sleep(0.05)
            for sock in socks[1::2]:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE)
                sock.close()

        await asyncio.to_thread(vanish, 60)
        # Pipelined: two heads in one write are both answered, in order.
        with socket.create_connection(("127.0.0.1", port), 5) as sock:
            # Pipelined answers come one after the other, each possibly after a backend
            # timeout and a retry (1 s each here) on a machine busy with the whole suite.
            sock.settimeout(20)
            sock.sendall(HEAD.replace(b"probe-1", b"pipe-1") + HEAD.replace(b"probe-1", b"pipe-2"))
            first, second = await asyncio.to_thread(_answers, sock, 2)
            assert [first[1]["x-request-id"], second[1]["x-request-id"]] == ["pipe-1", "pipe-2"]
        # The vanished requests' backend calls end (a 1 s timeout and retries at worst), and
        # the gauge, sampled every half second, must then show nothing left counted: a sample
        # taken before they ended says nothing, so it is read only after they can have.
        await asyncio.sleep(1.5)
        deadline = time.monotonic() + 10
        while _in_flight(gw) != 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.25)
        assert _in_flight(gw) == 0
        # And the limit still has all its room: a request is taken on again (its answer may
        # still be the backend's or its breaker's, on a machine too busy for 1 s timeouts).
        async with aiohttp.ClientSession() as http, http.get(gw.url + AVAILABILITY) as resp:
            body = await resp.json(content_type=None)
            assert resp.status == 200 or body["code"] != "OVERLOADED", body
    finally:
        upstreams.heal()
        gw.stop()


# -- the batch listener ----------------------------------------------------------------------

def test_a_crowd_of_new_connections_is_accepted_while_the_loop_is_busy() -> None:
    """With the loop busy 20 ms an iteration (a loaded gateway), 300 waiting connections
    are taken in a few iterations; one accept per iteration would take six seconds."""
    accepted: list[float] = []

    async def main() -> float:
        loop = asyncio.get_running_loop()
        server = web.Server(lambda request: web.Response(text="ok"))
        runner = web.ServerRunner(server)
        await runner.setup()
        site = EdgeSite(runner, "127.0.0.1", 0, backlog=1024, reuse_port=False)
        await site.start()
        port = runner.addresses[0][1]
        original = server.connection_made

        def counted(handler: object, transport: asyncio.Transport) -> None:
            accepted.append(time.monotonic())
            original(handler, transport)  # type: ignore[arg-type]

        server.connection_made = counted  # type: ignore[method-assign]
        busy = True

        def hog() -> None:
            time.sleep(0.02)
            if busy:
                loop.call_soon(hog)

        loop.call_soon(hog)
        clients: list[socket.socket] = []
        connect = threading.Thread(target=lambda: clients.extend(
            socket.create_connection(("127.0.0.1", port), 5) for _ in range(300)))
        started = time.monotonic()
        connect.start()
        while len(accepted) < 300 and time.monotonic() - started < 10:
            await asyncio.sleep(0.01)
        took = time.monotonic() - started
        busy = False
        connect.join()
        for sock in clients:
            sock.close()
        await runner.cleanup()
        return took

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        took = runner.run(main())
    assert len(accepted) == 300
    assert took < 3.0, f"300 connections took {took:.1f} s to be accepted"


# -- an open breaker's refusal at arrival -----------------------------------------------------

ORDER_HEAD = (b"GET /v1/orders/ord_1 HTTP/1.1\r\nHost: gw\r\nX-Request-ID: probe-b\r\n"
              b"Accept-Language: zh-CN\r\nX-Client-ID: shop-1\r\n\r\n")


def _ask_raw(gw: Gateway, head: bytes) -> tuple[int, dict[str, str], bytes]:
    with socket.create_connection(("127.0.0.1", int(gw.url.rsplit(":", 1)[1])), 5) as raw:
        raw.settimeout(5)
        raw.sendall(head)
        return _answer(raw)


async def _the_usual_way(http: aiohttp.ClientSession,
                         gw: Gateway) -> tuple[int, dict[str, str], bytes]:
    """ORDER_HEAD's request sent so that it is not decided at arrival (a `Connection`
    header sends it the usual way): the handler's answer."""
    async with http.get(gw.url + "/v1/orders/ord_1", headers={
            "X-Request-ID": "probe-b", "Accept-Language": "zh-CN", "X-Client-ID": "shop-1",
            "Connection": "keep-alive"}) as usual:
        return (usual.status, {k.lower(): v for k, v in usual.headers.items()},
                await usual.read())


def _metric(text: str, prefix: str) -> float:
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(prefix))


@pytest.mark.parametrize("settings", ["defaults", "tuned"])
async def test_an_open_breaker_answers_at_arrival_as_its_handler_would(
        log_dir: Path, upstreams: Upstreams, http: aiohttp.ClientSession, settings: str) -> None:
    config = ({"overload": {"max_in_flight": 8, "browse_share": 0.5}}
              if settings == "tuned" else {})
    with admin_gateway(log_dir, upstreams, config) as gw:
        gw.admin("POST", "/admin/breakers/order/open", ADMIN_TOKEN)
        status, headers, body = await asyncio.to_thread(_ask_raw, gw, ORDER_HEAD)
        usual_status, usual_headers, usual_body = await _the_usual_way(http, gw)
        assert status == usual_status == 503
        assert orjson.loads(body) == orjson.loads(usual_body)
        assert orjson.loads(body)["code"] == "CIRCUIT_OPEN"
        for name in ("content-type", "content-language", "cache-control", "retry-after",
                     "x-request-id", "x-content-type-options", "content-security-policy",
                     "x-frame-options", "referrer-policy", "server"):
            assert headers[name] == usual_headers[name], name
        async with http.get(gw.url + "/metrics") as resp:
            metrics = await resp.text()
        # Both counted at once; only the handler's answer has a duration.
        assert _metric(metrics, 'gateway_requests_total{code="CIRCUIT_OPEN",'
                                'route="/v1/orders/{order_id}"') == 2
        assert _metric(metrics, 'gateway_breaker_rejected_calls_total{backend="order"}') == 2
        assert _metric(metrics, 'gateway_request_duration_seconds_count{'
                                'route="/v1/orders/{order_id}"}') == 1

        # Whatever the handler checks before the breaker still answers first.
        for head, code in (
                (ORDER_HEAD.replace(b"shop-1", b"no spaces allowed"), "VALIDATION_FAILED"),
                (ORDER_HEAD.replace(b"X-Client-ID", b"X-Request-Timeout-Ms"), "VALIDATION_FAILED"),
                (ORDER_HEAD.replace(b"ord_1", b"o" * 65), "VALIDATION_FAILED")):
            status, _, body = await asyncio.to_thread(_ask_raw, gw, head)
            assert orjson.loads(body)["code"] == code, head

        # A maintenance window comes before the breaker, and answers at arrival too.
        gw.admin("PUT", "/admin/maintenance", ADMIN_TOKEN, {
            "scope": "order", "ends_at": datetime.fromtimestamp(time.time() + 600, UTC)
            .isoformat(), "message": {"en": "Upgrading orders.", "zh-CN": "订单系统升级中。"}})
        status, headers, body = await asyncio.to_thread(_ask_raw, gw, ORDER_HEAD)
        usual_status, usual_headers, usual_body = await _the_usual_way(http, gw)
        assert status == usual_status == 503
        assert orjson.loads(body) == orjson.loads(usual_body)
        assert orjson.loads(body)["code"] == "MAINTENANCE"
        assert orjson.loads(body)["announcement"] == "订单系统升级中。"
        assert abs(int(headers["retry-after"]) - int(usual_headers["retry-after"])) <= 1
        for name in ("content-type", "content-language", "cache-control", "x-request-id",
                     "x-content-type-options", "content-security-policy"):
            assert headers[name] == usual_headers[name], name
        # An SRE's bypass is judged by the handler: past the window, the breaker refuses.
        bypass = ORDER_HEAD.replace(b"\r\n\r\n", f"\r\nX-Maintenance-Bypass: {ADMIN_TOKEN}"
                                                   "\r\n\r\n".encode())
        status, _, body = await asyncio.to_thread(_ask_raw, gw, bypass)
        assert (status, orjson.loads(body)["code"]) == (503, "CIRCUIT_OPEN")
        async with http.get(gw.url + "/metrics") as resp:
            metrics = await resp.text()
        assert _metric(metrics, 'gateway_requests_total{code="MAINTENANCE",'
                                'route="/v1/orders/{order_id}"') == 2
        gw.admin("DELETE", "/admin/maintenance", ADMIN_TOKEN)
        # Back to automatic (closed): the call goes ahead to the backend.
        gw.admin("POST", "/admin/breakers/order/reset", ADMIN_TOKEN)
        status, headers, body = await asyncio.to_thread(_ask_raw, gw, ORDER_HEAD)
        assert status in (200, 404) and "retry-after" not in headers, body


async def test_with_api_keys_an_open_breaker_answers_after_the_key_check(
        log_dir: Path, upstreams: Upstreams) -> None:
    config = {"auth": {"api_keys": [{"client_id": "web-shop", "key_sha256": "0" * 64}]}}
    with admin_gateway(log_dir, upstreams, config) as gw:
        gw.admin("POST", "/admin/breakers/order/open", ADMIN_TOKEN)
        status, _, body = await asyncio.to_thread(_ask_raw, gw, ORDER_HEAD)
        assert (status, orjson.loads(body)["code"]) == (401, "UNAUTHORIZED")
