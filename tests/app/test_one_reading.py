"""One reading of the byte stream: the answers at arrival are the parser's answers.

The connection layer answers some plain heads at arrival (maintenance, an open
breaker, overload: `arrivals.py`). These tests hold it to the contract's "one
reading of the byte stream": every answer corresponds to one request as aiohttp's
parser reads the connection, however the bytes are split across reads, and no
backend sees a request the parser did not read.

The differential property test serves two gateways in this process, on real
sockets: one with the fast lane, one without it (every request through its
handler). Each gets the same stream of valid and hostile requests, split at the
same random byte boundaries, each piece read by the gateway on its own before
the next is written (aiohttp's own answers depend on where reads end: a parse
error drops the requests read with it). Their answers (status, request id,
problem code, the connection's end) must be equal one for one, and so must what
their backends received. Hypothesis runs it derandomized (the same examples on
every run, so CI is reproducible), 300 examples for each settings variant; a
failure notes the scenario, the pieces and the cuts.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import fcntl
import termios
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
import httptools
import orjson
import pytest
import uvloop
from aiohttp import web
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from gateway.app import ADMISSION, ARRIVALS, EDGE, build_app
from gateway.contract.settings import Settings
from gateway.edge.admission import PRIORITY_BROWSE, PRIORITY_READ
from gateway.edge.connections import EdgeRunner, EdgeSite
from loadtest.harness import merge
from tests.conftest import ADMIN_TOKEN

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
# The end of every stream: answered the usual way, and the connection closed after it.
LAST = b"GET /healthz HTTP/1.1\r\nHost: gw\r\nX-Request-ID: last\r\nConnection: close\r\n\r\n"
READ_TIMEOUT_S = 5.0
EXAMPLES = 300  # per settings variant
PIECE_READ_S = 0.5  # a gateway that paused reading takes the next piece in the same read


# -- a backend that records what reaches it -----------------------------------------------------

@dataclass
class Recorder:
    """Every request a backend received: method, path with query, request id."""

    seen: list[tuple[str, str, str | None]] = field(default_factory=list)

    async def answer(self, request: web.Request) -> web.Response:
        await request.read()
        self.seen.append((request.method, request.path_qs, request.headers.get("X-Request-ID")))
        status = 201 if request.method == "POST" else 200
        return web.json_response({"id": "rec_1", "status": "ok"}, status=status)


@asynccontextmanager
async def recording_backend() -> AsyncIterator[tuple[str, Recorder]]:
    recorder = Recorder()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", recorder.answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}", recorder
    finally:
        await runner.cleanup()


# -- a gateway served by the edge's own runner, in this process ---------------------------------

@dataclass
class Served:
    port: int
    app: web.Application
    recorder: Recorder
    runner: EdgeRunner


@asynccontextmanager
async def served(config: dict[str, Any], *, fast_lane: bool) -> AsyncIterator[Served]:
    """build_app on `config` behind the connection layer the server uses (EdgeRunner,
    EdgeSite), with or without the answers at arrival."""
    async with recording_backend() as (url, recorder):
        tree: dict[str, Any] = {
            "upstreams": {name: {"url": url, "timeout_s": 2.0}
                          for name in ("order", "payment", "availability")},
            # The property tests call the admin API before and after every example.
            "admin": {"token": ADMIN_TOKEN, "rate_per_s": 10_000, "burst": 100_000},
            "server": {"access_log": False}}
        merge(tree, config)
        settings = Settings.model_validate(tree)
        app = build_app(settings)
        edge = app[EDGE]
        runner = EdgeRunner(app, settings.server, edge,
                            app[ARRIVALS] if fast_lane else None, handle_signals=False,
                            access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = EdgeSite(runner, "127.0.0.1", 0, backlog=128, reuse_port=False)
        await site.start()
        try:
            yield Served(runner.addresses[0][1], app, recorder, runner)
        finally:
            await runner.cleanup()


# -- raw exchanges ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Answer:
    status: int
    request_id: str | None
    code: str | None  # a problem answer's code


class _Answers:
    """httptools callbacks collecting every answer of a byte stream."""

    def __init__(self) -> None:
        self.found: list[Answer] = []
        self._headers: dict[str, str] = {}
        self._body = b""
        self.parser = httptools.HttpResponseParser(self)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self._body += body

    def on_message_complete(self) -> None:
        code = None
        if self._headers.get("content-type", "").startswith("application/problem+json"):
            code = orjson.loads(self._body).get("code")
        self.found.append(Answer(self.parser.get_status_code(),
                                 _ours(self._headers.get("x-request-id")), code))
        self._headers, self._body = {}, b""


class Collector(Protocol):
    """An httptools response parser with the answers it has collected."""

    parser: httptools.HttpResponseParser

    @property
    def found(self) -> Sequence[object]: ...


async def ask(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes,
              answers: Collector) -> bool:
    """Send `request` and read until `answers` holds an answer; False if the connection
    closed before one came."""
    writer.write(request)
    await writer.drain()
    async with asyncio.timeout(5):
        while not answers.found:
            chunk = await reader.read(65536)
            if not chunk:
                return False
            answers.parser.feed_data(chunk)
    return True


def _ours(request_id: str | None) -> str | None:
    """A request id the stream sent; one the gateway made up (random) reads "made"."""
    if request_id is None or request_id in ("last", "a-post", "a-get") or (
            request_id[:1] == "p" and request_id[1:].isdigit()):
        return request_id
    return "made"


async def exchange(gw: Served, pieces: list[bytes]) -> tuple[list[Answer], bool]:
    """Send `pieces` one write each, each read by the gateway on its own before the next is
    written, while reading every answer; whether the gateway closed the connection.
    (Answers are read as they come: a reset, after a close with bytes unread, drops what
    the client's kernel holds.)"""
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    local_port = writer.get_extra_info("sockname")[1]
    answers = _Answers()
    reading = asyncio.create_task(_read_all(reader, answers))
    try:
        await _accepted(gw, local_port)
        # The gateway may answer and close before the rest is written (uvloop then raises
        # RuntimeError on a write): what it said is read below all the same.
        with contextlib.suppress(ConnectionError, RuntimeError):
            for piece in pieces:
                writer.write(piece)
                await writer.drain()
                await _read_by_gateway(gw, local_port)
        closed = await reading
        return answers.found, closed
    finally:
        reading.cancel()
        writer.close()


async def _read_all(reader: asyncio.StreamReader, answers: _Answers) -> bool:
    """Feed every answer to `answers`; whether the gateway closed the connection."""
    try:
        async with asyncio.timeout(READ_TIMEOUT_S):
            while chunk := await reader.read(65536):
                answers.parser.feed_data(chunk)
    except TimeoutError:
        return False
    except ConnectionError:
        pass
    return True


async def _read_by_gateway(gw: Served, client_port: int) -> None:
    """Wait until the gateway's end of the client's connection holds no unread byte: the
    piece just written was one read of its own, whatever the scheduling of this machine."""
    deadline = asyncio.get_running_loop().time() + PIECE_READ_S
    while asyncio.get_running_loop().time() < deadline:
        unread = _unread_at_gateway(gw, client_port)
        if not unread:
            return
        await asyncio.sleep(0.0005)


async def _accepted(gw: Served, client_port: int) -> None:
    deadline = asyncio.get_running_loop().time() + PIECE_READ_S
    while (_gateway_end(gw, client_port) is None
           and asyncio.get_running_loop().time() < deadline):
        await asyncio.sleep(0.0005)


def _gateway_end(gw: Served, client_port: int) -> asyncio.Transport | None:
    assert gw.runner.server is not None
    for connection in gw.runner.server.connections:
        transport = connection.transport
        if transport is not None and transport.get_extra_info("peername")[1] == client_port:
            return transport
    return None


def _unread_at_gateway(gw: Served, client_port: int) -> int:
    transport = _gateway_end(gw, client_port)
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None or sock.fileno() < 0:
        return 0  # closed: nothing more will be read
    count = array.array("i", [0])
    fcntl.ioctl(sock.fileno(), termios.FIONREAD, count)
    return count[0]


def split(stream: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c for c in cuts if 0 < c < len(stream)})
    return [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]


# -- the reproduction, directly ---------------------------------------------------------

PAY_BODY = b"0123456789" + b"x" * 59
ATTACK = [
    b"POST /v1/payments HTTP/1.1\r\nHost: x\r\nX-Request-ID: a-post\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 69\r\n\r\n" + PAY_BODY[:10],
    PAY_BODY[10:] + b"GET /v1/payments/HIDDEN HTTP/1.1\r\nHost: x\r\nX-Pad: ",
    b"GET /v1/orders/a HTTP/1.1\r\nHost: x\r\nX-Request-ID: a-get\r\n\r\n",
    b"z\r\n\r\n",
]
ORDERS_DOWN = {"maintenance": {"windows": [{"scope": "GET /v1/orders/{order_id}"}]}}


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        yield runner.get_loop()


def test_a_head_the_parser_holds_unfinished_is_never_answered_at_arrival(
        loop: asyncio.AbstractEventLoop) -> None:
    """The split of the hardening issue: the read that ends the POST's body starts a head,
    and the next read is a whole GET head under maintenance. The parser reads that GET as
    part of the unfinished head (a second Host: 400); nothing may answer it as a request of
    its own, and the hidden request never reaches the payment backend."""

    async def main() -> tuple[list[Answer], bool, Recorder]:
        async with served(ORDERS_DOWN, fast_lane=True) as gw:
            answers, closed = await exchange(gw, ATTACK)
            return answers, closed, gw.recorder

    answers, closed, recorder = loop.run_until_complete(main())
    assert [(a.status, a.code) for a in answers] == [
        (415, "UNSUPPORTED_MEDIA_TYPE"), (400, "MALFORMED_REQUEST")], answers
    assert closed
    assert not [seen for seen in recorder.seen if "HIDDEN" in seen[1]]


# -- the differential property test -------------------------------------------------------------

def _rid(n: int) -> bytes:
    return f"X-Request-ID: p{n}\r\n".encode()


_N = st.integers(0, 10**6)


def _plain(target: bytes) -> st.SearchStrategy[list[bytes]]:
    return st.builds(lambda n: [b"GET " + target + b" HTTP/1.1\r\nHost: gw\r\n" + _rid(n)
                                + b"\r\n"], _N)


def _with_body(head: bytes, body: bytes, split_at: int) -> list[bytes]:
    """A request with a body, as two fragments (a client writing the body's rest later)."""
    whole = head + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    at = len(whole) - len(body) + min(split_at, len(body))
    return [whole[:at], whole[at:]]


# Each piece is a request (or bytes that are none) as fragments: a read may end between
# any two fragments, or anywhere inside one.
_FAST_LANE = st.one_of(
    _plain(b"/v1/orders/ord_1"), _plain(b"/v1/payments/pay_1"),
    _plain(b"/v1/availability?address=Beijing%201&product=fiber-500"),
    _plain(b"/v1/orders/ord_2?x=1"))
_USUAL_WAY = st.one_of(
    st.builds(lambda n: [b"GET /v1/orders/ord_3 HTTP/1.1\r\nHost: gw\r\n"
                         b"Connection: keep-alive\r\n" + _rid(n) + b"\r\n"], _N),
    st.builds(lambda n: [b"GET /v1/orders/ord_4 HTTP/1.0\r\nHost: gw\r\n" + _rid(n)
                         + b"\r\n"], _N))
_BODIES = st.one_of(
    st.builds(lambda n, body, at: _with_body(
        b"POST /v1/payments HTTP/1.1\r\nHost: gw\r\n" + _rid(n)
        + b"Content-Type: text/plain\r\n", body, at),
        _N, st.binary(min_size=1, max_size=40), st.integers(0, 40)),
    st.builds(lambda n, at: _with_body(
        b"POST /v1/orders HTTP/1.1\r\nHost: gw\r\n" + _rid(n)
        + b"Content-Type: application/json\r\nIdempotency-Key: "
        + str(uuid.uuid4()).encode() + b"\r\n", b"{}", at), _N, st.integers(0, 2)))
# Unfinished heads: what follows becomes part of them.
_UNFINISHED = st.sampled_from([
    [b"GET /v1/payments/HIDDEN HTTP/1.1\r\nHost: x\r\nX-Pad: "],
    [b"GET /v1/payments/HIDDEN HTTP/1.1\r\nX-Pad: "],
    [b"GET /v1/orders/ord_5 HTTP/1.1\r\n"]])
# Bytes the parser refuses.
_REFUSED = st.sampled_from([
    [b"GET /v1/orders/ord_6 HTTP/1.1\nHost: gw\n\n"],
    [b"GET /v1/orders/ord_7 HTTP/1.1\r\nHost: gw\r\nX-A: 1\r\n folded\r\n\r\n"],
    [b"GET /v1/orders/ord_8 HTTP/1.1\r\nHost: gw\r\nX-A: \x00\r\n\r\n"],
    [b"GET /v1/orders/ord_9 HTTP/1.1\r\nHost: gw\r\nBad Name: 1\r\n\r\n"],
    [b"POST /v1/orders HTTP/1.1\r\nHost: gw\r\nContent-Length: 3\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"],
    [b"POST /v1/orders HTTP/1.1\r\nHost: gw\r\nContent-Length: 1\r\n"
     b"Content-Length: 2\r\n\r\n{}"]])
_PIECES = st.one_of(_FAST_LANE, _USUAL_WAY, _BODIES, _UNFINISHED, _REFUSED)


@st.composite
def _reads(draw: st.DrawFn) -> list[bytes]:
    """A stream of pieces (then LAST), as the reads the gateway gets: cut at some of the
    fragments' ends and at a few arbitrary bytes."""
    fragments = [f for piece in draw(st.lists(_PIECES, min_size=1, max_size=6)) for f in piece]
    stream = b"".join(fragments) + LAST
    cuts, end = [], 0
    for fragment in fragments:
        end += len(fragment)
        if draw(st.booleans()):
            cuts.append(end)
    cuts += draw(st.lists(st.integers(1, len(stream) - 1), max_size=3))
    return split(stream, cuts)


@dataclass(frozen=True)
class Scenario:
    maintenance: str | None  # a window's scope
    open_breaker: str | None
    overload: bool


async def _apply(gw: Served, scenario: Scenario, http: aiohttp.ClientSession) -> list[int]:
    """Put `scenario` in force on `gw`; the admission slots it holds."""
    base = f"http://127.0.0.1:{gw.port}"
    if scenario.maintenance is not None:
        async with http.put(base + "/admin/maintenance", headers=ADMIN,
                            json={"scope": scenario.maintenance}) as resp:
            assert resp.status in (200, 201), await resp.text()
    if scenario.open_breaker is not None:
        async with http.post(f"{base}/admin/breakers/{scenario.open_breaker}/open",
                             headers=ADMIN) as resp:
            assert resp.status == 200, await resp.text()
    held = []
    if scenario.overload:
        admission = gw.app[ADMISSION]
        for priority in (PRIORITY_BROWSE, PRIORITY_READ):
            while admission.enter(priority):
                held.append(priority)
    return held


async def _lift(gw: Served, scenario: Scenario, held: list[int],
                http: aiohttp.ClientSession) -> None:
    base = f"http://127.0.0.1:{gw.port}"
    for _ in held:
        gw.app[ADMISSION].leave()
    async with http.delete(base + "/admin/maintenance", headers=ADMIN) as resp:
        assert resp.status in (200, 204)
    if scenario.open_breaker is not None:
        async with http.post(f"{base}/admin/breakers/{scenario.open_breaker}/reset",
                             headers=ADMIN) as resp:
            assert resp.status == 200


_WINDOWS = st.sampled_from([None, "GET /v1/orders/{order_id}", "payment", "all"])
_BREAKERS = st.sampled_from([None, "order", "payment"])

# Overload in force needs a limit that does not move with the machine's noise (floor =
# ceiling); refusals are then sent at once, not held for the client's Retry-After.
TUNED = {"overload": {"max_in_flight": 40, "min_in_flight": 40, "hold_early_retries": False}}


@dataclass
class Pair:
    fast: Served
    usual: Served
    http: aiohttp.ClientSession


@asynccontextmanager
async def pair(config: dict[str, Any]) -> AsyncIterator[Pair]:
    async with (served(config, fast_lane=True) as fast, served(config, fast_lane=False) as usual,
                aiohttp.ClientSession() as http):
        yield Pair(fast, usual, http)


async def _compare(both: Pair, scenario: Scenario, reads: list[bytes]) -> None:
    note(f"{scenario}; reads={reads!r}")
    seen_before = (len(both.fast.recorder.seen), len(both.usual.recorder.seen))
    held = [await _apply(gw, scenario, both.http) for gw in (both.fast, both.usual)]
    try:
        fast_answers, fast_closed = await exchange(both.fast, reads)
        usual_answers, usual_closed = await exchange(both.usual, reads)
    finally:
        for gw, slots in zip((both.fast, both.usual), held, strict=True):
            await _lift(gw, scenario, slots, both.http)
    assert fast_answers == usual_answers
    assert fast_closed and usual_closed
    assert (both.fast.recorder.seen[seen_before[0]:]
            == both.usual.recorder.seen[seen_before[1]:])


def _differential(loop: asyncio.AbstractEventLoop, config: dict[str, Any],
                  scenarios: Any) -> None:
    started = pair(config)
    both = loop.run_until_complete(started.__aenter__())
    try:
        @settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.too_slow])
        @given(scenarios, _reads())
        def check(scenario: Scenario, reads: list[bytes]) -> None:
            loop.run_until_complete(_compare(both, scenario, reads))

        check()
    finally:
        loop.run_until_complete(started.__aexit__(None, None, None))


def test_the_fast_lane_answers_as_the_parser_reads_with_default_settings(
        loop: asyncio.AbstractEventLoop) -> None:
    """Defaults, with maintenance windows and forced breakers (overload cannot be put in
    force deterministically while the limit follows the machine's delay)."""
    _differential(loop, {}, st.builds(Scenario, _WINDOWS, _BREAKERS, st.just(False)))


def test_the_fast_lane_answers_as_the_parser_reads_under_overload(
        loop: asyncio.AbstractEventLoop) -> None:
    _differential(loop, TUNED, st.builds(Scenario, _WINDOWS, _BREAKERS, st.booleans()))
