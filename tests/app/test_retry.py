"""Safe retries: what is retried, how often, and what never is. Backend calls are counted
at the simulators, so amplification is measured, not assumed. The gateway runs in-process,
in front of simulator processes of this module's own."""

from __future__ import annotations

import random
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.app import build_app
from gateway.backends.retry import Backoff, RetryBudget
from gateway.contract.clock import FakeClock
from gateway.contract.settings import RetrySettings, Settings
from loadtest.harness import Upstreams, merge
from tests.conftest import GOOD_ORDER, GOOD_PAYMENT, NO_STALE_ANSWERS, SHORT_TIMEOUTS, InProcess

LENIENT_BREAKER = {"failure_rate_threshold": 1.0, "consecutive_failures": 100_000,
                   "minimum_calls": 100_000}


def test_the_budget_allows_a_share_of_recent_calls_or_a_floor() -> None:
    clock = FakeClock()
    budget = RetryBudget(RetrySettings(budget_ratio=0.1, min_retries_per_s=0.2), clock)
    assert [budget.try_spend() for _ in range(3)] == [True, True, False]  # floor: 0.2/s x 10 s
    for _ in range(50):
        budget.called()
    assert [budget.try_spend() for _ in range(4)] == [True, True, True, False]  # 10% of 50
    clock.advance(11)
    assert budget.try_spend() and budget.try_spend() and not budget.try_spend()


def test_backoff_is_full_jitter_up_to_the_cap() -> None:
    backoff = Backoff(RetrySettings(base_backoff_ms=100, max_backoff_ms=300), random.Random(1))
    for retry, ceiling in ((0, 0.1), (1, 0.2), (2, 0.3), (5, 0.3)):
        delays = [backoff.delay(retry) for _ in range(200)]
        assert min(delays) >= 0 and max(delays) <= ceiling
        assert max(delays) > ceiling * 0.8, "the whole range is used"


@pytest.fixture
async def rig(log_dir: Path, aiohttp_server: Any) -> AsyncIterator[tuple[Upstreams, Any]]:
    """Simulators of this module's own (a fixed seed) and gateways in-process on them, each
    with the backend settings a test gives."""
    sims = Upstreams(log_dir, seed=5)

    async def gateway(**upstreams: dict[str, Any]) -> InProcess:
        tree = {"upstreams": {name: {"url": url, **SHORT_TIMEOUTS, "breaker": LENIENT_BREAKER,
                                     **upstreams.get(name, {})}
                              for name, url in sims.urls.items()}}
        merge(tree, NO_STALE_ANSWERS)
        app = build_app(Settings.model_validate(tree))
        server = await aiohttp_server(app)
        return InProcess(str(server.make_url("")).rstrip("/"), app)

    try:
        yield sims, gateway
    finally:
        sims.proc.stop()


async def _gets(http: aiohttp.ClientSession, gw: InProcess, n: int,
                **headers: str) -> list[int]:
    got = []
    for i in range(n):
        async with http.get(gw.url + "/v1/availability", headers=headers,
                            params={"address": f"Retry {i}", "product": "fiber"}) as resp:
            got.append(resp.status)
    return got


async def test_a_get_in_front_of_a_flaky_backend_mostly_succeeds(
        rig: tuple[Upstreams, Any], http: aiohttp.ClientSession) -> None:
    sims, gateway = rig
    gw = await gateway(availability={})
    sims.set_faults("availability", error_rate=0.3, error_status=503)
    statuses = await _gets(http, gw, 60)
    assert statuses.count(200) >= 54, statuses
    assert sims.stats("availability")["requests"] > 60, "retries were made"


async def test_a_keyed_post_that_may_have_landed_is_looked_up_never_resent_blindly(
        rig: tuple[Upstreams, Any], http: aiohttp.ClientSession) -> None:
    sims, gateway = rig
    gw = await gateway(payment={})  # the shipped retry settings
    # Every POST is charged and then its connection reset; so is every lookup's.
    sims.set_faults("payment", dedup=False, reset_rate=1.0)
    k = str(uuid.uuid4())
    async with http.post(gw.url + "/v1/payments", json=GOOD_PAYMENT,
                         headers={"Idempotency-Key": k}) as resp:
        assert (resp.status, (await resp.json())["code"]) == (502, "PAYMENT_OUTCOME_UNKNOWN")
    stats = sims.stats("payment")
    assert (stats["requests_by_key"][k], stats["charges_by_key"][k]) == (1, 1)
    assert stats["requests"] > 1, "the gateway asked about the key before anything else"
    sims.heal()
    sims.set_faults("payment", dedup=False)
    async with http.post(gw.url + "/v1/payments", json=GOOD_PAYMENT,
                         headers={"Idempotency-Key": k}) as resp:
        assert resp.status == 201 and resp.headers["Idempotent-Replayed"] == "true"
    stats = sims.stats("payment")
    assert (stats["requests_by_key"][k], stats["charges_by_key"][k]) == (1, 1)


async def test_a_keyed_post_answered_503_is_sent_again_only_after_a_lookup(
        rig: tuple[Upstreams, Any], http: aiohttp.ClientSession) -> None:
    sims, gateway = rig
    gw = await gateway(order={})
    sims.set_faults("order", error_rate=1.0, error_status=503)
    before = sims.stats("order")["requests"]
    async with http.post(gw.url + "/v1/orders", json=GOOD_ORDER,
                         headers={"Idempotency-Key": str(uuid.uuid4())}) as resp:
        assert resp.status == 502
    made = sims.stats("order")["requests"] - before
    # One POST, then one lookup (a GET, retried as reads are) that never got an answer:
    # the POST was not sent again.
    assert made == 1 + 1 + RetrySettings().max_retries
    last = sims.stats("order")["last_request"]
    assert last["method"] == "GET" and "idempotency_key" in last["query"]


async def test_the_retry_budget_caps_amplification(
        rig: tuple[Upstreams, Any], http: aiohttp.ClientSession) -> None:
    sims, gateway = rig
    gw = await gateway(availability={"retry": {"budget_ratio": 0.2, "min_retries_per_s": 0}})
    sims.set_faults("availability", error_rate=1.0, error_status=503)
    assert set(await _gets(http, gw, 50)) == {502}
    calls = sims.stats("availability")["requests"]
    assert 50 < calls <= 50 * 1.2 + 1, f"{calls} backend calls for 50 requests"
    async with http.get(gw.url + "/metrics") as resp:
        text = await resp.text()
    assert 'gateway_retry_budget_exhausted_total{backend="availability"}' in text


async def test_no_retry_when_the_deadline_leaves_no_time(
        rig: tuple[Upstreams, Any], http: aiohttp.ClientSession) -> None:
    sims, gateway = rig
    gw = await gateway(availability={})
    sims.set_faults("availability", error_rate=1.0, error_status=503, latency_ms=100)
    assert await _gets(http, gw, 1, **{"X-Request-Timeout-Ms": "140"}) == [502]
    assert sims.stats("availability")["requests"] == 1, "40 ms left: too little to retry"
    assert await _gets(http, gw, 1) == [502]
    assert sims.stats("availability")["requests"] == 4, "the default deadline leaves room"
