"""In-process load rounds shared by the focused benchmarks (breaker, idempotency, overload).

They compare variants of the gateway with each other, so a Python client in the
same process is good enough there; `loadtest.bench`, which measures the gateway
against its floor, drives load from a separate, faster generator instead.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp

# One request of a round: sends it on the session and answers whether it succeeded.
Send = Callable[[aiohttp.ClientSession], Awaitable[bool]]


def get_ok(url: str) -> Send:
    async def send(session: aiohttp.ClientSession) -> bool:
        async with session.get(url) as resp:
            await resp.read()
            return resp.status == 200

    return send


async def timed_round(send: Send, seconds: float,
                      concurrency: int) -> tuple[float, float, float, int]:
    """(requests/s, p50 ms, p99 ms, failed count) of one timed round."""
    latencies: list[float] = []
    failures = 0
    deadline = time.monotonic() + seconds
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal failures
            while time.monotonic() < deadline:
                started = time.perf_counter()
                if not await send(session):
                    failures += 1
                latencies.append(time.perf_counter() - started)

        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.monotonic() - started
    latencies.sort()
    return (len(latencies) / elapsed, latencies[len(latencies) // 2] * 1000,
            latencies[int(len(latencies) * 0.99)] * 1000, failures)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rounds_parser(doc: str | None) -> argparse.ArgumentParser:
    """The options every interleaved-rounds benchmark takes."""
    parser = argparse.ArgumentParser(description=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=32)
    return parser
