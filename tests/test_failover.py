"""Exactly once across a failover of a replicated Redis, proven under the fault that breaks it.

A real master, a real replica that reaches it through a relay the test can stall, and a
real sentinel (quorum 1). With replication stalled, the master acknowledges every write
while the replica receives none of them: the window in which an asynchronous replica
loses what its master said yes to. Customers pay and order; the master is SIGKILLed; the
sentinel promotes the stale replica; a new replica joins it, as a replaced node would;
every customer resubmits with the same key until the answer is final.

With the gateway's default settings and the backends' own deduplication off (so nothing
but the gateway stands between a resubmission and a second charge):
- every key is charged (ordered) exactly once, and every 201 for a key names the same
  payment (order);
- every answer given while replication was stalled is 503 STATE_UNAVAILABLE, and nothing
  was charged meanwhile: no replica could hold the claim, so nothing was forwarded;
- the answers given before the stall are replayed byte for byte after the failover.
The control run beside it (replication flowing) kills the master the same way.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import redis

from loadtest.harness import Gateway, RedisServer, Relay, Sentinel, Upstreams, wait_until
from tests.conftest import ADMIN_TOKEN, GOOD_ORDER, GOOD_PAYMENT

CUSTOMERS = 12  # who pay and order while replication is stalled (or, in the control, not)
EARLIER = 4  # who pay and order before, while replication flows
FINAL_WITHIN_S = 30.0  # for every resubmission to get its final answer after the failover


@dataclass
class Rig:
    master: RedisServer
    relay: Relay
    replica: RedisServer
    sentinel: Sentinel
    gateway: Gateway
    log_dir: Path

    def replica_in_sync(self) -> bool:
        client = redis.Redis(port=self.master.port, socket_timeout=2)
        try:
            info = client.info("replication")
        finally:
            client.close()
        return int(info.get("connected_slaves", 0)) == 1 and self.sentinel.knows_replicas()


@pytest.fixture
def rig(log_dir: Path, upstreams: Upstreams) -> Iterator[Rig]:
    master = RedisServer(log_dir)
    relay = Relay(master.port)
    replica = RedisServer(log_dir, replica_of=relay.port)
    sentinel = Sentinel(log_dir, master.port)
    gateway = None
    try:
        # The shipped defaults but for the Redis URL: nothing here is tuned for the test.
        gateway = Gateway(log_dir, upstreams.urls, config={"redis": {"url": sentinel.url}},
                          env={"GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN}, short_timeouts=False)
        the_rig = Rig(master, relay, replica, sentinel, gateway, log_dir)
        wait_until(the_rig.replica_in_sync, 20, "the replica never came online")
        for backend in ("payment", "order"):
            upstreams.set_faults(backend, dedup=False)
        yield the_rig
    finally:
        upstreams.heal()
        if gateway is not None:
            gateway.stop()
        sentinel.stop()
        relay.close()
        for server in (replica, master):
            server.stop()


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    code: str | None
    replayed: bool


def _order(customer: str) -> dict[str, Any]:
    # One address per customer: the order backend refuses nothing here, whatever the key.
    return {**GOOD_ORDER, "address": f"{GOOD_ORDER['address']} {customer}"}


async def _submit(http: aiohttp.ClientSession, gw: Gateway, route: str, key: str,
                  body: dict[str, Any]) -> Answer:
    async with http.post(gw.url + route, json=body, headers={"Idempotency-Key": key}) as resp:
        data = await resp.read()
        code = None
        if resp.content_type == "application/problem+json":
            code = (await resp.json(content_type=None)).get("code")
        return Answer(resp.status, data, code, resp.headers.get("Idempotent-Replayed") == "true")


async def _until_final(http: aiohttp.ClientSession, gw: Gateway, route: str, key: str,
                       body: dict[str, Any], deadline: float) -> list[Answer]:
    """Resubmit as an app does after an error it may retry, until the answer is final."""
    answers = [await _submit(http, gw, route, key, body)]
    while answers[-1].status in (409, 503) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        answers.append(await _submit(http, gw, route, key, body))
    return answers


async def _everyone(http: aiohttp.ClientSession, gw: Gateway,
                    submissions: list[tuple[str, str, dict[str, Any]]]) -> list[Answer]:
    return list(await asyncio.gather(*(_submit(http, gw, route, key, body)
                                       for route, key, body in submissions)))


def _submissions(customers: list[str]) -> list[tuple[str, str, dict[str, Any]]]:
    return ([("/v1/payments", f"pay-{c}", GOOD_PAYMENT) for c in customers]
            + [("/v1/orders", f"order-{c}", _order(c)) for c in customers])


def _created(upstreams: Upstreams) -> dict[str, int]:
    """Charges and orders actually made, per key."""
    return {**upstreams.stats("payment")["charges_by_key"],
            **upstreams.stats("order")["orders_by_key"]}


def _fail_over(rig: Rig) -> RedisServer:
    """SIGKILL the master; once the sentinel names the replica, a new replica joins it."""
    rig.master.kill()
    wait_until(lambda: rig.sentinel.master_port() == rig.replica.port, 30,
               "the sentinel promoted no replica")
    rig.relay.close()
    return RedisServer(rig.log_dir, replica_of=rig.replica.port)


def _named(answer: Answer) -> str:
    data = orjson.loads(answer.body)
    return str(data.get("payment_id") or data.get("order_id"))


@pytest.mark.slow
@pytest.mark.parametrize("stalled", [True, False], ids=["replication-stalled", "control"])
async def test_no_key_is_charged_or_ordered_twice_across_a_failover(
        rig: Rig, upstreams: Upstreams, http: aiohttp.ClientSession, stalled: bool) -> None:
    run = uuid.uuid4().hex[:8]
    earlier = _submissions([f"{run}-early-{i}" for i in range(EARLIER)])
    during = _submissions([f"{run}-{i}" for i in range(CUSTOMERS)])

    first = dict(zip((key for _, key, _ in earlier),
                     await _everyone(http, rig.gateway, earlier), strict=True))
    assert {a.status for a in first.values()} == {201}, first
    created_before = _created(upstreams)
    if stalled:
        rig.relay.stall()
    stall_answers = await _everyone(http, rig.gateway, during)
    created_during = _created(upstreams)

    started = time.monotonic()
    joined = _fail_over(rig)
    try:
        deadline = time.monotonic() + FINAL_WITHIN_S
        resubmitted = await asyncio.gather(*(
            _until_final(http, rig.gateway, route, key, body, deadline)
            for route, key, body in [*earlier, *during]))
        recovered_s = time.monotonic() - started
        created = _created(upstreams)
    finally:
        joined.stop()

    keys = [key for _, key, _ in [*earlier, *during]]
    # Exactly once, whatever else happened.
    assert {key: created.get(key, 0) for key in keys} == dict.fromkeys(keys, 1)
    answers = {key: [first[key]] if key in first else [] for key in keys}
    for (_, key, _), before, after in zip(during, stall_answers, resubmitted[EARLIER * 2:],
                                          strict=True):
        answers[key] += [before, *after]
    for (_, key, _), after in zip(earlier, resubmitted[:EARLIER * 2], strict=True):
        answers[key] += after
    for key, seen in answers.items():
        final = seen[-1]
        assert final.status == 201, (key, seen)
        assert len({_named(a) for a in seen if a.status == 201}) == 1, (key, seen)
        assert {a.status for a in seen} <= {201, 409, 503}, (key, seen)
    # What the clients were told before the failover is replayed byte for byte after it.
    for key, answer in first.items():
        assert answers[key][-1].body == answer.body and answers[key][-1].replayed, key
    if stalled:
        # No replica could hold a claim: each was withdrawn, nothing forwarded or charged.
        assert {(a.status, a.code) for a in stall_answers} == {(503, "STATE_UNAVAILABLE")}
        assert created_during == created_before
    else:
        assert {a.status for a in stall_answers} == {201}
    refused = sum(a.status == 503 for r in resubmitted for a in r)
    print(f"{'stalled' if stalled else 'control'}: every key final {recovered_s:.1f} s after "
          f"the SIGKILL; at most {max(len(r) for r in resubmitted)} submissions a key, "
          f"{refused} answered 503 meanwhile")
