"""Exactly once, proven against a payment backend that does NOT deduplicate by key.

Two gateway processes share one real Redis; the payment simulator's own
`dedup` is off, so every POST that reaches it is a charge. Whatever happens
(concurrent duplicates, resets, timeouts, a gateway killed while holding a
claim, Redis killed mid-run) each key must end with exactly one charge, and
every client's final answer must name that charge.
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.contract.settings import UpstreamSettings
from loadtest.harness import Gateway, RedisServer, Upstreams
from tests.conftest import GOOD_ORDER
from tests.system.test_idempotency import Answer, payment, submit

pytestmark = pytest.mark.slow

CLIENT = "shop-app"
RETRYABLE = {"IDEMPOTENCY_IN_PROGRESS", "PAYMENT_OUTCOME_UNKNOWN", "STATE_UNAVAILABLE",
             "UPSTREAM_UNAVAILABLE", "UPSTREAM_TIMEOUT", "CIRCUIT_OPEN"}
# The breaker would only slow these runs down; it is not what they test.
LENIENT_BREAKER = {"failure_rate_threshold": 1.0, "consecutive_failures": 100_000,
                   "minimum_calls": 100_000, "slow_call_rate_threshold": 1.0}


@dataclass
class Rig:
    sims: Upstreams
    redis: RedisServer
    timeout_s: float  # the payment backend timeout the gateways run with
    gateways: list[Gateway] = field(default_factory=list)


@contextmanager
def _two_gateways(log_dir: Path, settings: dict[str, Any], *,
                  short_timeouts: bool = True) -> Iterator[Rig]:
    """Fresh simulators (clean counts), a persistent Redis, and two gateways sharing it."""
    sims = Upstreams(log_dir)
    redis = RedisServer(log_dir, persistent=True)
    payment_settings = settings.get("upstreams", {}).get("payment", {})
    setup = Rig(sims, redis, UpstreamSettings(url="http://x", **payment_settings).timeout_s)
    try:
        setup.gateways = [Gateway(log_dir, sims.urls, short_timeouts=short_timeouts,
                                  config={**settings, "redis": {"url": redis.url}})
                          for _ in range(2)]
        yield setup
    finally:
        for gw in setup.gateways:
            gw.stop()
        redis.stop()
        sims.proc.stop()


@pytest.fixture
def rig(log_dir: Path) -> Iterator[Rig]:
    with _two_gateways(log_dir, {
        "idempotency": {"lease_s": 2.0},
        "upstreams": {"order": {"timeout_s": 0.5},
                      "payment": {"timeout_s": 0.5, "breaker": LENIENT_BREAKER}},
    }) as setup:
        setup.sims.set_faults("payment", dedup=False)
        yield setup


def _keys(n: int) -> dict[str, dict[str, Any]]:
    return {str(uuid.uuid4()): payment() for _ in range(n)}


async def _until_final(http: aiohttp.ClientSession, gw: Gateway, k: str, body: dict[str, Any],
                       seen: list[Answer], deadline: float) -> Answer:
    """Resubmit like a well-behaved app: same key, same body, until a final answer."""
    while time.monotonic() < deadline:
        try:
            answer = await submit(http, gw, "/v1/payments", k, body, client=CLIENT)
        except aiohttp.ClientError:
            await asyncio.sleep(0.1)
            continue
        seen.append(answer)
        if answer.code not in RETRYABLE:
            return answer
        await asyncio.sleep(0.1)
    raise AssertionError(f"no final answer for {k} in time; last: {seen[-1:]}")


def _assert_one_charge_each(sims: Upstreams, keys: dict[str, Any],
                            finals: dict[str, set[bytes]]) -> None:
    stats = sims.stats("payment")
    assert stats["charges"] == len(keys)
    assert {k: stats["charges_by_key"].get(k) for k in keys} == dict.fromkeys(keys, 1)
    for k, bodies in finals.items():
        assert len(bodies) == 1, f"clients of {k} got different answers"


async def test_200_concurrent_clients_20_keys_each_charged_once(
        rig: Rig, http: aiohttp.ClientSession) -> None:
    rig.sims.set_faults("payment", latency_ms=200)
    keys = _keys(20)
    names = list(keys)
    start = asyncio.Event()

    async def client(i: int) -> Answer:
        k = names[i % 20]
        await start.wait()
        return await submit(http, rig.gateways[i % 2], "/v1/payments", k, keys[k], client=CLIENT)

    tasks = [asyncio.create_task(client(i)) for i in range(200)]
    start.set()
    answers = await asyncio.gather(*tasks)
    firsts: dict[str, set[bytes]] = {k: set() for k in keys}
    for i, answer in enumerate(answers):
        assert answer.status == 201 or answer.code == "IDEMPOTENCY_IN_PROGRESS", answer
        if answer.status == 201:
            firsts[names[i % 20]].add(answer.body)
    assert sum(a.status == 409 for a in answers) > 0, "the run never overlapped"
    # Once settled, every client gets the same stored answer from either gateway.
    again = await asyncio.gather(*(
        submit(http, rig.gateways[(i + 1) % 2], "/v1/payments", names[i % 20],
               keys[names[i % 20]], client=CLIENT) for i in range(200)))
    for i, answer in enumerate(again):
        assert answer.status == 201 and answer.replayed
        firsts[names[i % 20]].add(answer.body)
    stats = rig.sims.stats("payment")
    assert {k: stats["requests_by_key"].get(k) for k in keys} == dict.fromkeys(keys, 1)
    _assert_one_charge_each(rig.sims, keys, firsts)


async def test_resets_and_timeouts_still_end_in_exactly_one_charge(
        rig: Rig, http: aiohttp.ClientSession) -> None:
    # Resets come after the charge; 40% of calls outlast the gateway's 0.5 s timeout.
    rig.sims.set_faults("payment", reset_rate=0.25, latency_ms=50, jitter_ms=750)
    keys = _keys(20)
    deadline = time.monotonic() + 90
    seen: list[Answer] = []
    jobs = [(k, gw) for k in keys for gw in rig.gateways for _ in range(2)]
    finals = await asyncio.gather(*(_until_final(http, gw, k, keys[k], seen, deadline)
                                    for k, gw in jobs))
    codes = {a.code for a in seen}
    assert "PAYMENT_OUTCOME_UNKNOWN" in codes, "the faults never bit"
    by_key: dict[str, set[bytes]] = {k: set() for k in keys}
    for (k, _), answer in zip(jobs, finals, strict=True):
        assert answer.status == 201, answer
        by_key[k].add(answer.body)
    _assert_one_charge_each(rig.sims, keys, by_key)
    # The check's own lookup must not meet the injected resets (they hit 1 run in 4).
    rig.sims.set_faults("payment", reset_rate=0, latency_ms=0, jitter_ms=0)
    lookup = await _charged(http, rig.sims, next(iter(keys)))
    assert by_key[next(iter(keys))] == {lookup}


async def test_a_gateway_killed_while_holding_a_claim_is_taken_over_after_the_lease(
        rig: Rig, http: aiohttp.ClientSession) -> None:
    doomed, survivor = rig.gateways
    rig.sims.set_faults("payment", latency_ms=300)
    k, body = next(iter(_keys(1).items()))
    claimed_at = time.monotonic()
    first = asyncio.create_task(submit(http, doomed, "/v1/payments", k, body, client=CLIENT))
    await asyncio.sleep(0.1)
    doomed.proc.signal(signal.SIGSTOP)  # frozen holding the claim, its request at the backend
    for _ in range(50):
        if rig.sims.stats("payment")["charges_by_key"].get(k) == 1:
            break
        await asyncio.sleep(0.05)
    assert rig.sims.stats("payment")["charges_by_key"].get(k) == 1, "the charge was made"
    doomed.proc.kill()
    with pytest.raises(aiohttp.ClientError):
        await first
    rig.gateways.remove(doomed)
    rig.sims.heal()
    rig.sims.set_faults("payment", dedup=False)
    answers = []
    while time.monotonic() - claimed_at < 10:
        answer = await submit(http, survivor, "/v1/payments", k, body, client=CLIENT)
        answers.append((time.monotonic() - claimed_at, answer))
        if answer.status == 201:
            break
        assert answer.code == "IDEMPOTENCY_IN_PROGRESS", answer
        await asyncio.sleep(0.2)
    elapsed, final = answers[-1]
    assert final.status == 201 and final.replayed, "found by reconciling, not charged again"
    assert answers[0][1].code == "IDEMPOTENCY_IN_PROGRESS", "not taken over before the lease"
    assert elapsed >= 2.0 - 0.3
    assert final.body == await _charged(http, rig.sims, k)
    stats = rig.sims.stats("payment")
    assert (stats["charges_by_key"][k], stats["requests_by_key"][k]) == (1, 1)


async def test_redis_killed_mid_run_fails_closed_and_charges_nothing_twice(
        rig: Rig, http: aiohttp.ClientSession) -> None:
    rig.sims.set_faults("payment", latency_ms=100)
    keys = _keys(20)
    seen: list[Answer] = []
    deadline = time.monotonic() + 60

    async def outage() -> None:
        await asyncio.sleep(0.4)
        rig.redis.kill()
        await asyncio.sleep(2.0)
        rig.redis.start()

    async def client(k: str, gw: Gateway, delay: float) -> Answer:
        await asyncio.sleep(delay)
        return await _until_final(http, gw, k, keys[k], seen, deadline)

    jobs = [(k, gw, n * 0.1) for n, k in enumerate(keys) for gw in rig.gateways]
    results = await asyncio.gather(outage(), *(client(k, gw, d) for k, gw, d in jobs))
    finals = results[1:]
    assert "STATE_UNAVAILABLE" in {a.code for a in seen}, "the outage was never seen"
    by_key: dict[str, set[bytes]] = {k: set() for k in keys}
    for (k, _, _), answer in zip(jobs, finals, strict=True):
        assert answer.status == 201, answer
        by_key[k].add(answer.body)
    _assert_one_charge_each(rig.sims, keys, by_key)
    stats = rig.sims.stats("payment")
    assert {k: stats["requests_by_key"].get(k) for k in keys} == dict.fromkeys(keys, 1), \
        "a payment was forwarded without a record"


async def _charged(http: aiohttp.ClientSession, sims: Upstreams, k: str) -> bytes:
    async with http.get(sims.urls["payment"] + "/payments", params={"idempotency_key": k},
                        headers={"X-Client-ID": CLIENT}) as resp:
        assert resp.status == 200
        return await resp.read()


# -- the same guarantee on the shipped defaults ----------------------------------------------
#
# A new user's setup: two gateways sharing one Redis, nothing tuned, and backends that do not
# deduplicate by key. Five clients per key, some impatient (they give up and resubmit), while
# the backend resets connections after acting or answers around its timeout. Then the backend
# heals and each key is resubmitted until it has a final answer (waiting out an open breaker).

DEFAULTS: dict[str, Any] = {}
TUNED: dict[str, Any] = {"idempotency": {"lease_s": 2.0},
                         "upstreams": {"order": {"timeout_s": 0.5},
                                       "payment": {"timeout_s": 0.5}}}
CLIENTS_PER_KEY = 5


@dataclass(frozen=True)
class Resource:
    route: str
    backend: str
    made_by_key: str  # the simulator's count of what it created, per key
    id_field: str

    def body(self) -> dict[str, Any]:
        return payment() if self.backend == "payment" else dict(GOOD_ORDER)


PAYMENTS = Resource("/v1/payments", "payment", "charges_by_key", "payment_id")
ORDERS = Resource("/v1/orders", "order", "orders_by_key", "order_id")


@pytest.fixture(params=["defaults", "tuned"])
def fleet(request: pytest.FixtureRequest, log_dir: Path) -> Iterator[Rig]:
    settings = DEFAULTS if request.param == "defaults" else TUNED
    with _two_gateways(log_dir, settings, short_timeouts=False) as setup:
        yield setup


async def _customer(http: aiohttp.ClientSession, gw: Gateway, what: Resource, k: str,
                    body: dict[str, Any], *, give_up_s: float, until: float) -> Answer | None:
    """Submits and resubmits (same key, same body) until a final answer or `until`."""
    while time.monotonic() < until:
        try:
            answer = await asyncio.wait_for(
                submit(http, gw, what.route, k, body, client=CLIENT), give_up_s)
        except (aiohttp.ClientError, TimeoutError):
            continue  # gave up waiting (the gateway carries on) or lost the connection
        if answer.code not in RETRYABLE:
            return answer
        retry_after = float(answer.headers.get("Retry-After", "0"))
        await asyncio.sleep(min(retry_after, 2.0) if answer.code == "CIRCUIT_OPEN" else 0.1)
    return None


async def _run_incident(http: aiohttp.ClientSession, fleet: Rig, what: Resource,
                        fault_s: float, **faults: Any) -> dict[str, list[Answer]]:
    """The scenario above; every final answer a client got, by key."""
    keys = {str(uuid.uuid4()): what.body() for _ in range(20)}
    fleet.sims.set_faults(what.backend, dedup=False, **faults)
    until = time.monotonic() + fault_s
    jobs = [(k, i) for k in keys for i in range(CLIENTS_PER_KEY)]
    answers = await asyncio.gather(*(
        _customer(http, fleet.gateways[i % 2], what, k, keys[k], until=until,
                  # Odd clients are impatient: they give up well before the gateway does.
                  give_up_s=fleet.timeout_s * 0.3 if i % 2 else 60.0)
        for k, i in jobs))
    finals: dict[str, list[Answer]] = {k: [] for k in keys}
    for (k, _), answer in zip(jobs, answers, strict=True):
        if answer is not None:
            finals[k].append(answer)
    fleet.sims.heal()
    fleet.sims.set_faults(what.backend, dedup=False)
    until = time.monotonic() + 45
    healed = await asyncio.gather(*(
        _customer(http, fleet.gateways[n % 2], what, k, body, give_up_s=60.0, until=until)
        for n, (k, body) in enumerate(keys.items())))
    for k, answer in zip(keys, healed, strict=True):
        assert answer is not None, f"{k} never got a final answer after the backend healed"
        finals[k].append(answer)
    return finals


def _assert_exactly_once(fleet: Rig, what: Resource, finals: dict[str, list[Answer]]) -> None:
    made = fleet.sims.stats(what.backend)[what.made_by_key]
    assert {k: made.get(k) for k in finals} == dict.fromkeys(finals, 1), "made once per key"
    for k, answers in finals.items():
        assert {a.status for a in answers} == {201}, answers
        assert len({a.json[what.id_field] for a in answers}) == 1, f"{k}: clients disagree"


async def _events(http: aiohttp.ClientSession, fleet: Rig, event: str) -> float:
    """How often the gateways counted an idempotency event, summed over routes."""
    total = 0.0
    for gw in fleet.gateways:
        async with http.get(gw.url + "/metrics") as resp:
            for line in (await resp.text()).splitlines():
                if line.startswith("gateway_idempotency_events_total{") and \
                        f'event="{event}"' in line:
                    total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.mark.parametrize("what", [PAYMENTS, ORDERS], ids=["payments", "orders"])
async def test_resets_after_acting_never_make_anything_twice(
        fleet: Rig, what: Resource, http: aiohttp.ClientSession) -> None:
    finals = await _run_incident(http, fleet, what, fault_s=8 * fleet.timeout_s,
                                 reset_rate=0.3)
    _assert_exactly_once(fleet, what, finals)
    assert await _events(http, fleet, "reconciled_found") > 0, "the resets never bit"


async def test_answers_around_the_timeout_never_charge_twice(
        fleet: Rig, http: aiohttp.ClientSession) -> None:
    # Half the calls outlast the gateway's timeout: some are charged just before it, their
    # answers lost; the rest are dropped unprocessed once the gateway hangs up.
    latency_ms = int(fleet.timeout_s * 1000 * 0.95)
    finals = await _run_incident(http, fleet, PAYMENTS, fault_s=4 * fleet.timeout_s,
                                 latency_ms=latency_ms, jitter_ms=latency_ms // 10)
    _assert_exactly_once(fleet, PAYMENTS, finals)
    assert await _events(http, fleet, "outcome_unknown") > 0, "no call ever timed out"
