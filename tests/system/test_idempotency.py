"""Idempotent resubmission through a real gateway, once with each store (memory, Redis).

Every rule of the contract's idempotency section: forwarded once, byte-identical
replays marked `Idempotent-Replayed`, in-progress duplicates, reused keys,
claims released when the backend was certainly not reached, and unknown
outcomes reconciled through the backend's lookup instead of charged again.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis

from gateway.pipeline.idempotency import record_id
from gateway.state.record_store import IDEMPOTENCY_KEY
from loadtest.harness import Gateway, RedisServer, Upstreams
from tests.conftest import (
    ADMIN_TOKEN,
    GOOD_ORDER,
    GOOD_PAYMENT,
    StartApp,
    admin_gateway,
    healed,
)

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
STORES = ["memory", "redis"]


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return orjson.loads(self.body)

    @property
    def code(self) -> str | None:
        return self.json.get("code") if self.status >= 400 else None

    @property
    def replayed(self) -> bool:
        return self.headers.get("Idempotent-Replayed") == "true"


async def submit(http: aiohttp.ClientSession, gw: Gateway, route: str, key: str,
                 body: dict[str, Any], client: str | None = None) -> Answer:
    headers = {"Idempotency-Key": key}
    if client is not None:
        headers["X-Client-ID"] = client
    async with http.post(gw.url + route, json=body, headers=headers) as resp:
        return Answer(resp.status, dict(resp.headers), await resp.read())


def key() -> str:
    return str(uuid.uuid4())


def payment(**changes: Any) -> dict[str, Any]:
    return {**GOOD_PAYMENT, "order_id": f"ord_{uuid.uuid4().hex[:12]}", **changes}


def _gateway_config(store: str, redis_server: RedisServer | None,
                    **idempotency: Any) -> dict[str, Any]:
    # Lost answers are what this module is about: the gateway's own retries would
    # (rightly) recover some of them before the client ever saw one.
    no_retries = {"retry": {"max_retries": 0}}
    config: dict[str, Any] = {"idempotency": {"lease_s": 5.0, **idempotency},
                              "upstreams": {"order": no_retries, "payment": no_retries}}
    if store == "redis":
        assert redis_server is not None
        config["redis"] = {"url": redis_server.url}
    return config


@pytest.fixture(scope="module", params=STORES)
def gw(request: pytest.FixtureRequest, log_dir: Path, upstreams: Upstreams) -> Iterator[Gateway]:
    server = request.getfixturevalue("redis_server") if request.param == "redis" else None
    with admin_gateway(log_dir, upstreams, _gateway_config(request.param, server)) as gateway:
        yield gateway


@pytest.fixture
def sims(gw: Gateway, upstreams: Upstreams) -> Iterator[Upstreams]:
    """Healthy simulators and closed breakers before and after each test."""
    with healed(upstreams, gw) as healthy_sims:
        yield healthy_sims


# -- forwarded once, replayed byte for byte ------------------------------------------------------

async def test_first_submission_is_forwarded_once_then_replayed_byte_for_byte(
        gw: Gateway, sims: Upstreams, http: aiohttp.ClientSession) -> None:
    k, body = key(), payment()
    first = await submit(http, gw, "/v1/payments", k, body)
    assert first.status == 201 and not first.replayed
    assert sims.stats("payment")["last_request"]["headers"]["Idempotency-Key"] == k
    for _ in range(3):
        again = await submit(http, gw, "/v1/payments", k, body)
        assert (again.status, again.body) == (201, first.body)
        assert again.replayed
        assert again.headers["Content-Type"] == first.headers["Content-Type"]
        assert again.headers["X-Request-ID"] != first.headers["X-Request-ID"]
    stats = sims.stats("payment")
    assert stats["requests_by_key"][k] == 1
    assert stats["charges_by_key"][k] == 1


async def test_a_business_refusal_is_stored_and_replayed(
        gw: Gateway, sims: Upstreams, http: aiohttp.ClientSession) -> None:
    k, body = key(), payment(method="balance", amount=2_000_000)
    first = await submit(http, gw, "/v1/payments", k, body)
    assert (first.status, first.code) == (402, "INSUFFICIENT_BALANCE")
    again = await submit(http, gw, "/v1/payments", k, body)
    assert (again.status, again.body, again.replayed) == (402, first.body, True)
    assert sims.stats("payment")["requests_by_key"][k] == 1


async def test_orders_are_replayed_too_and_the_normalised_body_is_what_counts(
        gw: Gateway, sims: Upstreams, http: aiohttp.ClientSession) -> None:
    k = key()
    first = await submit(http, gw, "/v1/orders", k, GOOD_ORDER)
    assert first.status == 201
    customer = {**GOOD_ORDER["customer"], "phone": "１３８００１３８０００"}
    full_width = {**GOOD_ORDER, "customer": customer}
    again = await submit(http, gw, "/v1/orders", k, full_width)
    assert (again.status, again.body, again.replayed) == (201, first.body, True)
    assert sims.stats("order")["requests_by_key"][k] == 1


# -- conflicts -----------------------------------------------------------------------------------

async def test_same_key_with_a_different_body_is_refused(
        gw: Gateway, sims: Upstreams, http: aiohttp.ClientSession) -> None:
    k, body = key(), payment()
    assert (await submit(http, gw, "/v1/payments", k, body)).status == 201
    other = await submit(http, gw, "/v1/payments", k, {**body, "amount": body["amount"] + 1})
    assert (other.status, other.code) == (422, "IDEMPOTENCY_KEY_REUSED")
    assert other.headers["Content-Type"] == "application/problem+json"
    assert sims.stats("payment")["requests_by_key"][k] == 1


async def test_keys_are_scoped_per_client_and_per_route(
        gw: Gateway, sims: Upstreams, http: aiohttp.ClientSession) -> None:
    k, body = key(), payment()
    mine = await submit(http, gw, "/v1/payments", k, body, client="app-a")
    theirs = await submit(http, gw, "/v1/payments", k, body, client="app-b")
    assert mine.status == theirs.status == 201
    assert not theirs.replayed and mine.json["payment_id"] != theirs.json["payment_id"]
    order = await submit(http, gw, "/v1/orders", k, GOOD_ORDER, client="app-a")
    assert order.status == 201 and not order.replayed
    assert sims.stats("payment")["requests_by_key"][k] == 2


async def test_a_duplicate_while_the_first_is_in_flight_gets_409(
        gw: Gateway, sims: Upstreams, http: aiohttp.ClientSession) -> None:
    sims.set_faults("payment", latency_ms=600)
    k, body = key(), payment()
    first_task = asyncio.create_task(submit(http, gw, "/v1/payments", k, body))
    await asyncio.sleep(0.2)
    dup = await submit(http, gw, "/v1/payments", k, body)
    assert (dup.status, dup.code) == (409, "IDEMPOTENCY_IN_PROGRESS")
    assert dup.json["retryable"] is True
    assert int(dup.headers["Retry-After"]) >= 1
    first = await first_task
    assert first.status == 201
    after = await submit(http, gw, "/v1/payments", k, body)
    assert (after.body, after.replayed) == (first.body, True)
    assert sims.stats("payment")["requests_by_key"][k] == 1


# -- the backend certainly not reached: the claim is released ----------------------------------

async def test_an_open_breaker_releases_the_claim(
        gw: Gateway, sims: Upstreams, http: aiohttp.ClientSession) -> None:
    k, body = key(), payment()
    gw.admin("POST", "/admin/breakers/payment/open", ADMIN_TOKEN)
    refused = await submit(http, gw, "/v1/payments", k, body)
    assert (refused.status, refused.code) == (503, "CIRCUIT_OPEN")
    gw.admin("POST", "/admin/breakers/payment/reset", ADMIN_TOKEN)
    before = sims.stats("payment")["requests"]
    ok = await submit(http, gw, "/v1/payments", k, body)
    assert ok.status == 201 and not ok.replayed
    # Forwarded straight away: no lookup was needed, the first attempt never left.
    assert sims.stats("payment")["requests"] == before + 1


async def test_replays_are_served_even_while_the_backend_is_cut_off(
        gw: Gateway, sims: Upstreams, http: aiohttp.ClientSession) -> None:
    k, body = key(), payment()
    first = await submit(http, gw, "/v1/payments", k, body)
    gw.admin("POST", "/admin/breakers/payment/open", ADMIN_TOKEN)
    again = await submit(http, gw, "/v1/payments", k, body)
    assert (again.status, again.body, again.replayed) == (201, first.body, True)


async def test_validation_failure_leaves_no_record(
        gw: Gateway, sims: Upstreams, http: aiohttp.ClientSession) -> None:
    k = key()
    bad = await submit(http, gw, "/v1/payments", k, payment(currency="USD"))
    assert (bad.status, bad.code) == (422, "VALIDATION_FAILED")
    ok = await submit(http, gw, "/v1/payments", k, payment())
    assert ok.status == 201 and not ok.replayed


# -- the request may have reached the backend: reconcile, never charge blindly -----------------

async def test_a_reset_after_the_charge_is_reconciled_not_charged_again(
        gw: Gateway, sims: Upstreams, http: aiohttp.ClientSession) -> None:
    k, body = key(), payment()
    sims.set_faults("payment", reset_rate=1.0)
    lost = await submit(http, gw, "/v1/payments", k, body)
    assert (lost.status, lost.code) == (502, "PAYMENT_OUTCOME_UNKNOWN")
    assert sims.stats("payment")["charges_by_key"][k] == 1, "the simulator did charge"
    sims.heal()
    found = await submit(http, gw, "/v1/payments", k, body)
    assert found.status == 201 and found.replayed
    charged = await _backend_lookup(http, sims, "payment", k)
    assert found.json == charged
    again = await submit(http, gw, "/v1/payments", k, body)
    assert (again.status, again.body, again.replayed) == (201, found.body, True)
    stats = sims.stats("payment")
    assert stats["charges_by_key"][k] == 1
    assert stats["requests_by_key"][k] == 1


async def test_a_timeout_is_reconciled_then_forwarded_once(
        gw: Gateway, sims: Upstreams, http: aiohttp.ClientSession) -> None:
    k, body = key(), payment()
    sims.set_faults("payment", latency_ms=1500)  # beyond the gateway's 1 s timeout
    lost = await submit(http, gw, "/v1/payments", k, body)
    assert (lost.status, lost.code) == (502, "PAYMENT_OUTCOME_UNKNOWN")
    sims.heal()
    ok = await submit(http, gw, "/v1/payments", k, body)
    assert ok.status == 201 and not ok.replayed, "the lookup found nothing, so it was forwarded"
    assert sims.stats("payment")["charges_by_key"][k] == 1


async def test_a_backend_5xx_is_reconciled_before_forwarding_again(
        gw: Gateway, sims: Upstreams, http: aiohttp.ClientSession) -> None:
    k, body = key(), payment()
    sims.set_faults("payment", error_rate=1.0, error_status=500)
    failed = await submit(http, gw, "/v1/payments", k, body)
    assert (failed.status, failed.code) == (502, "UPSTREAM_UNAVAILABLE")
    sims.heal()
    before = sims.stats("payment")["requests"]
    ok = await submit(http, gw, "/v1/payments", k, body)
    assert ok.status == 201
    assert sims.stats("payment")["requests"] == before + 2, "one lookup, then one charge"
    assert sims.stats("payment")["charges_by_key"][k] == 1


async def test_when_the_lookup_cannot_say_the_outcome_stays_unknown(
        gw: Gateway, sims: Upstreams, http: aiohttp.ClientSession) -> None:
    k, body = key(), payment()
    sims.set_faults("payment", reset_rate=1.0)
    assert (await submit(http, gw, "/v1/payments", k, body)).code == "PAYMENT_OUTCOME_UNKNOWN"
    sims.set_faults("payment", reset_rate=0.0, error_rate=1.0, error_status=503)
    still = await submit(http, gw, "/v1/payments", k, body)
    assert (still.status, still.code) == (502, "PAYMENT_OUTCOME_UNKNOWN")
    assert int(still.headers["Retry-After"]) >= 1
    sims.heal()
    found = await submit(http, gw, "/v1/payments", k, body)
    assert found.status == 201 and found.replayed
    assert sims.stats("payment")["charges_by_key"][k] == 1


async def test_an_order_whose_answer_was_lost_is_found_by_the_order_lookup(
        gw: Gateway, sims: Upstreams, http: aiohttp.ClientSession) -> None:
    k = key()
    sims.set_faults("order", reset_rate=1.0)
    lost = await submit(http, gw, "/v1/orders", k, GOOD_ORDER)
    assert (lost.status, lost.code) == (502, "UPSTREAM_UNAVAILABLE")
    sims.heal()
    found = await submit(http, gw, "/v1/orders", k, GOOD_ORDER)
    assert found.status == 201 and found.replayed
    assert found.json == await _backend_lookup(http, sims, "order", k)
    assert sims.stats("order")["requests_by_key"][k] == 1


async def _backend_lookup(http: aiohttp.ClientSession, sims: Upstreams, backend: str,
                          k: str) -> Any:
    resource = "payments" if backend == "payment" else "orders"
    async with http.get(f"{sims.urls[backend]}/{resource}",
                        params={"idempotency_key": k}) as resp:
        assert resp.status == 200
        return await resp.json()


# -- visibility ----------------------------------------------------------------------------------

async def test_decisions_are_counted_and_replays_marked_in_the_access_log(
        gw: Gateway, sims: Upstreams, http: aiohttp.ClientSession) -> None:
    k, body = key(), payment()
    await submit(http, gw, "/v1/payments", k, body)
    replay = await submit(http, gw, "/v1/payments", k, body)
    async with http.get(gw.url + "/metrics") as resp:
        text = await resp.text()
    for event in ("claimed", "replayed"):
        assert (f'gateway_idempotency_events_total{{event="{event}",'
                f'route="/v1/payments"}}') in text
    rid = replay.headers["X-Request-ID"]
    for _ in range(40):
        lines = [line for line in gw.proc.log_text().splitlines() if rid in line]
        if lines:
            break
        await asyncio.sleep(0.1)
    assert lines and orjson.loads(lines[0])["replayed"] is True


# -- waiting for the first instead of 409 -------------------------------------------------------

@pytest.fixture(scope="module", params=STORES)
def waiting_gw(request: pytest.FixtureRequest, log_dir: Path,
               upstreams: Upstreams) -> Iterator[Gateway]:
    server = request.getfixturevalue("redis_server") if request.param == "redis" else None
    gateway = Gateway(log_dir, upstreams.urls, config=_gateway_config(
        request.param, server, wait_for_in_flight_ms=3000))
    yield gateway
    gateway.stop()


async def test_with_waiting_configured_a_duplicate_gets_the_first_answer(
        waiting_gw: Gateway, healthy: Upstreams, http: aiohttp.ClientSession) -> None:
    healthy.set_faults("payment", latency_ms=500)
    k, body = key(), payment()
    answers = await asyncio.gather(*(submit(http, waiting_gw, "/v1/payments", k, body)
                                     for _ in range(5)))
    assert {a.status for a in answers} == {201}
    assert len({a.body for a in answers}) == 1
    assert sum(not a.replayed for a in answers) == 1
    assert healthy.stats("payment")["requests_by_key"][k] == 1


# -- the shared store down ----------------------------------------------------------------------

@pytest.fixture
def lone_redis(log_dir: Path) -> Iterator[RedisServer]:
    """A Redis of this test's own, to kill and bring back."""
    server = RedisServer(log_dir)
    yield server
    server.stop()


async def test_with_redis_down_keyed_writes_fail_closed_reads_work_and_recovery_is_automatic(
        lone_redis: RedisServer, log_dir: Path, healthy: Upstreams,
        http: aiohttp.ClientSession) -> None:
    gw = Gateway(log_dir, healthy.urls, config=_gateway_config("redis", lone_redis))
    try:
        order = await submit(http, gw, "/v1/orders", key(), GOOD_ORDER)
        assert order.status == 201
        lone_redis.kill()
        k, body = key(), payment()
        for route, sent in (("/v1/payments", body), ("/v1/orders", GOOD_ORDER)):
            refused = await submit(http, gw, route, k, sent)
            assert (refused.status, refused.code) == (503, "STATE_UNAVAILABLE"), route
            assert int(refused.headers["Retry-After"]) >= 1
        assert k not in healthy.stats("payment")["requests_by_key"]
        assert k not in healthy.stats("order")["requests_by_key"]
        async with http.get(f"{gw.url}/v1/orders/{order.json['order_id']}") as resp:
            assert resp.status == 200
        lone_redis.start()
        ok = await submit(http, gw, "/v1/payments", k, body)
        assert ok.status == 201 and not ok.replayed
        assert healthy.stats("payment")["charges_by_key"][k] == 1
    finally:
        gw.stop()


async def test_orders_may_be_configured_to_fail_open(
        lone_redis: RedisServer, log_dir: Path, healthy: Upstreams,
        http: aiohttp.ClientSession) -> None:
    gw = Gateway(log_dir, healthy.urls,
                 config=_gateway_config("redis", lone_redis, orders_fail_open=True))
    try:
        lone_redis.kill()
        k = key()
        order = await submit(http, gw, "/v1/orders", k, GOOD_ORDER)
        assert order.status == 201, "forwarded without a record"
        assert healthy.stats("order")["requests_by_key"][k] == 1
        refused = await submit(http, gw, "/v1/payments", k, payment())
        assert (refused.status, refused.code) == (503, "STATE_UNAVAILABLE")
    finally:
        gw.stop()


async def test_a_refused_payments_record_is_kept_an_hour_not_a_day(
        gateway_app: StartApp, redis_server: RedisServer, healthy: Upstreams,
        http: aiohttp.ClientSession) -> None:
    """A flood of refused submissions (402 here: nothing charged) must not fill the store
    every client's payments need: their records live idempotency.ttl_4xx_s (3600)."""
    gw = await gateway_app({"redis": {"url": redis_server.url}})
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        ttls = {}
        for label, payment in (("refused", {**GOOD_PAYMENT, "method": "balance",
                                            "amount": 2_000_000}),
                               ("charged", GOOD_PAYMENT)):
            key = str(uuid.uuid4())
            async with http.post(gw.url + "/v1/payments", json=payment,
                                 headers={"Idempotency-Key": key}) as resp:
                assert resp.status == (402 if label == "refused" else 201)
            record = IDEMPOTENCY_KEY.format(record=record_id("anonymous", "POST /v1/payments",
                                                             key))
            ttls[label] = await client.ttl(record)
        assert 3500 < ttls["refused"] <= 3600, ttls
        assert ttls["charged"] > 23 * 3600, ttls
    finally:
        await client.aclose()


async def test_a_flood_of_refused_payments_leaves_other_clients_paying(
        gateway_app: StartApp, healthy: Upstreams, http: aiohttp.ClientSession) -> None:
    """One client sent 5,000 over-limit balance payments a second (402, nothing charged,
    a record each): records of refused answers are bounded per client scope and address
    (default 1,000 each per ttl_4xx_s), past which that client's keyed POSTs are 429,
    nothing forwarded or stored; another client (another address, behind the trusted
    proxy) is answered 201 throughout."""
    gw = await gateway_app({"server": {"trusted_proxies": ["127.0.0.1/32", "::1/128"]}})
    flood = {**GOOD_PAYMENT, "method": "balance", "amount": 2_000_000}
    flooder = {"X-Client-ID": "flooder", "X-Forwarded-For": "198.51.100.66"}

    async def pay(body: dict[str, Any], headers: dict[str, str]) -> tuple[int, str | None]:
        async with http.post(gw.url + "/v1/payments", json=body,
                             headers={"Idempotency-Key": str(uuid.uuid4()), **headers}) as resp:
            return resp.status, (await resp.json(content_type=None)).get("code")

    answers = [await pay(flood, flooder) for _ in range(1000)]
    assert set(answers) == {(402, "INSUFFICIENT_BALANCE")}
    # The bound is found spent with the record past it (one more per process), and the
    # bucket refills by a record every 3.6 s: a few more at most, then refused.
    while answers[-1] != (429, "RATE_LIMITED") and len(answers) < 1010:
        answers.append(await pay(flood, flooder))
    assert answers[-1] == (429, "RATE_LIMITED") and len(answers) <= 1004, answers[1000:]
    seen = healthy.stats("payment")["requests"]
    assert await pay(flood, flooder) == (429, "RATE_LIMITED")
    assert healthy.stats("payment")["requests"] == seen, "refused before anything was sent"
    honest = {"X-Client-ID": "shop-app", "X-Forwarded-For": "198.51.100.7"}
    assert (await pay(GOOD_PAYMENT, honest))[0] == 201
    # The flooder's address is held as well: a new client id from it changes nothing.
    assert await pay(flood, {**flooder, "X-Client-ID": "flooder-2"}) == (429, "RATE_LIMITED")
