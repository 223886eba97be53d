"""An open-loop load generator: requests go out at a constant rate, answered or not.

    python -m loadtest.open_loop URL --rate 2000 --seconds 10 [--connections 3000]

wrk (and every closed-loop client) sends a connection's next request only after
its answer, so a slow server slows its own load down and the latencies look
better than a real crowd would see them ("coordinated omission"). Here request i
is due at `start + i / rate`, whatever happened before it: it goes out on an idle
keep-alive connection, or on a new one (up to `--connections`); its latency runs
from the moment it was due, so time spent waiting for a connection counts too.
A request that finds every connection busy and the cap reached is counted as
`unsent`, never silently dropped.

Answers are read with a small parser that understands what a gateway answers:
a status line, headers, and a body of `Content-Length` bytes. Anything else
(chunked bodies, a closed connection mid-answer) counts as an error.

One JSON line on stdout: sent, answered by class (2xx, refused 4xx/5xx), errors,
unsent, unanswered (still waiting `drain_s` after the last send: longer than the
longest hold of a refusal), and latency
percentiles of 2xx and of refusals, in milliseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field
from typing import cast
from urllib.parse import urlsplit

from loadtest.loadgen import percentile

TICK_S = 0.001  # how often due requests are sent
_HEAD_END = b"\r\n\r\n"
_LENGTH = b"\r\ncontent-length:"


@dataclass
class Tally:
    sent: int = 0
    unsent: int = 0
    errors: int = 0
    ok_ms: list[float] = field(default_factory=list)
    refused_ms: list[float] = field(default_factory=list)

    @property
    def settled(self) -> int:
        return len(self.ok_ms) + len(self.refused_ms) + self.errors

    def summary(self, seconds: float) -> dict[str, float | int]:
        ok, refused = sorted(self.ok_ms), sorted(self.refused_ms)
        return {
            "seconds": seconds, "sent": self.sent, "unsent": self.unsent,
            "errors": self.errors, "ok": len(ok), "refused": len(refused),
            "ok_per_s": len(ok) / seconds,
            "ok_p50_ms": percentile(ok, 0.5), "ok_p99_ms": percentile(ok, 0.99),
            "ok_max_ms": ok[-1] if ok else 0.0,
            "refused_p50_ms": percentile(refused, 0.5),
            "refused_p99_ms": percentile(refused, 0.99),
        }


class _Connection(asyncio.Protocol):
    """One keep-alive connection: one request at a time, answers parsed as they come."""

    def __init__(self, pool: _Pool) -> None:
        self._pool = pool
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._due = 0.0  # when the request in flight was due (loop time); 0: idle

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def send(self, request: bytes, due: float) -> None:
        assert self._transport is not None
        self._due = due
        self._transport.write(request)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        end = self._buffer.find(_HEAD_END)
        if end < 0:
            return
        head = bytes(self._buffer[:end + 2]).lower()
        at = head.find(_LENGTH)
        if at < 0:
            self._fail()
            return
        length = int(head[at + len(_LENGTH):head.find(b"\r\n", at + 2)])
        if len(self._buffer) < end + 4 + length:
            return
        status = int(head[9:12])
        del self._buffer[:end + 4 + length]
        due, self._due = self._due, 0.0
        self._pool.answered(self, status, due)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if self._due:
            self._fail()
        self._pool.lost(self)

    def _fail(self) -> None:
        self._due = 0.0
        self._pool.tally.errors += 1
        self._pool.check_settled()
        if self._transport is not None:
            self._transport.close()


class _Pool:
    """Idle connections to reuse, and new ones while under the cap."""

    def __init__(self, host: str, port: int, request: bytes, cap: int) -> None:
        self._host, self._port, self._request, self._cap = host, port, request, cap
        self._idle: list[_Connection] = []
        self._open = 0
        self.tally = Tally()
        self._loop = asyncio.get_running_loop()
        self._waiter: asyncio.Event | None = None

    def send(self, due: float) -> None:
        if self._idle:
            self.tally.sent += 1
            self._idle.pop().send(self._request, due)
        elif self._open < self._cap:
            self.tally.sent += 1
            self._open += 1
            self._loop.create_task(self._connect_and_send(due))
        else:
            self.tally.unsent += 1

    async def _connect_and_send(self, due: float) -> None:
        try:
            _, connection = await self._loop.create_connection(
                lambda: _Connection(self), self._host, self._port)
        except OSError:
            self._open -= 1
            self.tally.errors += 1
            self.check_settled()
            return
        connection.send(self._request, due)

    def answered(self, connection: _Connection, status: int, due: float) -> None:
        took_ms = (self._loop.time() - due) * 1000
        (self.tally.ok_ms if 200 <= status < 300 else self.tally.refused_ms).append(took_ms)
        self._idle.append(connection)
        self.check_settled()

    def check_settled(self) -> None:
        if self._waiter is not None and self.tally.settled >= self.tally.sent:
            self._waiter.set()

    async def all_answered(self) -> None:
        """Once every request sent has its answer (or failed)."""
        self._waiter = asyncio.Event()
        self.check_settled()
        await self._waiter.wait()

    def lost(self, connection: _Connection) -> None:
        self._open -= 1
        if connection in self._idle:
            self._idle.remove(connection)


async def run(url: str, rate: float, seconds: float, connections: int,
              drain_s: float = 10.0) -> dict[str, float | int]:
    """Send `rate` requests/s for `seconds`, wait up to `drain_s` for the last answers."""
    parts = urlsplit(url)
    assert parts.hostname in ("127.0.0.1", "::1", "localhost"), "loopback only"
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    request = (f"GET {target} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
               "User-Agent: open-loop\r\n\r\n").encode()
    pool = _Pool(parts.hostname, parts.port or 80, request, connections)
    loop = asyncio.get_running_loop()
    start = loop.time()
    total = int(rate * seconds)
    sent = 0
    while sent < total:
        now = loop.time()
        due_count = min(total, int((now - start) * rate) + 1)
        while sent < due_count:
            pool.send(start + sent / rate)
            sent += 1
        await asyncio.sleep(TICK_S)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(pool.all_answered(), drain_s)
    tally = pool.tally
    result = tally.summary(seconds)
    result["unanswered"] = tally.sent - tally.settled
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("url")
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=3000)
    args = parser.parse_args()
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    started = time.monotonic()
    result = asyncio.run(run(args.url, args.rate, args.seconds, args.connections))
    result["wall_s"] = round(time.monotonic() - started, 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
