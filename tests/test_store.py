"""One behaviour suite for both stores: the in-memory one and Redis (a real redis-server).

Leases and retention are exercised with real (short) time, because the Redis
store keeps time by Redis's own clock.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.redis_store import RedisStore
from gateway.reply import Reply
from gateway.store import ClaimStatus, MemoryStore, Store, StoreUnavailable, refill_and_take
from tests.procs import RedisServer, free_port

LEASE_S = 10.0  # long enough that a busy machine never lets it run out by accident
SHORT_LEASE_S = 1.0  # for the one test that watches a lease run out
TTL_S = 60
REPLY = Reply(201, '{"payment_id":"pay_1","note":"支付成功"}'.encode(), "application/json",
              (("Location", "/v1/payments/pay_1"),))


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    if request.param == "memory":
        yield MemoryStore()
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    redis_store = RedisStore(server.url, timeout_s=1.0)
    yield redis_store
    await redis_store.close()


def _record() -> str:
    return secrets.token_hex(16)


async def test_first_claim_owns_the_record_and_others_see_it_in_flight(store: Store) -> None:
    record = _record()
    assert (await store.claim(record, "fp", "a", LEASE_S, TTL_S)).status is ClaimStatus.CLAIMED
    other = await store.claim(record, "fp", "b", LEASE_S, TTL_S)
    assert other.status is ClaimStatus.IN_FLIGHT
    assert 0 < other.lease_left_s <= LEASE_S
    # The owner repeating its claim (a retried command) is answered as before.
    assert (await store.claim(record, "fp", "a", LEASE_S, TTL_S)).status is ClaimStatus.CLAIMED


async def test_a_different_request_under_the_same_key_is_refused(store: Store) -> None:
    record = _record()
    await store.claim(record, "fp1", "a", LEASE_S, TTL_S)
    assert (await store.claim(record, "fp2", "b", LEASE_S, TTL_S)).status is ClaimStatus.REUSED
    assert await store.complete(record, "a", REPLY)
    assert (await store.claim(record, "fp2", "b", LEASE_S, TTL_S)).status is ClaimStatus.REUSED


async def test_completed_record_returns_the_stored_reply_byte_for_byte(store: Store) -> None:
    record = _record()
    await store.claim(record, "fp", "a", LEASE_S, TTL_S)
    assert await store.complete(record, "a", REPLY)
    assert await store.complete(record, "a", REPLY), "completing again must be harmless"
    replay = await store.claim(record, "fp", "b", LEASE_S, TTL_S)
    assert replay.status is ClaimStatus.COMPLETED
    assert replay.reply == REPLY


async def test_only_the_owner_can_complete_release_or_abandon(store: Store) -> None:
    record = _record()
    await store.claim(record, "fp", "a", LEASE_S, TTL_S)
    assert not await store.complete(record, "b", REPLY)
    await store.release(record, "b")
    await store.abandon(record, "b")
    assert (await store.claim(record, "fp", "c", LEASE_S, TTL_S)).status is ClaimStatus.IN_FLIGHT


async def test_released_record_is_claimed_afresh(store: Store) -> None:
    record = _record()
    await store.claim(record, "fp", "a", LEASE_S, TTL_S)
    await store.release(record, "a")
    # Gone entirely: even a different body may use the key now.
    assert (await store.claim(record, "fp2", "b", LEASE_S, TTL_S)).status is ClaimStatus.CLAIMED


async def test_unknown_outcome_is_taken_over_for_reconciling(store: Store) -> None:
    record = _record()
    await store.claim(record, "fp", "a", LEASE_S, TTL_S)
    await store.abandon(record, "a")
    assert (await store.claim(record, "fp", "b", LEASE_S, TTL_S)).status is ClaimStatus.RECONCILE
    assert (await store.claim(record, "fp", "b", LEASE_S, TTL_S)).status is ClaimStatus.RECONCILE
    assert (await store.claim(record, "fp", "c", LEASE_S, TTL_S)).status is ClaimStatus.IN_FLIGHT
    assert not await store.complete(record, "a", REPLY), "the abandoning owner lost the record"
    assert await store.complete(record, "b", REPLY)
    assert (await store.claim(record, "fp", "c", LEASE_S, TTL_S)).status is ClaimStatus.COMPLETED


async def test_a_lease_that_runs_out_is_taken_over_not_before(store: Store) -> None:
    record = _record()
    await store.claim(record, "fp", "a", SHORT_LEASE_S, TTL_S)
    await asyncio.sleep(0.1)
    assert (await store.claim(record, "fp", "b", LEASE_S, TTL_S)).status is ClaimStatus.IN_FLIGHT
    await asyncio.sleep(SHORT_LEASE_S)
    assert (await store.claim(record, "fp", "b", LEASE_S, TTL_S)).status is ClaimStatus.RECONCILE
    assert not await store.complete(record, "a", REPLY), "a late owner must not overwrite"


async def test_records_expire_after_their_retention(store: Store) -> None:
    record = _record()
    await store.claim(record, "fp", "a", LEASE_S, 1)
    await store.complete(record, "a", REPLY)
    await asyncio.sleep(1.2)
    assert (await store.claim(record, "fp2", "b", LEASE_S, 1)).status is ClaimStatus.CLAIMED


async def test_concurrent_claims_have_exactly_one_winner(store: Store) -> None:
    record = _record()
    results = await asyncio.gather(*(
        store.claim(record, "fp", f"owner-{n}", LEASE_S, TTL_S) for n in range(50)))
    statuses = [r.status for r in results]
    assert statuses.count(ClaimStatus.CLAIMED) == 1
    assert statuses.count(ClaimStatus.IN_FLIGHT) == 49


async def test_memory_store_is_bounded_oldest_first() -> None:
    store = MemoryStore(max_records=100)
    for n in range(150):
        await store.claim(f"r{n}", "fp", "a", LEASE_S, TTL_S)
    assert (await store.claim("r149", "fp", "b", LEASE_S, TTL_S)).status is ClaimStatus.IN_FLIGHT
    assert (await store.claim("r0", "fp", "b", LEASE_S, TTL_S)).status is ClaimStatus.CLAIMED


async def test_redis_store_unreachable_raises_store_unavailable() -> None:
    store = RedisStore(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.2)
    try:
        with pytest.raises(StoreUnavailable):
            await store.claim(_record(), "fp", "a", LEASE_S, TTL_S)
    finally:
        await store.close()


async def test_redis_store_recovers_after_a_restart(log_dir: Path) -> None:
    redis_server = RedisServer(log_dir)
    store = RedisStore(redis_server.url, timeout_s=0.5)
    try:
        record = _record()
        await store.claim(record, "fp", "a", LEASE_S, TTL_S)  # a pooled connection now exists
        redis_server.restart()
        # A claim is repeatable (guarded by its owner), so a claim lost with the dead
        # connection is sent once more on a fresh one: no error surfaces.
        assert (await store.claim(_record(), "fp", "a", LEASE_S, TTL_S)).status \
            is ClaimStatus.CLAIMED
    finally:
        await store.close()
        redis_server.stop()


# -- rate-limit buckets ---------------------------------------------------------------------

async def test_a_bucket_gives_its_burst_then_tokens_at_the_rate(store: Store) -> None:
    scope = _record()
    waits = [await store.take_token(scope, 10.0, 3) for _ in range(4)]
    assert waits[:3] == [0.0, 0.0, 0.0]
    assert 0.05 < waits[3] <= 0.1
    await asyncio.sleep(0.12)
    assert await store.take_token(scope, 10.0, 3) == 0.0
    assert await store.take_token(scope, 10.0, 3) > 0


async def test_buckets_are_per_client(store: Store) -> None:
    first, second = _record(), _record()
    assert await store.take_token(first, 1.0, 1) == 0.0
    assert await store.take_token(first, 1.0, 1) > 0.9
    assert await store.take_token(second, 1.0, 1) == 0.0


def test_the_bucket_step_refills_up_to_the_burst_and_says_how_long_to_wait() -> None:
    tokens, wait = refill_and_take(0.0, 100.0, 100.5, rate_per_s=2.0, burst=5)
    assert (tokens, wait) == (0.0, 0.0)
    tokens, wait = refill_and_take(0.0, 100.0, 100.25, rate_per_s=2.0, burst=5)
    assert (tokens, wait) == (0.5, 0.25)
    tokens, wait = refill_and_take(1.0, 0.0, 1000.0, rate_per_s=2.0, burst=5)
    assert (tokens, wait) == (4.0, 0.0)
