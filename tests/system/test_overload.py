"""Overload protection: admission by priority, bulkheads per backend, deadlines.

Logic first (the real classes, no sockets), then real gateways in front of slow
and hung simulators.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from gateway.contract import errors
from gateway.contract.errors import GatewayError
from gateway.contract.overload import Bulkhead, deadline_of
from gateway.contract.routes import PRIORITY_BROWSE, PRIORITY_READ, PRIORITY_WRITE
from gateway.contract.settings import OverloadSettings
from gateway.edge.admission import Admission
from loadtest.harness import Gateway, Upstreams
from tests.conftest import GOOD_ORDER, GOOD_PAYMENT, NO_STALE_ANSWERS

AVAILABILITY = "/v1/availability?address=Beijing%201&product=fiber-500"


# -- logic ------------------------------------------------------------------------------------

def test_admission_fills_browse_then_reads_then_writes() -> None:
    admission = Admission(OverloadSettings(max_in_flight=10, browse_share=0.5, read_share=0.8))
    assert all(admission.enter(PRIORITY_BROWSE) for _ in range(5))
    assert not admission.enter(PRIORITY_BROWSE)
    assert all(admission.enter(PRIORITY_READ) for _ in range(3))
    assert not admission.enter(PRIORITY_READ)
    assert admission.enter(PRIORITY_WRITE) and admission.enter(PRIORITY_WRITE)
    assert not admission.enter(PRIORITY_WRITE)
    admission.leave()
    assert admission.in_flight == 9


def _crowded(admission: Admission, waited_s: float, lag_s: float = 0.0) -> None:
    """One interval in which requests waited `waited_s` and some were refused."""
    for _ in range(3):
        admission.started(PRIORITY_BROWSE, waited_s)
    admission.enter(PRIORITY_BROWSE)
    while admission.enter(PRIORITY_BROWSE):
        pass
    admission.in_flight = 0
    admission.adjust(lag_s)


def test_the_limit_follows_the_measured_delay_within_its_bounds() -> None:
    admission = Admission(OverloadSettings(max_in_flight=1000, min_in_flight=50,
                                           queue_delay_target_ms=100))
    assert admission.limit == 1000
    _crowded(admission, waited_s=0.125)  # 25 % over the target: cut in proportion
    assert admission.limit == pytest.approx(800)
    _crowded(admission, waited_s=0.0, lag_s=1.0)  # the loop's lag counts as well: at most halved
    assert admission.limit == pytest.approx(400)
    assert admission.delay_s == pytest.approx(1.0)
    for _ in range(20):
        _crowded(admission, waited_s=2.0)
    assert admission.limit == 50  # never below min_in_flight
    _crowded(admission, waited_s=0.05)  # under the target while refusing: grows by a tenth
    assert admission.limit == pytest.approx(56)
    admission.adjust(0.0)  # quiet and refusing nothing: stays
    assert admission.limit == pytest.approx(56)
    for _ in range(100):
        _crowded(admission, waited_s=0.01)
    assert admission.limit == 1000  # never above max_in_flight


def test_a_browse_or_read_that_waited_past_the_maximum_is_refused_at_its_handler() -> None:
    admission = Admission(OverloadSettings(queue_delay_target_ms=50, queue_delay_max_ms=300))
    assert admission.started(PRIORITY_BROWSE, 0.29)
    assert not admission.started(PRIORITY_BROWSE, 0.31)
    assert not admission.started(PRIORITY_READ, 0.31)
    assert admission.started(PRIORITY_WRITE, 5.0)  # submissions are shed last, never for this


def test_the_floor_defaults_to_64_or_the_ceiling_if_lower() -> None:
    assert OverloadSettings().floor_in_flight == 64
    assert OverloadSettings(max_in_flight=10).floor_in_flight == 10
    assert OverloadSettings(max_in_flight=10, min_in_flight=3).floor_in_flight == 3
    with pytest.raises(ValueError, match="min_in_flight: must be at most max_in_flight"):
        OverloadSettings(max_in_flight=10, min_in_flight=30)
    with pytest.raises(ValueError, match="queue_delay_max_ms: must be at least"):
        OverloadSettings(queue_delay_target_ms=200, queue_delay_max_ms=100)


async def test_bulkhead_queues_in_order_and_refuses_beyond_its_queue() -> None:
    bulkhead = Bulkhead("payment", limit=2, queue=2)
    loop = asyncio.get_running_loop()
    far = loop.time() + 10
    assert await bulkhead.acquire(far) is False
    assert await bulkhead.acquire(far) is False
    order: list[str] = []

    async def wait(name: str) -> None:
        await bulkhead.acquire(far)
        order.append(name)

    waiters = [asyncio.create_task(wait(n)) for n in ("first", "second")]
    await asyncio.sleep(0)
    with pytest.raises(GatewayError) as caught:
        await bulkhead.acquire(far)
    assert caught.value.spec is errors.OVERLOADED
    bulkhead.release()
    bulkhead.release()
    await asyncio.gather(*waiters)
    assert order == ["first", "second"] and bulkhead.active == 2 and bulkhead.queued == 0


async def test_time_spent_queueing_counts_against_the_deadline() -> None:
    bulkhead = Bulkhead("payment", limit=1, queue=5)
    loop = asyncio.get_running_loop()
    await bulkhead.acquire(loop.time() + 10)
    started = loop.time()
    with pytest.raises(GatewayError) as caught:
        await bulkhead.acquire(started + 0.1)
    assert caught.value.spec is errors.OVERLOADED
    assert 0.09 <= loop.time() - started < 0.5
    assert bulkhead.queued == 0
    bulkhead.release()
    assert bulkhead.active == 0, "a waiter that gave up takes no slot with it"


async def test_a_cancelled_waiter_leaves_no_slot_behind() -> None:
    bulkhead = Bulkhead("order", limit=1, queue=5)
    loop = asyncio.get_running_loop()
    await bulkhead.acquire(loop.time() + 10)
    waiter = asyncio.create_task(bulkhead.acquire(loop.time() + 10))
    await asyncio.sleep(0)
    waiter.cancel()
    bulkhead.release()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert (bulkhead.active, bulkhead.queued) == (0, 0)


def test_a_client_may_shorten_the_deadline_never_lengthen_it() -> None:
    assert deadline_of(100.0, 10.0, None) == 110.0
    assert deadline_of(100.0, 10.0, "2500") == 102.5
    assert deadline_of(100.0, 10.0, "60000") == 110.0
    for bad in ("0", "-5", "soon", "1.5"):
        with pytest.raises(GatewayError) as caught:
            deadline_of(100.0, 10.0, bad)
        assert caught.value.spec is errors.VALIDATION_FAILED


# -- real gateways ----------------------------------------------------------------------------

def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def _timed(http: aiohttp.ClientSession, method: str, url: str,
                 **kwargs: Any) -> tuple[int, str | None, float]:
    started = time.monotonic()
    async with http.request(method, url, **kwargs) as resp:
        body = await resp.json(content_type=None)
        return resp.status, body.get("code"), time.monotonic() - started


@pytest.fixture
def hung_payment(log_dir: Path) -> Iterator[tuple[Upstreams, Gateway]]:
    sims = Upstreams(log_dir, seed=21)
    gateway = Gateway(log_dir, sims.urls, config={**NO_STALE_ANSWERS, "upstreams": {
        "payment": {"timeout_s": 3.0, "max_concurrent": 4, "max_queue": 2}}})
    sims.set_faults("payment", hang=True)
    yield sims, gateway
    gateway.stop()
    sims.proc.stop()


@pytest.mark.slow
async def test_a_hung_payment_backend_takes_only_its_own_share(
        hung_payment: tuple[Upstreams, Gateway], http: aiohttp.ClientSession) -> None:
    sims, gw = hung_payment
    rss_before = _rss_kib(gw.proc.pid)

    async def pay() -> tuple[int, str | None, float]:
        return await _timed(http, "POST", gw.url + "/v1/payments", json=GOOD_PAYMENT,
                            headers={"Idempotency-Key": str(uuid.uuid4())})

    payments = [asyncio.create_task(pay()) for _ in range(300)]
    await asyncio.sleep(0.3)
    reads = [await _timed(http, "GET", gw.url + AVAILABILITY) for _ in range(10)]
    order = await _timed(http, "POST", gw.url + "/v1/orders", json=GOOD_ORDER,
                         headers={"Idempotency-Key": str(uuid.uuid4())})
    paid = await asyncio.gather(*payments)
    assert {status for status, _, _ in reads} == {200}
    assert max(took for _, _, took in reads) < 1.5, "reads did not wait behind payments"
    assert order[0] == 201
    codes = [code for _, code, _ in paid]
    assert codes.count("OVERLOADED") >= 290
    assert set(codes) <= {"OVERLOADED", "PAYMENT_OUTCOME_UNKNOWN", "CIRCUIT_OPEN"}
    fast = [took for _, code, took in paid if code == "OVERLOADED"]
    # Hung calls end at the 3 s timeout; refusals must not wait anything like that.
    assert sorted(fast)[len(fast) // 2] < 1.5, "refused without waiting for the hung backend"
    assert _rss_kib(gw.proc.pid) - rss_before < 40_000, "memory stays bounded"
    # The hung calls end at their timeout, and count against the payment breaker.
    assert codes.count("PAYMENT_OUTCOME_UNKNOWN") <= 6
    assert sims.stats("payment")["requests"] <= 6


async def test_a_burst_above_the_global_limit_sheds_browsing_first_in_microseconds(
        log_dir: Path, upstreams: Upstreams, http: aiohttp.ClientSession) -> None:
    gw = Gateway(log_dir, upstreams.urls, config={
        **NO_STALE_ANSWERS, "overload": {"max_in_flight": 10, "browse_share": 0.5,
                                         "read_share": 0.7},
        "upstreams": {"availability": {"timeout_s": 5.0}, "order": {"timeout_s": 5.0}}})
    # Held requests stay in flight long enough for a busy machine to line up the rest.
    upstreams.set_faults("availability", latency_ms=4000)
    upstreams.set_faults("order", latency_ms=4000)
    try:
        def browse() -> asyncio.Task[tuple[int, str | None, float]]:
            return asyncio.create_task(_timed(http, "GET", gw.url + AVAILABILITY))

        def read() -> asyncio.Task[tuple[int, str | None, float]]:
            return asyncio.create_task(_timed(http, "GET", gw.url + "/v1/orders/ord_x"))

        def submit() -> asyncio.Task[tuple[int, str | None, float]]:
            return asyncio.create_task(_timed(
                http, "POST", gw.url + "/v1/orders", json=GOOD_ORDER,
                headers={"Idempotency-Key": str(uuid.uuid4())}))

        held = [browse() for _ in range(5)]
        await asyncio.sleep(0.6)
        shed_browse = await browse()
        held += [read(), read()]
        await asyncio.sleep(0.6)
        shed_read = await read()
        held += [submit() for _ in range(3)]
        await asyncio.sleep(0.6)
        shed_submit = await submit()
        # The in-flight gauge is sampled off the request path, every half second.
        await asyncio.sleep(0.6)
        async with http.get(gw.url + "/metrics") as resp:
            assert "gateway_requests_in_flight 10.0" in await resp.text()
        done = await asyncio.gather(*held)
        for shed in (shed_browse, shed_read, shed_submit):
            assert shed[:2] == (503, "OVERLOADED")
        assert [status for status, _, _ in done] == [200] * 5 + [404] * 2 + [201] * 3
        # The gateway's own time for each refusal, from its access log.
        shed_ms = []
        for line in gw.proc.log_text().splitlines():
            if '"code":"OVERLOADED"' in line:
                shed_ms.append(orjson.loads(line)["ms"])
        assert len(shed_ms) == 3 and max(shed_ms) < 5.0, shed_ms
    finally:
        upstreams.heal()
        gw.stop()


async def test_a_client_deadline_cuts_the_backend_call_short(
        gateway: Gateway, healthy: Upstreams, http: aiohttp.ClientSession) -> None:
    healthy.set_faults("availability", latency_ms=800)
    status, code, took = await _timed(http, "GET", gateway.url + AVAILABILITY.replace(
        "Beijing", "Deadline"), headers={"X-Request-Timeout-Ms": "250"})
    assert (status, code) == (504, "UPSTREAM_TIMEOUT")
    assert took < 0.7
    status, code, _ = await _timed(http, "GET", gateway.url + AVAILABILITY,
                                   headers={"X-Request-Timeout-Ms": "soon"})
    assert (status, code) == (422, "VALIDATION_FAILED")
