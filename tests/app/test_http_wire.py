"""The hot path's HTTP client (`gateway/backends/http_wire.py`) against real servers that misbehave
on purpose: each test scripts, byte for byte, what a backend on a loopback socket answers."""

from __future__ import annotations

import asyncio
import gzip
import ssl
import subprocess
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from pydantic import ValidationError

from gateway.backends.http_wire import (
    BadAnswer,
    ConnectFailed,
    Dropped,
    HttpWire,
    HttpWireError,
    TimedOut,
)
from gateway.backends.timer_wheel import TimerWheel
from gateway.contract.settings import UpstreamSettings
from tests.conftest import StartApp

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]
LIMIT = 64 * 1024


class Backend:
    """A loopback server running `script(reader, writer, n)` for its n-th connection."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.connections = 0
        self.requests: list[bytes] = []
        self.open = 0
        self.most_open = 0
        self.server: asyncio.Server | None = None
        self.port = 0
        self._serving: dict[asyncio.Task[None], asyncio.StreamWriter] = {}

    async def start(self, tls: ssl.SSLContext | None = None) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=tls)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        task = asyncio.current_task()
        assert task is not None
        self._serving[task] = writer
        try:
            await self.script(reader, writer, self.connections)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away: the script's end
        finally:
            self.open -= 1
            self._serving.pop(task, None)
            writer.close()

    async def read_request(self, reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        request = head + (await reader.readexactly(length) if length else b"")
        self.requests.append(request)
        return request

    async def stop(self) -> None:
        """Stop listening, cut every connection still served, and wait for their scripts to
        end (on the cut), so none is left to the loop's teardown."""
        assert self.server is not None
        self.server.close()
        for writer in list(self._serving.values()):
            writer.transport.abort()
        if self._serving:
            _, pending = await asyncio.wait(list(self._serving), timeout=5)
            assert not pending, "a script did not end when its connection was cut"


Serve = Callable[..., Awaitable[tuple[Backend, HttpWire]]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    started: list[tuple[Backend, HttpWire]] = []

    async def start(script: Script, *, size: int = 4, keepalive_s: float = 30,
                    tls: ssl.SSLContext | None = None,
                    ca_file: str | None = None) -> tuple[Backend, HttpWire]:
        backend = Backend(script)
        await backend.start(tls)
        scheme = "https" if tls else "http"
        wire = HttpWire(f"{scheme}://127.0.0.1:{backend.port}", size=size,
                        keepalive_s=keepalive_s, connect_timeout_s=1.0, max_body_bytes=LIMIT,
                        wheel=TimerWheel(), ca_file=ca_file)
        started.append((backend, wire))
        return backend, wire

    yield start
    for backend, wire in started:
        await wire.close()
        await backend.stop()


def answering(*answers: bytes, then_close: bool = False) -> Script:
    """Answer each request on a connection with the next of `answers`, in turn."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     n: int) -> None:
        backend = _backend_of(script)
        for answer in answers:
            await backend.read_request(reader)
            writer.write(answer)
            await writer.drain()
        if not then_close:
            await reader.read()  # keep the connection until the client closes it

    return script


def _backend_of(script: Script) -> Backend:
    return script.backend  # type: ignore[attr-defined,no-any-return]


async def _start(serve: Serve, script: Script,
                 **kwargs: object) -> tuple[Backend, HttpWire]:
    backend, wire = await serve(script, **kwargs)
    script.backend = backend  # type: ignore[attr-defined]
    return backend, wire


def _deadline(seconds: float = 2.0) -> float:
    return asyncio.get_running_loop().time() + seconds


async def _get(wire: HttpWire, *, repeatable: bool = True, seconds: float = 2.0,
               body: bytes | None = None) -> tuple[int, bytes, dict[str, str]]:
    answer = await wire.request("POST" if body else "GET", "/x?a=1", {"X-Request-ID": "r1"},
                                body, _deadline(seconds), repeatable=repeatable)
    return answer.status, answer.body, answer.headers


OK = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{"ok":true}'


async def test_a_content_length_answer_and_the_connection_reused(serve: Serve) -> None:
    backend, wire = await _start(serve, answering(OK, OK, OK))
    for _ in range(3):
        status, body, headers = await _get(wire)
        assert (status, body, headers["content-type"]) == (200, b'{"ok":true}',
                                                            "application/json")
    assert backend.connections == 1
    first = backend.requests[0]
    assert first.startswith(b"GET /x?a=1 HTTP/1.1\r\nHost: 127.0.0.1:")
    assert b"\r\nX-Request-ID: r1\r\n" in first


async def test_a_body_is_sent_with_its_length(serve: Serve) -> None:
    backend, wire = await _start(serve, answering(OK))
    await _get(wire, body=b'{"a":"\xe5\xbc\xa0"}', repeatable=False)
    assert backend.requests[0].endswith(b'Content-Length: 11\r\n\r\n{"a":"\xe5\xbc\xa0"}')


async def test_a_chunked_answer(serve: Serve) -> None:
    chunked = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"4\r\n{\"a\"\r\n5\r\n:12}\n\r\n0\r\n\r\n")
    backend, wire = await _start(serve, answering(chunked, OK))
    assert (await _get(wire))[1] == b'{"a":12}\n'
    assert (await _get(wire))[1] == b'{"ok":true}'  # the chunked answer ended cleanly
    assert backend.connections == 1


async def test_an_answer_framed_by_the_connection_closing(serve: Serve) -> None:
    _, wire = await _start(serve, answering(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{\"until\":\"close\"}",
        then_close=True))
    assert (await _get(wire))[1] == b'{"until":"close"}'
    assert wire.open_connections == 0


@pytest.mark.parametrize("coding", ["gzip", "deflate", "raw deflate"])
async def test_compressed_answers_are_decoded(serve: Serve, coding: str) -> None:
    plain = b'{"text":"' + b"compressible " * 200 + b'"}'
    if coding == "gzip":
        packed, name = gzip.compress(plain), b"gzip"
    elif coding == "deflate":
        packed, name = zlib.compress(plain), b"deflate"
    else:
        squeezer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        packed, name = squeezer.compress(plain) + squeezer.flush(), b"deflate"
    answer = (b"HTTP/1.1 200 OK\r\nContent-Encoding: " + name
              + b"\r\nContent-Length: %d\r\n\r\n" % len(packed) + packed)
    _, wire = await _start(serve, answering(answer))
    assert (await _get(wire))[1] == plain


async def test_a_compressed_answer_is_bounded_once_decoded(serve: Serve) -> None:
    bomb = gzip.compress(b"0" * (LIMIT * 20))
    answer = (b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n"
              % len(bomb) + bomb)
    _, wire = await _start(serve, answering(answer))
    with pytest.raises(BadAnswer, match="too large once decoded"):
        await _get(wire)
    assert wire.open_connections == 0


@pytest.mark.parametrize("header", [b"Connection: close\r\n", b""])
async def test_a_closing_answer_is_not_reused(serve: Serve, header: bytes) -> None:
    version = b"HTTP/1.1" if header else b"HTTP/1.0"  # HTTP/1.0 closes unless told otherwise
    answer = version + b" 200 OK\r\n" + header + b"Content-Length: 2\r\n\r\n{}"
    backend, wire = await _start(serve, answering(answer))
    assert (await _get(wire))[1] == b"{}"
    assert (await _get(wire))[1] == b"{}"
    assert backend.connections == 2


async def test_informational_answers_before_the_real_one_are_skipped(serve: Serve) -> None:
    answer = (b"HTTP/1.1 100 Continue\r\n\r\n"
              b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n" + OK)
    backend, wire = await _start(serve, answering(answer, OK))
    status, body, headers = await _get(wire)
    assert (status, body) == (200, b'{"ok":true}')
    assert "link" not in headers
    assert (await _get(wire))[0] == 200
    assert backend.connections == 1


def _closing_after(answered: int) -> Script:
    """Answer `answered` requests on the first connection, then close it on reading the
    next, as a backend whose keep-alive timeout ends just as the connection is reused."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     n: int) -> None:
        backend = _backend_of(script)
        for _ in range(answered if n == 1 else 100):
            await backend.read_request(reader)
            writer.write(OK)
            await writer.drain()
        await backend.read_request(reader)
        writer.transport.abort()

    return script


async def test_a_reused_connection_closed_under_a_read_is_sent_again_once(serve: Serve) -> None:
    backend, wire = await _start(serve, _closing_after(1))
    await _get(wire)
    assert (await _get(wire, repeatable=True))[0] == 200
    assert backend.connections == 2
    assert len(backend.requests) == 3  # the second read was sent twice


async def test_a_reused_connection_closed_under_a_write_is_an_unknown_outcome(serve: Serve) -> None:
    backend, wire = await _start(serve, _closing_after(1))
    await _get(wire)
    with pytest.raises(Dropped) as caught:
        await _get(wire, repeatable=False, body=b"{}")
    assert caught.value.sent and not caught.value.answered
    assert len(backend.requests) == 2  # never sent twice
    assert backend.connections == 1


async def test_a_fresh_connection_closed_is_not_sent_again(serve: Serve) -> None:
    backend, wire = await _start(serve, _closing_after(0))
    with pytest.raises(Dropped):
        await _get(wire, repeatable=True)
    assert len(backend.requests) == 1


async def test_a_connection_dropped_mid_answer(serve: Serve) -> None:
    _, wire = await _start(serve, answering(
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"half", then_close=True))
    with pytest.raises(Dropped) as caught:
        await _get(wire)
    assert caught.value.answered


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (LIMIT + 1),
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    + (b"4000\r\n" + b"x" * 0x4000 + b"\r\n") * 5,
], ids=["declared", "chunked"])
async def test_an_oversized_answer_fails_and_drops_the_connection(serve: Serve,
                                                                  answer: bytes) -> None:
    _, wire = await _start(serve, answering(answer))
    with pytest.raises(BadAnswer, match="too large"):
        await _get(wire)
    assert wire.open_connections == 0


async def test_a_slow_body_times_out_at_the_deadline(serve: Serve) -> None:
    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      n: int) -> None:
        await _backend_of(trickle).read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n")
        for _ in range(50):
            writer.write(b"x")
            await writer.drain()
            await asyncio.sleep(0.05)

    _, wire = await _start(serve, trickle)
    loop = asyncio.get_running_loop()
    began = loop.time()
    with pytest.raises(TimedOut) as caught:
        await _get(wire, seconds=0.3)
    assert 0.3 <= loop.time() - began < 0.6
    assert caught.value.sent and caught.value.answered
    assert wire.open_connections == 0


async def test_no_answer_at_all_times_out(serve: Serve) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     n: int) -> None:
        await _backend_of(silent).read_request(reader)
        await reader.read()

    _, wire = await _start(serve, silent)
    with pytest.raises(TimedOut) as caught:
        await _get(wire, seconds=0.2)
    assert caught.value.sent and not caught.value.answered


async def test_an_unsolicited_second_answer_in_the_same_read_is_never_pooled(
        serve: Serve) -> None:
    """A backend that answers twice (both in one write): the second is nobody's. The next
    caller must get its own answer on a fresh connection, not the stray one."""
    other = OK.replace(b'{"ok":true}', b'{"no":true}')
    backend, wire = await _start(serve, answering(OK + other, OK, OK))
    assert await _get(wire, repeatable=False) == (200, b'{"ok":true}', _headers())
    status, body, _ = await _get(wire, repeatable=False)
    assert (status, body) == (200, b'{"ok":true}')
    assert backend.connections == 2, "the connection with the stray answer was dropped"


async def test_an_unsolicited_half_answer_in_the_same_read_is_never_pooled(
        serve: Serve) -> None:
    backend, wire = await _start(serve, answering(OK + b"HTTP/1.1 200 OK\r\nX-Half: 1\r\n",
                                                  OK))
    await _get(wire, repeatable=False)
    assert (await _get(wire, repeatable=False))[:2] == (200, b'{"ok":true}')
    assert backend.connections == 2


@pytest.mark.parametrize("head", [
    b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-H%d: v\r\n" % n for n in range(65)),
    b"HTTP/1.1 200 OK\r\nX-Long: " + b"v" * 8200 + b"\r\n",
])
async def test_an_answer_head_past_a_clients_limits_is_a_bad_answer(serve: Serve,
                                                                   head: bytes) -> None:
    _, wire = await _start(serve, answering(head + b"Content-Length: 0\r\n\r\n"))
    with pytest.raises(BadAnswer, match="head too large"):
        await _get(wire, repeatable=False)
    assert wire.open_connections == 0, "the connection went with its answer"


async def test_an_endless_answer_head_is_bounded_as_it_comes(serve: Serve) -> None:
    """One header line that never ends: refused once it passes what a whole head may hold,
    not buffered until it ends."""

    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      n: int) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nX-Endless: ")
        for _ in range(200):  # 12.8 MB, far past 64 x 8190 bytes
            writer.write(b"v" * 65536)
            await writer.drain()
        await reader.read()

    _, wire = await _start(serve, endless)
    with pytest.raises(BadAnswer, match="head too large"):
        await _get(wire, repeatable=False, seconds=10)


def _headers() -> dict[str, str]:
    return {"content-type": "application/json", "content-length": "11"}


async def test_not_http_is_a_bad_answer(serve: Serve) -> None:
    _, wire = await _start(serve, answering(b"+PONG\r\n"))
    with pytest.raises(BadAnswer) as caught:
        await _get(wire)
    assert caught.value.sent


async def test_the_pool_bounds_connections_and_callers_wait_in_turn(serve: Serve) -> None:
    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        backend = _backend_of(slow)
        while True:
            await backend.read_request(reader)
            await asyncio.sleep(0.05)
            writer.write(OK)
            await writer.drain()

    backend, wire = await _start(serve, slow, size=2)
    results = await asyncio.gather(*(_get(wire) for _ in range(8)))
    assert [r[0] for r in results] == [200] * 8
    assert backend.most_open == 2
    assert wire.open_connections == 2
    # A caller that cannot get a connection before its deadline was never sent.
    busy = [asyncio.ensure_future(_get(wire, seconds=5)) for _ in range(2)]
    await asyncio.sleep(0.01)
    with pytest.raises(TimedOut) as caught:
        await _get(wire, seconds=0.02)
    assert not caught.value.sent
    await asyncio.gather(*busy)


async def test_a_cancelled_caller_frees_its_connection(serve: Serve) -> None:
    async def slow_then_ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                           n: int) -> None:
        backend = _backend_of(slow_then_ok)
        await backend.read_request(reader)
        if n == 1:
            await reader.read()  # never answers the first connection
            return
        writer.write(OK)
        await writer.drain()
        await reader.read()

    backend, wire = await _start(serve, slow_then_ok, size=1)
    call = asyncio.ensure_future(_get(wire))
    await asyncio.sleep(0.05)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    # Its answer, should it come, must not be read as the next caller's.
    assert (await _get(wire))[0] == 200
    assert backend.connections == 2


async def test_idle_connections_are_closed_after_keepalive(serve: Serve) -> None:
    backend, wire = await _start(serve, answering(OK, OK), keepalive_s=0.1)
    await _get(wire)
    await asyncio.sleep(0.35)
    assert wire.open_connections == 0  # swept, not waiting for the next call
    await _get(wire)
    assert backend.connections == 2


async def test_no_listener_is_a_failed_connect_with_nothing_sent() -> None:
    wire = HttpWire("http://127.0.0.1:9", size=1, keepalive_s=1, connect_timeout_s=1,
                    max_body_bytes=LIMIT, wheel=TimerWheel())
    with pytest.raises(ConnectFailed) as caught:
        await _get(wire)
    assert not caught.value.sent
    assert wire.open_connections == 0


async def test_a_line_break_in_a_header_value_is_never_sent(serve: Serve) -> None:
    backend, wire = await _start(serve, answering(OK))
    with pytest.raises(ValueError):
        await wire.request("GET", "/", {"X-A": "a\r\nX-B: b"}, None, _deadline(),
                           repeatable=True)
    assert backend.requests == []


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, made by openssl: it is its own CA."""
    where = tmp_path_factory.mktemp("tls")
    cert, key = where / "cert.pem", where / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


async def test_tls_to_an_https_backend(serve: Serve, certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    backend, wire = await _start(serve, answering(OK, OK), tls=tls, ca_file=str(cert))
    assert (await _get(wire))[1] == b'{"ok":true}'
    assert (await _get(wire))[0] == 200
    assert backend.connections == 1
    # A certificate no trusted CA signed: no connection, nothing sent.
    untrusting = HttpWire(f"https://127.0.0.1:{backend.port}", size=1, keepalive_s=1,
                          connect_timeout_s=1, max_body_bytes=LIMIT, wheel=TimerWheel())
    with pytest.raises(ConnectFailed) as caught:
        await _get(untrusting)
    assert not caught.value.sent
    assert isinstance(caught.value, HttpWireError)


async def test_the_gateway_calls_an_https_backend(gateway_app: StartApp,
                                                  certificate: tuple[Path, Path]) -> None:
    """`upstreams.<name>.ca_file` end to end: the gateway's availability backend on TLS."""
    cert, key = certificate
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)

    async def availability(request: web.Request) -> web.Response:
        return web.json_response({"available": True, "address": request.query["address"],
                                  "product": request.query["product"]})

    backend = web.Application()
    backend.router.add_get("/availability", availability)
    runner = web.AppRunner(backend)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls)
    await site.start()
    port = runner.addresses[0][1]
    try:
        gw = await gateway_app({"upstreams": {"availability": {
            "url": f"https://127.0.0.1:{port}", "ca_file": str(cert)}}})
        async with aiohttp.ClientSession() as client, client.get(
                gw.url + "/v1/availability", params={"address": "Beijing 1",
                                                     "product": "fiber"}) as resp:
            assert resp.status == 200
            assert (await resp.json())["address"] == "Beijing 1"
    finally:
        await runner.cleanup()


def test_ca_file_is_checked_with_the_settings(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="only for an https"):
        UpstreamSettings(url="http://127.0.0.1:1", ca_file=str(tmp_path))
    with pytest.raises(ValidationError, match="no such file"):
        UpstreamSettings(url="https://127.0.0.1:1", ca_file=str(tmp_path / "none.pem"))


# --- the timer wheel ------------------------------------------------------------------------


class _Entry:
    def __init__(self, wheel: TimerWheel | None = None, again: float = 0.0) -> None:
        self.expired_at: float | None = None
        self._wheel, self._again = wheel, again

    def expire(self) -> None:
        loop = asyncio.get_running_loop()
        self.expired_at = loop.time()
        if self._wheel is not None and self._again:
            self._wheel.add(loop.time() + self._again, _Entry())


async def test_the_wheel_expires_entries_after_their_deadline_never_before() -> None:
    wheel = TimerWheel()
    loop = asyncio.get_running_loop()
    now = loop.time()
    entries = {delay: _Entry() for delay in (0.0, 0.015, 0.05, 0.12)}
    for delay, entry in entries.items():
        wheel.add(now + delay, entry)
    assert len(wheel) == 4
    await asyncio.sleep(0.2)
    for delay, entry in entries.items():
        assert entry.expired_at is not None
        assert now + delay <= entry.expired_at < now + delay + 0.06, delay
    assert len(wheel) == 0


async def test_the_wheel_forgets_a_removed_entry_and_stops_when_empty() -> None:
    wheel = TimerWheel()
    loop = asyncio.get_running_loop()
    kept, removed = _Entry(), _Entry()
    wheel.add(loop.time() + 0.03, kept)
    slot = wheel.add(loop.time() + 0.03, removed)
    wheel.remove(slot, removed)
    wheel.remove(slot, removed)  # twice is harmless
    assert len(wheel) == 1
    await asyncio.sleep(0.08)
    assert kept.expired_at is not None and removed.expired_at is None
    assert wheel._handle is None  # no timer left running for nothing
    # A deadline already past expires at the next tick.
    late = _Entry()
    wheel.add(loop.time() - 5, late)
    await asyncio.sleep(0.03)
    assert late.expired_at is not None


async def test_an_entry_added_while_expiring_is_not_lost() -> None:
    wheel = TimerWheel()
    loop = asyncio.get_running_loop()
    wheel.add(loop.time(), _Entry(wheel, again=0.001))
    await asyncio.sleep(0.08)
    assert len(wheel) == 0
