"""A Redis failover under steady load: what customers see, and that nobody pays twice.

On loopback: a Redis master with two replicas and a sentinel (quorum 1), the simulators
(the payment backend's own deduplication off), and one gateway on the sentinel URL with
its default settings. Payers each pay with a new key and resubmit with the same key
until the answer is final, as apps do; readers ask for availability. After `--kill-at`
seconds the master is SIGKILLed; the sentinel promotes a replica and points the other at
it. The run ends after `--seconds`, every key is resubmitted until final, and the
verdict checks that no key was charged twice and every key ended in 201.

It reports how long keyed POSTs failed closed (503 STATE_UNAVAILABLE, from the first
to the last after the kill), and the reads' answers meanwhile: availability needs no
Redis and never waits for a replica, so every read should be answered 200.

    python -m loadtest.failover --seconds 12 --kill-at 4
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from loadtest.harness import (
    Gateway,
    RedisServer,
    Sentinel,
    Upstreams,
    replicas_hold_writes,
    wait_until,
)

PAYMENT = {"order_id": "ord_1", "amount": 9900, "currency": "CNY", "method": "alipay"}
AVAILABILITY = "/v1/availability?address=Beijing%201&product=fiber-500"
FINAL_WITHIN_S = 30.0


@dataclass
class Rig:
    master: RedisServer
    replicas: list[RedisServer]
    sentinel: Sentinel
    sims: Upstreams
    gateway: Gateway


@contextmanager
def rig(log_dir: Path) -> Iterator[Rig]:
    with ExitStack() as stack:
        master = RedisServer(log_dir)
        stack.callback(master.stop)
        replicas = [RedisServer(log_dir, replica_of=master.port) for _ in range(2)]
        for replica in replicas:
            stack.callback(replica.stop)
        wait_until(lambda: replicas_hold_writes(master.port, 2), 20,
                   "the replicas never came online")
        sentinel = Sentinel(log_dir, master.port)
        stack.callback(sentinel.stop)
        wait_until(lambda: len(sentinel.ask("SENTINEL", "replicas", Sentinel.SERVICE)) == 2,
                   20, "the sentinel never saw both replicas")
        sims = Upstreams(log_dir)
        stack.callback(sims.proc.stop)
        sims.set_faults("payment", dedup=False)
        gateway = Gateway(log_dir, sims.urls, config={"redis": {"url": sentinel.url}},
                          short_timeouts=False)
        stack.callback(gateway.stop)
        yield Rig(master, replicas, sentinel, sims, gateway)


@dataclass
class Seen:
    """Answers by second since the start, and each payer's keys with their answers."""

    started: float = field(default_factory=time.monotonic)
    writes: list[tuple[float, int]] = field(default_factory=list)
    reads: list[tuple[float, int]] = field(default_factory=list)
    keys: dict[str, list[int]] = field(default_factory=dict)

    def at(self) -> float:
        return time.monotonic() - self.started


async def _pay(http: aiohttp.ClientSession, url: str, key: str) -> int:
    try:
        async with http.post(url + "/v1/payments", json=PAYMENT,
                             headers={"Idempotency-Key": key}) as resp:
            await resp.read()
            return resp.status
    except aiohttp.ClientError:
        return 0  # no answer at all: counted apart from the gateway's own


async def _payer(http: aiohttp.ClientSession, url: str, seen: Seen, until: float) -> None:
    while seen.at() < until:
        key = f"failover-{uuid.uuid4()}"
        statuses = seen.keys.setdefault(key, [])
        while seen.at() < until:
            status = await _pay(http, url, key)
            statuses.append(status)
            seen.writes.append((seen.at(), status))
            if status not in (0, 409, 503):
                break
            await asyncio.sleep(0.1)  # an app's retry after a retryable answer


async def _reader(http: aiohttp.ClientSession, url: str, seen: Seen, until: float) -> None:
    while seen.at() < until:
        try:
            async with http.get(url + AVAILABILITY) as resp:
                await resp.read()
                seen.reads.append((seen.at(), resp.status))
        except aiohttp.ClientError:
            seen.reads.append((seen.at(), 0))


async def _finish(http: aiohttp.ClientSession, url: str, seen: Seen) -> None:
    """Every key resubmitted until final, after the load."""
    deadline = time.monotonic() + FINAL_WITHIN_S

    async def one(key: str, statuses: list[int]) -> None:
        while (not statuses or statuses[-1] in (0, 409, 503)) and time.monotonic() < deadline:
            statuses.append(await _pay(http, url, key))
            await asyncio.sleep(0.2)

    await asyncio.gather(*(one(key, statuses) for key, statuses in seen.keys.items()))


async def drive(the_rig: Rig, seconds: float, kill_at: float, payers: int,
                readers: int) -> tuple[Seen, float]:
    """The load, with the master SIGKILLed at `kill_at`: what was seen, and when it died."""
    url = the_rig.gateway.url
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        seen = Seen()
        load = [*(_payer(http, url, seen, seconds) for _ in range(payers)),
                *(_reader(http, url, seen, seconds) for _ in range(readers))]
        tasks = [asyncio.ensure_future(work) for work in load]
        await asyncio.sleep(kill_at)
        killed_at = seen.at()
        await asyncio.to_thread(the_rig.master.kill)
        await asyncio.gather(*tasks)
        await _finish(http, url, seen)
    return seen, killed_at


def report(seen: Seen, killed_at: float, charges: dict[str, int]) -> dict[str, Any]:
    after = [(at, status) for at, status in seen.writes if at >= killed_at]
    refused = [at for at, status in after if status == 503]
    reads = Counter(status for _, status in seen.reads)
    reads_after = Counter(status for at, status in seen.reads if at >= killed_at)
    twice = {key: n for key, n in charges.items() if n > 1 and key in seen.keys}
    unfinished = [key for key, statuses in seen.keys.items()
                  if not statuses or statuses[-1] != 201]
    return {
        "keys": len(seen.keys), "charged_twice": len(twice), "not_final_201": len(unfinished),
        "writes": dict(Counter(status for _, status in seen.writes)),
        "writes_failed_closed_s": round(refused[-1] - refused[0], 2) if refused else 0.0,
        "first_refusal_after_kill_s": round(refused[0] - killed_at, 2) if refused else None,
        "reads": dict(reads), "reads_after_kill": dict(reads_after),
        "reads_ok_share": round(reads[200] / max(1, sum(reads.values())), 4),
        "passed": not twice and not unfinished and seen.keys != {},
    }


def run(log_dir: Path, seconds: float, kill_at: float, payers: int = 8,
        readers: int = 4) -> dict[str, Any]:
    with rig(log_dir) as the_rig:
        seen, killed_at = asyncio.run(drive(the_rig, seconds, kill_at, payers, readers))
        charges: dict[str, int] = the_rig.sims.stats("payment")["charges_by_key"]
        promoted = the_rig.sentinel.master_port()
    result = report(seen, killed_at, charges)
    result["promoted_port"] = promoted
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--kill-at", type=float, default=4.0)
    parser.add_argument("--payers", type=int, default=8)
    parser.add_argument("--readers", type=int, default=4)
    args = parser.parse_args()
    log_dir = Path(tempfile.mkdtemp(prefix="order-gateway-failover-"))
    print(f"logs in {log_dir}", flush=True)
    result = run(log_dir, args.seconds, args.kill_at, args.payers, args.readers)
    for name, value in result.items():
        print(f"{name:28s} {value}")
    print("PASS" if result["passed"] else "FAIL")
    sys.exit(0 if result["passed"] else 1)


if __name__ == "__main__":
    main()
