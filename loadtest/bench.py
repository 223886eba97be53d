"""Throughput of the gateway against its floor, measured side by side in one run.

Starts the simulators, one gateway (`order-gateway serve`, one worker) and a
bare aiohttp pass-through proxy (`loadtest/bare_proxy.py`, the floor any proxy
in Python pays) on loopback, then alternates rounds of the same load against
the availability simulator directly, through the bare proxy and through the
gateway, and prints requests per second, p50 and p99 per round, their medians,
and the ratio gateway / bare proxy.
It also prints the CPU time each proxy process spent per request (from /proc,
so it holds up on a busy machine better than wall-clock rates do).
Bounded: `--rounds` rounds of `--seconds` each; loopback only.

    python -m loadtest.bench --rounds 5 --seconds 5 --concurrency 32
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp

from tests.procs import Gateway, Proc, Upstreams, free_port

PATH = "/availability?address=Beijing%201&product=fiber"


# One request of a round: sends it on the session and answers whether it succeeded.
Send = Callable[[aiohttp.ClientSession], Awaitable[bool]]


def get_ok(url: str) -> Send:
    async def send(session: aiohttp.ClientSession) -> bool:
        async with session.get(url) as resp:
            await resp.read()
            return resp.status == 200

    return send


async def _round(url: str, seconds: float, concurrency: int) -> tuple[float, float, float, int]:
    return await timed_round(get_ok(url), seconds, concurrency)


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


Result = tuple[float, float, float, int, float]  # req/s, p50 ms, p99 ms, non-200, CPU us/req


async def _measure(url: str, pid: int | None, args: argparse.Namespace) -> Result:
    cpu_before = cpu_seconds(pid) if pid else 0.0
    rate, p50, p99, failures = await _round(url, args.seconds, args.concurrency)
    cpu = (cpu_seconds(pid) - cpu_before) / (rate * args.seconds) * 1e6 if pid else 0.0
    return rate, p50, p99, failures, cpu


async def _run(args: argparse.Namespace, targets: dict[str, tuple[str, int | None]]) -> None:
    results: dict[str, list[Result]] = {name: [] for name in targets}
    for url, _ in targets.values():
        await _round(url, 1.0, args.concurrency)  # warm pools and caches
    for index in range(args.rounds):
        for name, (url, pid) in targets.items():
            r = await _measure(url, pid, args)
            results[name].append(r)
            cpu = f"  CPU {r[4]:5.0f} us/req" if pid else ""
            print(f"round {index + 1} {name:8s} {r[0]:8.0f} req/s  p50 {r[1]:6.2f} ms"
                  f"  p99 {r[2]:6.2f} ms  non-200 {r[3]}{cpu}", flush=True)
    print(f"\n{'target':8s} {'req/s':>8s} {'p50 ms':>8s} {'p99 ms':>8s} {'CPU us/req':>10s}"
          "   (medians)")
    medians: dict[str, list[float]] = {}
    for name, rows in results.items():
        medians[name] = [statistics.median(r[i] for r in rows) for i in (0, 1, 2, 4)]
        rate, p50, p99, cpu = medians[name]
        print(f"{name:8s} {rate:8.0f} {p50:8.2f} {p99:8.2f} {cpu:10.0f}")
    print(f"\nthroughput gateway / bare proxy: {medians['gateway'][0] / medians['bare'][0]:.2f}")
    print(f"CPU per request gateway - bare proxy: {medians['gateway'][3] - medians['bare'][3]:.0f}"
          " us")
    if any(r[3] for rows in results.values() for r in rows):
        raise SystemExit("some requests failed")


def rounds_parser(doc: str | None) -> argparse.ArgumentParser:
    """The options every interleaved-rounds benchmark takes."""
    parser = argparse.ArgumentParser(description=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=32)
    return parser


def main() -> None:
    parser = rounds_parser(__doc__)
    parser.add_argument("--access-log", action="store_true",
                        help="keep the gateway's access log on (off: measure the pipeline)")
    args = parser.parse_args()
    log_dir = Path(tempfile.mkdtemp(prefix="order-gateway-bench-"))
    sims = Upstreams(log_dir)
    gw = Gateway(log_dir, sims.urls, config={"server": {"access_log": args.access_log}})
    bare_port = free_port()
    bare = Proc("bare-proxy", [sys.executable, "-m", "loadtest.bare_proxy", "--port",
                               str(bare_port), "--upstream", sims.urls["availability"]], log_dir)
    try:
        bare.wait_http(f"http://127.0.0.1:{bare_port}/readyz")
        asyncio.run(_run(args, {
            "direct": (sims.urls["availability"] + PATH, None),
            "bare": (f"http://127.0.0.1:{bare_port}/v1{PATH}", bare.pid),
            "gateway": (gw.url + "/v1" + PATH, gw.proc.pid),
        }))
    finally:
        bare.stop()
        gw.stop()
        sims.proc.stop()


if __name__ == "__main__":
    main()
