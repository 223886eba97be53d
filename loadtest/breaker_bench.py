"""Breaker figures with the default settings, measured on real processes.

1. How many backend calls it takes to trip at a given error rate (sequential
   requests, several seeds of the simulator's randomness).
2. How fast the gateway answers while a breaker is open, under load.

    python -m loadtest.breaker_bench --seeds 5 --seconds 5 --concurrency 32
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import urllib.request
from pathlib import Path

import aiohttp

from loadtest.harness import Gateway, Upstreams
from loadtest.rounds import get_ok, timed_round

TOKEN = "bench-admin-token-0123456789"
PATH = "/v1/availability?address=Beijing%201&product=fiber"
MAX_CALLS = 3000


def _admin(gw: Gateway, action: str) -> None:
    req = urllib.request.Request(f"{gw.url}/admin/breakers/availability/{action}",
                                 method="POST", headers={"Authorization": f"Bearer {TOKEN}"})
    urllib.request.urlopen(req, timeout=5).close()


async def calls_to_trip(gw: Gateway, sims: Upstreams, error_rate: float) -> int | None:
    _admin(gw, "reset")
    sims.heal()
    sims.set_faults("availability", error_rate=error_rate)
    before = sims.stats("availability")["requests"]
    async with aiohttp.ClientSession() as session:
        for _ in range(MAX_CALLS):
            async with session.get(gw.url + PATH) as resp:
                if resp.status == 503:
                    return int(sims.stats("availability")["requests"] - before)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    log_dir = Path(tempfile.mkdtemp(prefix="order-gateway-breaker-bench-"))
    for rate in (1.0, 0.4):
        counts = []
        for seed in range(args.seeds):
            sims = Upstreams(log_dir, seed=seed)
            gw = Gateway(log_dir, sims.urls, env={"GATEWAY_ADMIN_TOKEN": TOKEN},
                         config={"server": {"access_log": False}})
            try:
                counts.append(asyncio.run(calls_to_trip(gw, sims, rate)))
            finally:
                gw.stop()
                sims.proc.stop()
        shown = ", ".join("none" if c is None else str(c) for c in counts)
        print(f"error_rate {rate}: backend calls until the breaker opened: {shown}"
              f" (stopped looking after {MAX_CALLS})")
    sims = Upstreams(log_dir)
    gw = Gateway(log_dir, sims.urls, env={"GATEWAY_ADMIN_TOKEN": TOKEN},
                 config={"server": {"access_log": False}})
    try:
        _admin(gw, "open")
        rows = [asyncio.run(timed_round(get_ok(gw.url + PATH), args.seconds, args.concurrency))
                for _ in range(3)]
        print(f"open breaker under load ({args.concurrency} concurrent):"
              f" {statistics.median(r[0] for r in rows):.0f} answers/s,"
              f" p50 {statistics.median(r[1] for r in rows):.2f} ms,"
              f" p99 {statistics.median(r[2] for r in rows):.2f} ms (median of 3 rounds)")
    finally:
        gw.stop()
        sims.proc.stop()


if __name__ == "__main__":
    main()
