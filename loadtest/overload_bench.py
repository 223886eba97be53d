"""Overload protection: what it costs on the hot path, and what it buys when a backend hangs.

`cost`: two gateways, overload protection on (the default) and off
(`overload.enabled: false`), in interleaved rounds of the same load on
`GET /v1/availability`; medians of requests per second, p50, p99 and each
gateway's CPU time per request, and the ratios.

`hung`: one gateway with the defaults (payment bulkhead 100) under a mixed load
(availability browsing, order reads, order submissions, payments: a quarter
each), first with every backend healthy, then with the payment backend hung
(`_faults` `hang`). Per route and phase: requests, success rate (2xx and the
backend's own 4xx), p99, and what the failures were.
Bounded in time; loopback only.

    python -m loadtest.overload_bench cost --rounds 5 --seconds 5
    python -m loadtest.overload_bench hung --seconds 10 --concurrency 32
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from loadtest.harness import Gateway, Upstreams
from loadtest.rounds import cpu_seconds, get_ok, rounds_parser, timed_round

AVAILABILITY = "/v1/availability?address=Beijing%201&product=fiber"
ORDER = orjson.dumps({
    "customer": {"name": "Zhang San", "phone": "13800138000", "id_number": "11010519491231002X"},
    "product": "fiber-500", "address": "Beijing, Jianguo Road 1"})
PAYMENT = orjson.dumps({"order_id": "ord_1", "amount": 9900, "currency": "CNY",
                        "method": "alipay"})
QUIET = {"server": {"access_log": False}}


async def _cost(args: argparse.Namespace, on: Gateway, off: Gateway) -> None:
    targets = {"protection on": on, "protection off": off}
    rows: dict[str, list[tuple[float, float, float, float]]] = {name: [] for name in targets}
    for gw in targets.values():
        await timed_round(get_ok(gw.url + AVAILABILITY), 1.0, args.concurrency)
    for index in range(args.rounds):
        for name, gw in targets.items():
            before = cpu_seconds(gw.proc.pid)
            rate, p50, p99, failed = await timed_round(get_ok(gw.url + AVAILABILITY),
                                                       args.seconds, args.concurrency)
            cpu = (cpu_seconds(gw.proc.pid) - before) / (rate * args.seconds) * 1e6
            rows[name].append((rate, p50, p99, cpu))
            print(f"round {index + 1} {name:15s} {rate:7.0f} req/s  p50 {p50:6.2f} ms  "
                  f"p99 {p99:6.2f} ms  CPU {cpu:5.0f} us/req  failed {failed}", flush=True)
    medians = {name: [statistics.median(r[i] for r in got) for i in range(4)]
               for name, got in rows.items()}
    print(f"\n{'target':15s} {'req/s':>7s} {'p50 ms':>7s} {'p99 ms':>7s} {'us/req':>7s}"
          f"   (medians of {args.rounds} rounds)")
    for name, (rate, p50, p99, cpu) in medians.items():
        print(f"{name:15s} {rate:7.0f} {p50:7.2f} {p99:7.2f} {cpu:7.0f}")
    on_row, off_row = medians["protection on"], medians["protection off"]
    print(f"\nthroughput on / off: {on_row[0] / off_row[0]:.2f}; "
          f"CPU per request on - off: {on_row[3] - off_row[3]:.0f} us")


async def _mixed_phase(gw: Gateway, seconds: float, concurrency: int) -> dict[str, Any]:
    """Each worker cycles through the four routes; per route: latencies and outcomes."""
    latencies: dict[str, list[float]] = collections.defaultdict(list)
    outcomes: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    deadline = time.monotonic() + seconds
    timeout = aiohttp.ClientTimeout(total=15)
    async with aiohttp.ClientSession(timeout=timeout,
                                     connector=aiohttp.TCPConnector(limit=0)) as http:

        async def one(route: str, method: str, path: str, body: bytes | None) -> None:
            headers = {"Content-Type": "application/json"}
            if body is not None:
                headers["Idempotency-Key"] = str(uuid.uuid4())
            started = time.monotonic()
            async with http.request(method, gw.url + path, data=body, headers=headers) as resp:
                payload = await resp.read()
            latencies[route].append(time.monotonic() - started)
            if resp.status < 500:
                outcomes[route]["ok"] += 1
            else:
                outcomes[route][orjson.loads(payload).get("code", str(resp.status))] += 1

        calls = [("GET /v1/availability", "GET", AVAILABILITY, None),
                 ("GET /v1/orders/{id}", "GET", "/v1/orders/ord_missing", None),
                 ("POST /v1/orders", "POST", "/v1/orders", ORDER),
                 ("POST /v1/payments", "POST", "/v1/payments", PAYMENT)]

        async def worker(offset: int) -> None:
            turn = offset
            while time.monotonic() < deadline:
                await one(*calls[turn % len(calls)])
                turn += 1

        await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return {route: {"requests": len(times),
                    "success": outcomes[route]["ok"] / len(times),
                    "p99_ms": sorted(times)[int(len(times) * 0.99)] * 1000,
                    "failures": {k: v for k, v in outcomes[route].items() if k != "ok"}}
            for route, times in latencies.items()}


async def _hung(args: argparse.Namespace, sims: Upstreams, gw: Gateway) -> None:
    phases = {}
    phases["healthy"] = await _mixed_phase(gw, args.seconds, args.concurrency)
    sims.set_faults("payment", hang=True)
    phases["payment hung"] = await _mixed_phase(gw, args.seconds, args.concurrency)
    sims.heal()
    print(f"{'phase':13s} {'route':22s} {'requests':>8s} {'success':>8s} {'p99 ms':>8s}  failures")
    for phase, routes in phases.items():
        for route, row in sorted(routes.items()):
            print(f"{phase:13s} {route:22s} {row['requests']:8d} {row['success']:8.1%} "
                  f"{row['p99_ms']:8.0f}  {row['failures'] or ''}")
    print("\n" + orjson.dumps(phases).decode())


def main() -> None:
    parser = rounds_parser(__doc__)
    parser.add_argument("part", choices=("cost", "hung"))
    args = parser.parse_args()
    log_dir = Path(tempfile.mkdtemp(prefix="order-gateway-overload-bench-"))
    sims = Upstreams(log_dir)
    started: list[Gateway] = []
    try:
        if args.part == "cost":
            started += [Gateway(log_dir, sims.urls, config=QUIET),
                        Gateway(log_dir, sims.urls,
                                config={**QUIET, "overload": {"enabled": False}})]
            asyncio.run(_cost(args, *started))
        else:
            started.append(Gateway(log_dir, sims.urls, config=QUIET))
            asyncio.run(_hung(args, sims, started[0]))
    finally:
        for gw in started:
            gw.stop()
        sims.proc.stop()
    sys.exit(0)


if __name__ == "__main__":
    main()
