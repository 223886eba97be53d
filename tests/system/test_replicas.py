"""Three gateway replicas behind a real load balancer (nginx, round robin), one Redis.

What Kubernetes would run, on one machine: idempotency holds whichever replica
a resubmission lands on; an admin change made through one replica is in force
on all within a second; a replica SIGKILLed mid-load loses no acknowledged
payment; a replica stopped with SIGTERM finishes its requests while the load
balancer moves to the others, with no error at the client.
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from loadtest.harness import Gateway, LoadBalancer, RedisServer, Upstreams
from tests.conftest import ADMIN_TOKEN, GOOD_PAYMENT

pytestmark = pytest.mark.slow

REPLICAS = 3
PROPAGATION_S = 1.0  # the bound for an admin change to reach every replica
FINAL_TRIES = 40
RETRYABLE = {409, 502, 503, 504}


@dataclass
class Cluster:
    sims: Upstreams
    redis: RedisServer
    replicas: list[Gateway]
    lb: LoadBalancer


@pytest.fixture
def cluster(log_dir: Path) -> Iterator[Cluster]:
    sims = Upstreams(log_dir)
    sims.set_faults("payment", dedup=False)  # every POST that reaches it is a charge
    redis = RedisServer(log_dir)
    config = {
        "redis": {"url": redis.url},
        "server": {"drain_delay_s": 1.0, "drain_timeout_s": 5.0},
        "idempotency": {"lease_s": 2.0},
        "upstreams": {"order": {"timeout_s": 0.5},
                      "payment": {"timeout_s": 0.5}},
    }
    replicas: list[Gateway] = []
    lb = None
    try:
        replicas = [Gateway(log_dir, sims.urls, config=config,
                            env={"GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN}) for _ in range(REPLICAS)]
        lb = LoadBalancer(log_dir, [f"127.0.0.1:{gw.port}" for gw in replicas])
        yield Cluster(sims, redis, replicas, lb)
    finally:
        if lb is not None:
            lb.stop()
        for gw in replicas:
            gw.stop()
        redis.stop()
        sims.proc.stop()


async def _pay(http: aiohttp.ClientSession, url: str, key: str,
               body: dict[str, Any]) -> tuple[int, Any]:
    async with http.post(url + "/v1/payments", json=body,
                         headers={"Idempotency-Key": key, "X-Client-ID": "shop"}) as resp:
        # The load balancer's own 502 page (a request lost with a killed replica) is HTML.
        data = await resp.json() if resp.content_type.endswith("json") else None
        return resp.status, data


async def _pay_until_final(http: aiohttp.ClientSession, url: str, key: str,
                           body: dict[str, Any], seen: list[str] | None = None) -> tuple[int, Any]:
    for _ in range(FINAL_TRIES):
        status, data = await _pay(http, url, key, body)
        if seen is not None:
            code = data.get("code") if isinstance(data, dict) else None
            seen.append(f"{status} {code}" if code else str(status))
        if status not in RETRYABLE:
            return status, data
        await asyncio.sleep(0.25)
    return status, data


async def test_resubmissions_spread_over_replicas_charge_once(
        cluster: Cluster, http: aiohttp.ClientSession) -> None:
    keys = {str(uuid.uuid4()): {**GOOD_PAYMENT, "amount": 100 + n} for n in range(20)}
    first = await asyncio.gather(*(
        _pay(http, cluster.lb.url, k, body) for k, body in keys.items() for _ in range(6)))
    assert {status for status, _ in first} <= {201, 409}
    finals = await asyncio.gather(*(
        _pay_until_final(http, cluster.lb.url, k, body) for k, body in keys.items()
        for _ in range(3)))
    charges = cluster.sims.stats("payment")["charges_by_key"]
    assert all(charges.get(k) == 1 for k in keys), charges
    by_key: dict[str, set[str]] = {}
    for (k, _), (status, data) in zip(
            [(k, i) for k in keys for i in range(3)], finals, strict=True):
        assert status == 201
        by_key.setdefault(k, set()).add(data["payment_id"])
    assert all(len(ids) == 1 for ids in by_key.values()), "every replica answers the same"
    print(f"across replicas: {len(first)} concurrent submissions of {len(keys)} keys answered"
          f" {dict(Counter(s for s, _ in first))}, then {len(finals)} resubmissions all 201;"
          f" charges per key {set(charges[k] for k in keys)}")


async def _until(check: Any, within_s: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < within_s:
        if await check():
            return time.monotonic() - started
        await asyncio.sleep(0.02)
    raise AssertionError(f"not in force within {within_s} s")


async def test_admin_changes_through_one_replica_reach_all_within_a_second(
        cluster: Cluster, http: aiohttp.ClientSession) -> None:
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    first, *others = cluster.replicas
    async with http.put(first.url + "/admin/maintenance", headers=auth, json={
            "scope": "payment", "message": {"en": "Payment upgrade", "zh-CN": "支付升级"}}) as resp:
        assert resp.status == 200

    async def refused_everywhere() -> bool:
        codes = []
        for gw in others:
            async with http.post(gw.url + "/v1/payments", json=GOOD_PAYMENT,
                                 headers={"Idempotency-Key": str(uuid.uuid4())}) as resp:
                codes.append((await resp.json()).get("code"))
        return codes == ["MAINTENANCE"] * len(others)

    window_s = await _until(refused_everywhere, PROPAGATION_S)
    async with http.put(first.url + "/admin/breakers/order", headers=auth,
                        json={"open_seconds": 42}) as resp:
        assert resp.status == 200

    async def set_everywhere() -> bool:
        for gw in others:
            async with http.get(gw.url + "/admin/breakers", headers=auth) as resp:
                board = await resp.json()
            order = next(b for b in board["breakers"] if b["name"] == "order")
            if order["settings"]["open_seconds"] != 42:
                return False
        return True

    breaker_s = await _until(set_everywhere, PROPAGATION_S)
    print(f"maintenance window on every replica after {window_s:.3f} s,"
          f" breaker setting after {breaker_s:.3f} s")


async def _load(http: aiohttp.ClientSession, url: str, seconds: float,
                outcomes: list[tuple[str, int, Any]], seen: list[str]) -> None:
    """One client paying in a loop, each payment resubmitted until final."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        key = str(uuid.uuid4())
        status, data = await _pay_until_final(http, url, key, GOOD_PAYMENT, seen)
        outcomes.append((key, status, data))


async def test_a_replica_killed_mid_load_loses_no_acknowledged_payment(
        cluster: Cluster, http: aiohttp.ClientSession) -> None:
    outcomes: list[tuple[str, int, Any]] = []
    seen: list[str] = []
    load = asyncio.gather(*(_load(http, cluster.lb.url, 4.0, outcomes, seen)
                            for _ in range(6)))
    await asyncio.sleep(1.5)
    cluster.replicas[1].proc.signal(signal.SIGKILL)
    await load
    charges = cluster.sims.stats("payment")["charges_by_key"]
    acknowledged = [(k, data) for k, status, data in outcomes if status == 201]
    assert len(acknowledged) == len(outcomes) > 20, [s for _, s, _ in outcomes if s != 201]
    assert all(charges.get(k) == 1 for k, _ in acknowledged)
    assert all(v == 1 for v in charges.values()), "nothing charged twice"
    print(f"SIGKILL mid-load: {len(seen)} submissions for {len(outcomes)} payments, answers"
          f" {dict(Counter(seen))}; {len(charges)} keys charged, each once")


async def test_a_replica_stopped_with_sigterm_drains_without_client_errors(
        cluster: Cluster, http: aiohttp.ClientSession) -> None:
    statuses: list[int] = []
    errors: list[str] = []

    async def reader(deadline: float) -> None:
        url = cluster.lb.url + "/v1/availability?address=Beijing%201&product=fiber"
        while time.monotonic() < deadline:
            try:
                async with http.get(url) as resp:
                    await resp.read()
                    statuses.append(resp.status)
            except aiohttp.ClientError as exc:
                errors.append(repr(exc))

    deadline = time.monotonic() + 5.0
    readers = asyncio.gather(*(reader(deadline) for _ in range(8)))
    await asyncio.sleep(1.0)
    leaving = cluster.replicas[2]
    leaving.proc.signal(signal.SIGTERM)
    await readers
    assert leaving.proc.wait(timeout=15) == 0
    assert not errors, errors[:3]
    assert statuses and set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
    print(f"SIGTERM drain: {len(statuses)} reads, all 200, {len(errors)} client errors;"
          " the replica exited 0")
