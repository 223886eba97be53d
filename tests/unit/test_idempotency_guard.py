"""The idempotency guard's decisions as pure logic: the real in-memory store, backends as
plain functions. The paths that are hard to reach over HTTP live here: cancellation
mid-call, a waiter that inherits a released claim, a store that fails after the backend
answered, a lookup that cannot say.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway.contract import errors
from gateway.contract.clock import Clock, FakeClock
from gateway.contract.errors import GatewayError
from gateway.contract.reply import Reply
from gateway.contract.settings import IdempotencySettings
from gateway.pipeline.idempotency import Idempotency, Submission, fingerprint, record_id
from gateway.state.common import StoreUnavailable
from gateway.state.record_store import ClaimStatus, MemoryIdempotencyRecords

CREATED = Reply(201, b'{"payment_id":"pay_1"}', "application/json")
BODY = b'{"amount":1}'


class Backend:
    """What the guard calls: counts calls, answers as told (`then`: later forwards)."""

    def __init__(self, answer: Reply | GatewayError = CREATED,
                 found: Reply | GatewayError | None = None, delay_s: float = 0.0,
                 then: Reply | GatewayError | None = None, resends: int = 0) -> None:
        self.answer, self.found, self.delay_s = answer, found, delay_s
        self.then = then
        self.resends = resends  # how many resends the retry budget allows
        self.forwards = self.lookups = 0

    def calls(self) -> Submission:
        return Submission(self.forward, self.lookup, self.may_resend)

    async def forward(self) -> Reply:
        self.forwards += 1
        await asyncio.sleep(self.delay_s)
        answer = self.answer if self.forwards == 1 or self.then is None else self.then
        if isinstance(answer, GatewayError):
            raise answer
        return answer

    async def may_resend(self, _err: GatewayError, attempt: int) -> bool:
        return attempt < self.resends

    async def lookup(self) -> Reply:
        self.lookups += 1
        if isinstance(self.found, GatewayError):
            raise self.found
        if self.found is None:
            return Reply(404, b'{"code":"NOT_FOUND"}', "application/json")
        return self.found


def guard(store: MemoryIdempotencyRecords, *, payment: bool = True, wait_ms: int = 0,
          events: list[str] | None = None, clock: Clock | None = None) -> Idempotency:
    seen = events if events is not None else []
    return Idempotency(
        "POST /v1/payments", store, IdempotencySettings(wait_for_in_flight_ms=wait_ms),
        seen.append, success_status=201,
        unknown_outcome=errors.PAYMENT_OUTCOME_UNKNOWN if payment else None, fail_open=False,
        clock=clock)


async def status_of(store: MemoryIdempotencyRecords) -> ClaimStatus:
    record = record_id("anonymous", "POST /v1/payments", "k")
    claim = await store.claim(record, fingerprint("POST /v1/payments", BODY), "probe", 30, 60)
    return claim.status


async def test_cancelled_mid_call_leaves_the_outcome_unknown() -> None:
    store, backend = MemoryIdempotencyRecords(), Backend(delay_s=10)
    task = asyncio.create_task(guard(store).run("anonymous", "k", BODY, backend.calls()))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await status_of(store) is ClaimStatus.RECONCILE


async def test_the_wait_for_a_claim_in_flight_runs_on_the_injected_clock() -> None:
    """A fake clock moves the wait's deadline: the 409 IN_PROGRESS comes after the
    configured wait on that clock, at once in real time."""
    store, clock = MemoryIdempotencyRecords(), FakeClock()
    record = record_id("anonymous", "POST /v1/payments", "k")
    await store.claim(record, fingerprint("POST /v1/payments", BODY), "other", 30, 60)
    gate = guard(store, wait_ms=5000, clock=clock)
    started, real = clock.monotonic(), time.monotonic()
    with pytest.raises(GatewayError) as caught:
        await gate.run("anonymous", "k", BODY, Backend().calls())
    assert caught.value.spec is errors.IDEMPOTENCY_IN_PROGRESS
    assert clock.monotonic() - started == pytest.approx(5.0)
    assert time.monotonic() - real < 1.0


async def test_a_waiter_takes_over_a_claim_released_by_the_first() -> None:
    store, events = MemoryIdempotencyRecords(), []
    refused = Backend(answer=GatewayError(errors.CIRCUIT_OPEN), delay_s=0.1)
    healthy = Backend()
    gate = guard(store, wait_ms=2000, events=events)
    first = asyncio.create_task(gate.run("anonymous", "k", BODY, refused.calls()))
    await asyncio.sleep(0.02)
    reply, replayed = await gate.run("anonymous", "k", BODY, healthy.calls())
    with pytest.raises(GatewayError):
        await first
    assert (reply, replayed, healthy.forwards, healthy.lookups) == (CREATED, False, 1, 0)
    assert events.count("released") == 1


async def test_an_unknown_order_outcome_with_a_failing_lookup_answers_the_lookups_error() -> None:
    store = MemoryIdempotencyRecords()
    gate = guard(store, payment=False)
    lost = Backend(answer=GatewayError(errors.UPSTREAM_TIMEOUT, reached_backend=True))
    with pytest.raises(GatewayError):
        await gate.run("anonymous", "k", BODY, lost.calls())
    down = Backend(found=GatewayError(errors.CIRCUIT_OPEN))
    with pytest.raises(GatewayError) as caught:
        await gate.run("anonymous", "k", BODY, down.calls())
    assert caught.value.spec is errors.CIRCUIT_OPEN
    assert down.forwards == 0
    assert await status_of(store) is ClaimStatus.RECONCILE, "still unknown, still reconciled"


async def test_a_lookup_answering_neither_found_nor_absent_keeps_the_payment_unknown() -> None:
    store = MemoryIdempotencyRecords()
    gate = guard(store)
    lost = Backend(answer=GatewayError(errors.PAYMENT_OUTCOME_UNKNOWN, reached_backend=True))
    with pytest.raises(GatewayError):
        await gate.run("anonymous", "k", BODY, lost.calls())
    odd = Backend(found=Reply(400, b'{"code":"BAD_REQUEST"}', "application/json"))
    with pytest.raises(GatewayError) as caught:
        await gate.run("anonymous", "k", BODY, odd.calls())
    assert caught.value.spec is errors.PAYMENT_OUTCOME_UNKNOWN
    assert odd.forwards == 0


class FailingCompletion(MemoryIdempotencyRecords):
    async def complete(self, record: str, owner: str, reply: Reply,
                       keep_s: int | None = None) -> bool:
        raise StoreUnavailable("down")


async def test_the_client_still_gets_the_answer_when_storing_it_fails() -> None:
    store, events = FailingCompletion(), []
    backend = Backend()
    reply, replayed = await guard(store, events=events).run(
        "anonymous", "k", BODY, backend.calls())
    assert (reply, replayed) == (CREATED, False)
    assert "store_unavailable" in events
    # The claim stays until its lease runs out; then a resubmission reconciles.
    assert await status_of(store) is ClaimStatus.IN_FLIGHT


def _landed() -> GatewayError:
    """A reset after the request was written: it may have been charged."""
    return GatewayError(errors.PAYMENT_OUTCOME_UNKNOWN, reached_backend=True)


async def test_a_failure_that_may_have_landed_is_looked_up_and_the_charge_found_returned() -> None:
    store, events = MemoryIdempotencyRecords(), []
    backend = Backend(answer=_landed(), found=Reply(200, CREATED.body, "application/json"),
                      resends=2)
    reply, replayed = await guard(store, events=events).run("anonymous", "k", BODY,
                                                            backend.calls())
    assert (reply, replayed) == (CREATED, False), "the client's first answer, not a replay"
    assert (backend.forwards, backend.lookups) == (1, 1), "never sent twice"
    assert await status_of(store) is ClaimStatus.COMPLETED


async def test_it_is_sent_again_only_after_the_lookup_says_absent() -> None:
    store, events = MemoryIdempotencyRecords(), []
    backend = Backend(answer=_landed(), then=CREATED, resends=2)
    reply, _ = await guard(store, events=events).run("anonymous", "k", BODY, backend.calls())
    assert reply == CREATED
    assert (backend.forwards, backend.lookups) == (2, 1)
    assert "resent_after_lookup" in events


async def test_without_budget_for_another_try_it_is_not_sent_again_nor_looked_up() -> None:
    store = MemoryIdempotencyRecords()
    backend = Backend(answer=_landed(), then=CREATED, resends=0)
    with pytest.raises(GatewayError) as caught:
        await guard(store).run("anonymous", "k", BODY, backend.calls())
    assert caught.value.spec is errors.PAYMENT_OUTCOME_UNKNOWN
    assert (backend.forwards, backend.lookups) == (1, 0)
    assert await status_of(store) is ClaimStatus.RECONCILE


async def test_an_order_whose_lookup_was_refused_stays_unknown_not_forgotten() -> None:
    # The lookup's own error says "not reached", but the order before it may have landed:
    # forgetting the record would let the next submission forward blindly.
    store = MemoryIdempotencyRecords()
    backend = Backend(answer=GatewayError(errors.UPSTREAM_UNAVAILABLE, reached_backend=True),
                      found=GatewayError(errors.UPSTREAM_UNAVAILABLE), resends=2)
    with pytest.raises(GatewayError) as caught:
        await guard(store, payment=False).run("anonymous", "k", BODY, backend.calls())
    assert caught.value.spec is errors.UPSTREAM_UNAVAILABLE and caught.value.reached_backend
    assert (backend.forwards, backend.lookups) == (1, 1)
    assert await status_of(store) is ClaimStatus.RECONCILE


async def test_a_failure_that_certainly_was_not_sent_forgets_the_record_without_a_lookup() -> None:
    store = MemoryIdempotencyRecords()
    backend = Backend(answer=GatewayError(errors.UPSTREAM_UNAVAILABLE), resends=2)
    with pytest.raises(GatewayError):
        await guard(store).run("anonymous", "k", BODY, backend.calls())
    assert (backend.forwards, backend.lookups) == (1, 0)
    assert await status_of(store) is ClaimStatus.CLAIMED
