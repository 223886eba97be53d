"""What idempotency records cost: POST /v1/orders with the Redis store against records off.

Starts the simulators, a real redis-server and two gateways on loopback: one
with idempotency records in Redis, one with them switched off
(`idempotency.enabled: false`; keys still required and passed on). Then it
alternates rounds of the same load against both: every request a new order
with a unique Idempotency-Key, so each one costs the Redis store a claim and a
completion. It prints requests per second, p50 and p99 per round and their
medians, each gateway's CPU time per request (from /proc, steadier than rates
on a shared machine) and Redis's, and the ratios. With `--replays` it also
measures resubmissions of one key (each a one-round-trip replay).
Bounded: `--rounds` rounds of `--seconds` each; loopback only.

    python -m loadtest.idempotency_bench --rounds 5 --seconds 5 --concurrency 32
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import tempfile
from pathlib import Path

import aiohttp
import orjson

from loadtest.harness import Gateway, RedisServer, Upstreams
from loadtest.rounds import Send, cpu_seconds, rounds_parser, timed_round

ORDER = orjson.dumps({
    "customer": {"name": "Zhang San", "phone": "13800138000", "id_number": "11010519491231002X"},
    "product": "fiber-500", "address": "Beijing, Jianguo Road 1",
})
HEADERS = {"Content-Type": "application/json"}
_serial = itertools.count()


def new_orders(url: str) -> Send:
    async def send(session: aiohttp.ClientSession) -> bool:
        headers = {**HEADERS, "Idempotency-Key": f"bench-{next(_serial)}"}
        async with session.post(url, data=ORDER, headers=headers) as resp:
            await resp.read()
            return resp.status == 201

    return send


def replays(url: str) -> Send:
    headers = {**HEADERS, "Idempotency-Key": "bench-replayed"}

    async def send(session: aiohttp.ClientSession) -> bool:
        async with session.post(url, data=ORDER, headers=headers) as resp:
            await resp.read()
            return resp.status == 201

    return send


Row = tuple[float, float, float, int, float, float]  # req/s, p50, p99, failed, CPU us, Redis us


async def _measure(send: Send, gw_pid: int, redis_pid: int, args: argparse.Namespace) -> Row:
    gw_before, redis_before = cpu_seconds(gw_pid), cpu_seconds(redis_pid)
    rate, p50, p99, failed = await timed_round(send, args.seconds, args.concurrency)
    done = rate * args.seconds
    return (rate, p50, p99, failed, (cpu_seconds(gw_pid) - gw_before) / done * 1e6,
            (cpu_seconds(redis_pid) - redis_before) / done * 1e6)


async def _run(args: argparse.Namespace, targets: dict[str, tuple[Send, int]],
               redis_pid: int) -> dict[str, list[float]]:
    rows: dict[str, list[Row]] = {name: [] for name in targets}
    for send, _ in targets.values():
        await timed_round(send, 1.0, args.concurrency)  # warm pools, scripts and caches
    for index in range(args.rounds):
        for name, (send, pid) in targets.items():
            row = await _measure(send, pid, redis_pid, args)
            rows[name].append(row)
            print(f"round {index + 1} {name:14s} {row[0]:7.0f} req/s  p50 {row[1]:6.2f} ms"
                  f"  p99 {row[2]:6.2f} ms  failed {row[3]}  gateway CPU {row[4]:5.0f} us/req"
                  f"  redis CPU {row[5]:4.0f} us/req", flush=True)
    print(f"\n{'target':14s} {'req/s':>7s} {'p50 ms':>7s} {'p99 ms':>7s} {'gw us/req':>9s}"
          f" {'redis us/req':>12s}   (medians of {args.rounds} rounds)")
    medians = {name: [statistics.median(r[i] for r in got) for i in (0, 1, 2, 4, 5)]
               for name, got in rows.items()}
    for name, (rate, p50, p99, cpu, redis_cpu) in medians.items():
        print(f"{name:14s} {rate:7.0f} {p50:7.2f} {p99:7.2f} {cpu:9.0f} {redis_cpu:12.0f}")
    if any(r[3] for got in rows.values() for r in got):
        raise SystemExit("some requests failed")
    return medians


def _report(medians: dict[str, list[float]]) -> None:
    off, redis = medians["records off"], medians["redis store"]
    print(f"\nthroughput redis store / records off: {redis[0] / off[0]:.2f}"
          f"  (cost {100 * (1 - redis[0] / off[0]):.0f}%; target at most 15%)")
    print(f"gateway CPU per request, redis store - records off: {redis[3] - off[3]:.0f} us")
    if "replays" in medians:
        print(f"throughput replays / records off: {medians['replays'][0] / off[0]:.2f}")
    print("\n" + orjson.dumps({name: dict(zip(("rps", "p50_ms", "p99_ms", "gateway_cpu_us",
                                                 "redis_cpu_us"), row, strict=True))
                               for name, row in medians.items()}).decode())


def main() -> None:
    parser = rounds_parser(__doc__)
    parser.add_argument("--replays", action="store_true", help="also measure replays of one key")
    args = parser.parse_args()
    log_dir = Path(tempfile.mkdtemp(prefix="order-gateway-bench-"))
    sims = Upstreams(log_dir)
    redis = RedisServer(log_dir)
    quiet = {"server": {"access_log": False}}
    off = Gateway(log_dir, sims.urls, config={**quiet, "idempotency": {"enabled": False}})
    on = Gateway(log_dir, sims.urls, config={**quiet, "redis": {"url": redis.url}})
    targets = {
        "records off": (new_orders(off.url + "/v1/orders"), off.proc.pid),
        "redis store": (new_orders(on.url + "/v1/orders"), on.proc.pid),
    }
    if args.replays:
        targets["replays"] = (replays(on.url + "/v1/orders"), on.proc.pid)
    try:
        _report(asyncio.run(_run(args, targets, redis.proc.pid)))
    finally:
        for proc in (on, off):
            proc.stop()
        redis.stop()
        sims.proc.stop()


if __name__ == "__main__":
    main()
