"""Load generators for the floor benchmark: wrk where installed, else a Python fallback.

Both take a `Load` and answer a `Tally` for one timed round, from a process of
their own pinned (where the machine allows) away from the process measured.

wrk is driven by a generated Lua script: a fresh `Idempotency-Key` per request
when asked, `delay()` pacing for a fixed rate (exponential gaps, so arrivals
are random, as real clients' are), and a `done()` hook that prints
the tally as JSON. The fallback (`python -m loadtest.loadgen`) is this module:
uvloop + aiohttp, closed loop or paced the same way. It tops out far below wrk
(a few thousand requests/s on two cores), so with it saturation throughputs are
the generator's, but CPU per request of the measured process stays valid.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp


@dataclass(frozen=True)
class Load:
    """What one round sends: one request shape, optionally keyed and paced."""

    url: str
    method: str = "GET"
    body: str | None = None
    keyed: bool = False  # a new Idempotency-Key per request
    rate: float | None = None  # requests/s over all connections; None = as fast as it can
    headers: tuple[tuple[str, str], ...] = ()  # sent with every request


@dataclass(frozen=True)
class Tally:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    errors: int  # connect/read/write errors and timeouts

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def pin(pid: int, cpus: set[int]) -> None:
    """Keep a process on these CPUs, where the machine allows it."""
    if hasattr(os, "sched_setaffinity") and cpus <= os.sched_getaffinity(0):
        os.sched_setaffinity(pid, cpus)


class Generator:
    name = "python"

    def __init__(self, connections: int, cpus: set[int]) -> None:
        self.connections = connections
        self.cpus = cpus

    def run(self, load: Load, seconds: float) -> Tally:
        argv = self.argv(load, seconds)
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        pin(proc.pid, self.cpus)
        out, err = proc.communicate(timeout=seconds + 30)
        if proc.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed: {err.decode(errors='replace')[-2000:]}")
        return self.parse(out.decode())

    def argv(self, load: Load, seconds: float) -> list[str]:
        return [sys.executable, "-m", "loadtest.loadgen", "--seconds", str(seconds),
                "--connections", str(self.connections), json.dumps(asdict(load))]

    def parse(self, out: str) -> Tally:
        return Tally(**json.loads(out.strip().splitlines()[-1]))


class Wrk(Generator):
    name = "wrk"

    def argv(self, load: Load, seconds: float) -> list[str]:
        script = Path(tempfile.mkdtemp(prefix="wrk-")) / "load.lua"
        script.write_text(_lua(load, self.connections))
        # wrk takes whole seconds only.
        return ["wrk", "-t1", f"-c{self.connections}", f"-d{max(1, math.ceil(seconds))}s",
                "--timeout", "10s",
                "-s", str(script), load.url, "--", uuid.uuid4().hex[:12]]


def generator(connections: int, cpus: set[int], prefer_wrk: bool = True) -> Generator:
    if prefer_wrk and shutil.which("wrk"):
        return Wrk(connections, cpus)
    return Generator(connections, cpus)


def _lua(load: Load, connections: int) -> str:
    lines = [f'wrk.method = "{load.method}"', 'wrk.headers["Content-Type"] = "application/json"']
    lines += [f'wrk.headers["{name}"] = "{value}"' for name, value in load.headers]
    if load.body is not None:
        # A long bracket string: Lua 5.1 knows no \u escapes, and the body is UTF-8.
        lines.append(f"wrk.body = [==[{load.body}]==]")
    lines.append('local prefix = "k"\nlocal counter = 0\n'
                 'function init(args) prefix = args[1] end')
    if load.keyed:
        lines.append('function request()\n  counter = counter + 1\n'
                     '  wrk.headers["Idempotency-Key"] = prefix .. "-" .. counter\n'
                     '  return wrk.format()\nend')
    if load.rate:
        # Exponential gaps: connections with equal fixed gaps would send in lockstep
        # bursts and measure queueing behind the burst, not the proxy.
        mean_ms = connections / load.rate * 1000
        lines.append(f"math.randomseed(os.time())\nlocal mean_ms = {mean_ms:.3f}\n"
                     "function delay() return -math.log(1 - math.random()) * mean_ms end")
    lines.append(
        "function done(summary, latency, requests)\n"
        "  local e = summary.errors\n"
        '  io.write(string.format(\'{"requests": %d, "seconds": %f, "p50_ms": %f, '
        '"p99_ms": %f, "non_2xx": %d, "errors": %d}\\n\', summary.requests, '
        "summary.duration / 1e6, latency:percentile(50) / 1000, latency:percentile(99) / 1000, "
        "e.status, e.connect + e.read + e.write + e.timeout))\nend")
    return "\n".join(lines) + "\n"


# --- the fallback, run as its own process ----------------------------------------------


async def _fallback(load: Load, seconds: float, connections: int) -> Tally:
    latencies: list[float] = []
    non_2xx = errors = 0
    pause = connections / load.rate if load.rate else 0.0
    data = load.body.encode() if load.body is not None else None
    prefix = uuid.uuid4().hex[:12]
    counter = 0
    deadline = time.monotonic() + seconds
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def connection() -> None:
            nonlocal non_2xx, errors, counter
            while time.monotonic() < deadline:
                headers = {"Content-Type": "application/json", **dict(load.headers)}
                if load.keyed:
                    counter += 1
                    headers["Idempotency-Key"] = f"{prefix}-{counter}"
                started = time.perf_counter()
                try:
                    async with session.request(load.method, load.url, data=data,
                                               headers=headers) as resp:
                        await resp.read()
                        non_2xx += not 200 <= resp.status < 300
                except (aiohttp.ClientError, TimeoutError):
                    errors += 1
                latencies.append(time.perf_counter() - started)
                if pause:
                    await asyncio.sleep(random.expovariate(1 / pause))

        started = time.monotonic()
        await asyncio.gather(*(connection() for _ in range(connections)))
        elapsed = time.monotonic() - started
    return Tally(len(latencies), elapsed, percentile(latencies, 0.5) * 1000,
                 percentile(latencies, 0.99) * 1000, non_2xx, errors)


def percentile(values: list[float], share: float) -> float:
    """The value below which `share` of `values` lie (nearest rank); 0.0 for none. The one
    way percentiles are taken in loadtest/ (wrk reports its own the same way)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("load", help="a Load as JSON")
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--connections", type=int, required=True)
    args = parser.parse_args()
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    tally = asyncio.run(_fallback(Load(**json.loads(args.load)), args.seconds, args.connections))
    print(json.dumps(asdict(tally)))


if __name__ == "__main__":
    main()
