"""Unfinished request heads cannot take the process's memory: `server.max_buffered_head_bytes`.

Each head within the per-request limits is allowed (64 headers of 8 KiB: ~512 KiB), but
a thousand connections holding one each used to take a gigabyte. Against a real gateway
process over raw sockets: connections hold large unfinished heads until the process holds
its bound; the one past it is answered 503 OVERLOADED and closed; honest requests,
whole or in pieces, still pass; and the budget comes back when the holders leave. Run with
the default bound and with a small one.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from loadtest.harness import Gateway, Upstreams

HEADERS = 60  # within the default max_headers (64)
PAD = 8000  # within the default max_header_bytes (8190)
START = b"GET /v1/orders/ord_1 HTTP/1.1\r\nHost: gw\r\n"
PART = START + b"".join(b"X-Pad-%d: %s\r\n" % (i, b"a" * PAD) for i in range(HEADERS))
SMALL = 1024 * 1024  # the smallest bound the settings allow
DEFAULT = 64 * 1024 * 1024


@pytest.fixture(params=[None, SMALL], ids=["default", "small"])
def bounded(request: pytest.FixtureRequest, log_dir: Path,
            upstreams: Upstreams) -> Iterator[tuple[Gateway, int]]:
    limit = request.param
    config = {"server": {"max_buffered_head_bytes": limit}} if limit else {}
    gw = Gateway(log_dir, upstreams.urls, config=config)
    try:
        yield gw, limit or DEFAULT
    finally:
        gw.stop()


def _hold(gw: Gateway, count: int) -> list[socket.socket]:
    """`count` connections, each sending the large unfinished head."""
    held = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
        with contextlib.suppress(OSError):  # refused and closed while sending: read below
            sock.sendall(PART)
        held.append(sock)
    return held


def _told(sock: socket.socket, received: bytearray | None = None) -> bytes | None:
    """What the gateway sent on `sock` and then closed with, read without waiting; None
    while it is still open (what came so far is kept in `received`)."""
    sock.setblocking(False)
    received = bytearray() if received is None else received
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except BlockingIOError:
        return None
    except ConnectionResetError:
        pass
    return bytes(received)


def _settled(held: list[socket.socket], refusals: int,
             within_s: float = 15.0) -> list[bytes | None]:
    """What each held connection was told, once at least `refusals` were refused (a busy
    machine reads the heads late, so no fixed wait would do), and a moment more for any
    refusal past them to show."""
    told: list[bytes | None] = [None] * len(held)
    kept = [bytearray() for _ in held]
    deadline = time.monotonic() + within_s
    extra = None
    while True:
        for i, sock in enumerate(held):
            if told[i] is None:
                told[i] = _told(sock, kept[i])
        done = sum(said is not None for said in told)
        now = time.monotonic()
        if extra is None and done >= refusals:
            extra = now + 0.5
        if (extra is not None and now >= extra) or now >= deadline:
            return told
        time.sleep(0.05)


def _rss_bytes(gw: Gateway) -> int:
    for line in Path(f"/proc/{gw.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _get(gw: Gateway, pieces: list[bytes]) -> int:
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
        for piece in pieces:
            sock.sendall(piece)
            time.sleep(0.05)
        head = sock.recv(65536).partition(b"\r\n")[0]
    return int(head.split()[1])


HONEST = (b"GET /v1/orders/ord_1 HTTP/1.1\r\nHost: gw\r\nX-Request-ID: honest\r\n"
          b"Connection: close\r\n\r\n")


def test_unfinished_heads_are_bounded_per_process(bounded: tuple[Gateway, int]) -> None:
    gw, limit = bounded
    fits = limit // len(PART)
    rss_before = _rss_bytes(gw)
    usual = _get(gw, [HONEST])  # the backend's answer to it (not found: no such order)
    held = _hold(gw, fits + 12)
    told = _settled(held, 11)
    rss_held = _rss_bytes(gw)
    open_ = [sock for sock, said in zip(held, told, strict=True) if said is None]
    refused = [said for said in told if said is not None]
    try:
        # The bound holds within one head: the ones that fit are kept, the rest refused.
        assert fits - 1 <= len(open_) <= fits, (len(open_), fits)
        assert len(refused) >= 11
        for said in refused:
            head, _, body = said.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 503 "), said[:200]
            assert b"application/problem+json" in head and b"Retry-After:" in head
            assert orjson.loads(body)["code"] == "OVERLOADED"
        # Memory follows the bound (the parser keeps about two copies of what it holds),
        # not the number of connections.
        print(f"bound {limit} B: RSS {rss_before >> 20} MiB -> {rss_held >> 20} MiB with "
              f"{len(open_)} heads held, {len(refused)} refused")
        assert rss_held - rss_before < 3 * limit + 48 * 1024 * 1024
        # Honest requests pass while the bound is full: a whole head at once, and a head
        # in pieces as long as the pieces are not what fills it.
        assert _get(gw, [HONEST]) == usual
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.3)
    # The budget comes back with the holders gone: a head in pieces passes.
    assert _get(gw, [HONEST[:20], HONEST[20:50], HONEST[50:]]) == usual
    again = _hold(gw, 1)
    time.sleep(0.5)
    try:
        assert _told(again[0]) is None  # room for a large head again
    finally:
        again[0].close()
