"""How long a maintenance window takes to reach another gateway process through Redis.

Starts the simulators, a redis-server and two gateways sharing it, on loopback.
Each run sets a window through gateway A's admin API and polls gateway B every
5 ms until B refuses a covered request, then ends the window through A and
polls B until it serves again. Prints both delays per run and their median,
90th percentile and maximum. Bounded: `--runs` runs; loopback only.

    python -m loadtest.maintenance_propagation --runs 20
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp

from loadtest.harness import Gateway, RedisServer, Upstreams

TOKEN = "propagation-bench-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
COVERED = "/v1/availability?address=Beijing%201&product=fiber-500"
POLL_S = 0.005
LIMIT_S = 5.0


async def _until_status(http: aiohttp.ClientSession, url: str, wanted: int) -> float:
    started = time.monotonic()
    while time.monotonic() - started < LIMIT_S:
        async with http.get(url) as resp:
            await resp.read()
            if resp.status == wanted:
                return time.monotonic() - started
        await asyncio.sleep(POLL_S)
    raise SystemExit(f"{url} did not answer {wanted} within {LIMIT_S} s")


async def _run(a: Gateway, b: Gateway, runs: int) -> tuple[list[float], list[float]]:
    opened, closed = [], []
    async with aiohttp.ClientSession() as http:
        for index in range(runs):
            async with http.put(a.url + "/admin/maintenance", headers=AUTH,
                                json={"scope": "availability"}) as resp:
                window = (await resp.json())["id"]
            opened.append(await _until_status(http, b.url + COVERED, 503))
            await asyncio.sleep(random.uniform(0, 0.6))
            async with http.delete(f"{a.url}/admin/maintenance/{window}", headers=AUTH) as resp:
                assert resp.status == 200
            closed.append(await _until_status(http, b.url + COVERED, 200))
            print(f"run {index + 1:2d}: in force on B after {opened[-1] * 1000:6.0f} ms, "
                  f"lifted after {closed[-1] * 1000:6.0f} ms", flush=True)
            # Start each change at a random point of B's sync cycle, so the runs sample
            # the whole cycle instead of locking onto one phase of it.
            await asyncio.sleep(random.uniform(0, 0.6))
    return opened, closed


def _summary(name: str, delays: list[float]) -> str:
    ordered = sorted(delays)
    p90 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))]
    return (f"{name:10s} median {statistics.median(ordered) * 1000:5.0f} ms  "
            f"p90 {p90 * 1000:5.0f} ms  max {ordered[-1] * 1000:5.0f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    log_dir = Path(tempfile.mkdtemp(prefix="order-gateway-propagation-"))
    sims = Upstreams(log_dir)
    redis = RedisServer(log_dir)
    env = {"GATEWAY_ADMIN_TOKEN": TOKEN}
    config = {"redis": {"url": redis.url}, "server": {"access_log": False}}
    a = Gateway(log_dir, sims.urls, config=config, env=env)
    b = Gateway(log_dir, sims.urls, config=config, env=env)
    try:
        opened, closed = asyncio.run(_run(a, b, args.runs))
        print()
        print(_summary("set", opened))
        print(_summary("ended", closed))
    finally:
        for proc in (a, b):
            proc.stop()
        redis.stop()
        sims.proc.stop()


if __name__ == "__main__":
    main()
