"""One behaviour suite per store interface, run against both kinds: memory and Redis (a real
redis-server).

Leases and retention are exercised with real (short) time, because the Redis
store keeps time by Redis's own clock.
"""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

import pytest

from gateway.contract.reply import Reply
from gateway.state.bucket_store import refill_and_take
from gateway.state.common import StoreUnavailable
from gateway.state.record_store import ClaimStatus, IdempotencyRecords, MemoryIdempotencyRecords
from gateway.state.stores import Stores, redis_stores
from loadtest.harness import RedisServer, free_port

LEASE_S = 10.0  # long enough that a busy machine never lets it run out by accident
SHORT_LEASE_S = 1.0  # for the one test that watches a lease run out
TTL_S = 60
REPLY = Reply(201, '{"payment_id":"pay_1","note":"支付成功"}'.encode(), "application/json",
              (("Location", "/v1/payments/pay_1"),))


@pytest.fixture
def records(stores: Stores) -> IdempotencyRecords:
    return stores.records


def _record() -> str:
    return secrets.token_hex(16)


async def test_first_claim_owns_the_record_and_others_see_it_in_flight(
        records: IdempotencyRecords) -> None:
    record = _record()
    assert (await records.claim(record, "fp", "a", LEASE_S, TTL_S)).status is ClaimStatus.CLAIMED
    other = await records.claim(record, "fp", "b", LEASE_S, TTL_S)
    assert other.status is ClaimStatus.IN_FLIGHT
    assert 0 < other.lease_left_s <= LEASE_S
    # The owner repeating its claim (a retried command) is answered as before.
    assert (await records.claim(record, "fp", "a", LEASE_S, TTL_S)).status is ClaimStatus.CLAIMED


async def test_a_different_request_under_the_same_key_is_refused(
        records: IdempotencyRecords) -> None:
    record = _record()
    await records.claim(record, "fp1", "a", LEASE_S, TTL_S)
    assert (await records.claim(record, "fp2", "b", LEASE_S, TTL_S)).status is ClaimStatus.REUSED
    assert await records.complete(record, "a", REPLY)
    assert (await records.claim(record, "fp2", "b", LEASE_S, TTL_S)).status is ClaimStatus.REUSED


async def test_completed_record_returns_the_stored_reply_byte_for_byte(
        records: IdempotencyRecords) -> None:
    record = _record()
    await records.claim(record, "fp", "a", LEASE_S, TTL_S)
    assert await records.complete(record, "a", REPLY)
    assert await records.complete(record, "a", REPLY), "completing again must be harmless"
    replay = await records.claim(record, "fp", "b", LEASE_S, TTL_S)
    assert replay.status is ClaimStatus.COMPLETED
    assert replay.reply == REPLY


async def test_only_the_owner_can_complete_release_or_abandon(records: IdempotencyRecords) -> None:
    record = _record()
    await records.claim(record, "fp", "a", LEASE_S, TTL_S)
    assert not await records.complete(record, "b", REPLY)
    await records.release(record, "b")
    await records.abandon(record, "b")
    assert (await records.claim(record, "fp", "c", LEASE_S, TTL_S)).status is ClaimStatus.IN_FLIGHT


async def test_released_record_is_claimed_afresh(records: IdempotencyRecords) -> None:
    record = _record()
    await records.claim(record, "fp", "a", LEASE_S, TTL_S)
    await records.release(record, "a")
    # Gone entirely: even a different body may use the key now.
    assert (await records.claim(record, "fp2", "b", LEASE_S, TTL_S)).status is ClaimStatus.CLAIMED


async def test_unknown_outcome_is_taken_over_for_reconciling(records: IdempotencyRecords) -> None:
    record = _record()
    await records.claim(record, "fp", "a", LEASE_S, TTL_S)
    await records.abandon(record, "a")
    assert (await records.claim(record, "fp", "b", LEASE_S, TTL_S)).status is ClaimStatus.RECONCILE
    assert (await records.claim(record, "fp", "b", LEASE_S, TTL_S)).status is ClaimStatus.RECONCILE
    assert (await records.claim(record, "fp", "c", LEASE_S, TTL_S)).status is ClaimStatus.IN_FLIGHT
    assert not await records.complete(record, "a", REPLY), "the abandoning owner lost the record"
    assert await records.complete(record, "b", REPLY)
    assert (await records.claim(record, "fp", "c", LEASE_S, TTL_S)).status is ClaimStatus.COMPLETED


async def test_a_lease_that_runs_out_is_taken_over_not_before(records: IdempotencyRecords) -> None:
    record = _record()
    await records.claim(record, "fp", "a", SHORT_LEASE_S, TTL_S)
    await asyncio.sleep(0.1)
    assert (await records.claim(record, "fp", "b", LEASE_S, TTL_S)).status is ClaimStatus.IN_FLIGHT
    await asyncio.sleep(SHORT_LEASE_S)
    assert (await records.claim(record, "fp", "b", LEASE_S, TTL_S)).status is ClaimStatus.RECONCILE
    assert not await records.complete(record, "a", REPLY), "a late owner must not overwrite"


async def test_records_expire_after_their_retention(records: IdempotencyRecords) -> None:
    record = _record()
    await records.claim(record, "fp", "a", LEASE_S, 1)
    await records.complete(record, "a", REPLY)
    await asyncio.sleep(1.2)
    assert (await records.claim(record, "fp2", "b", LEASE_S, 1)).status is ClaimStatus.CLAIMED


async def test_a_record_kept_for_less_expires_then_and_no_later(
        records: IdempotencyRecords) -> None:
    refused, made = _record(), _record()
    for record in (refused, made):
        await records.claim(record, "fp", "a", LEASE_S, TTL_S)
    await records.complete(refused, "a", REPLY, keep_s=1)
    await records.complete(made, "a", REPLY)
    await asyncio.sleep(1.2)
    assert not await records.answered(refused)
    assert (await records.claim(refused, "fp", "b", LEASE_S, TTL_S)).status is ClaimStatus.CLAIMED
    assert (await records.claim(made, "fp", "b", LEASE_S, TTL_S)).status is ClaimStatus.COMPLETED


async def test_concurrent_claims_have_exactly_one_winner(records: IdempotencyRecords) -> None:
    record = _record()
    results = await asyncio.gather(*(
        records.claim(record, "fp", f"owner-{n}", LEASE_S, TTL_S) for n in range(50)))
    statuses = [r.status for r in results]
    assert statuses.count(ClaimStatus.CLAIMED) == 1
    assert statuses.count(ClaimStatus.IN_FLIGHT) == 49


async def test_memory_records_are_bounded_oldest_first() -> None:
    records = MemoryIdempotencyRecords(max_records=100)
    for n in range(150):
        await records.claim(f"r{n}", "fp", "a", LEASE_S, TTL_S)
    assert (await records.claim("r149", "fp", "b", LEASE_S, TTL_S)).status is ClaimStatus.IN_FLIGHT
    assert (await records.claim("r0", "fp", "b", LEASE_S, TTL_S)).status is ClaimStatus.CLAIMED


async def test_redis_unreachable_raises_store_unavailable() -> None:
    shared = redis_stores(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.2)
    try:
        with pytest.raises(StoreUnavailable):
            await shared.records.claim(_record(), "fp", "a", LEASE_S, TTL_S)
        with pytest.raises(StoreUnavailable):
            await shared.windows.windows()
    finally:
        await shared.close()


async def test_redis_stores_recover_after_a_restart(log_dir: Path) -> None:
    redis_server = RedisServer(log_dir)
    shared = redis_stores(redis_server.url, timeout_s=0.5)
    await shared.upkeep()
    try:
        record = _record()
        await shared.records.claim(record, "fp", "a", LEASE_S, TTL_S)  # a connection now exists
        redis_server.restart()
        # A claim is repeatable (guarded by its owner), so a claim lost with the dead
        # connection is sent once more on a fresh one: no error surfaces.
        assert (await shared.records.claim(_record(), "fp", "a", LEASE_S, TTL_S)).status \
            is ClaimStatus.CLAIMED
    finally:
        await shared.close()
        redis_server.stop()


# -- breaker intent, maintenance windows, API keys -------------------------------------------

async def test_breaker_fields_are_set_apart_and_a_reset_clears_the_forced_state(
        stores: Stores) -> None:
    name = _record()
    assert await stores.breakers.controls([name]) == {name: {}}
    await stores.breakers.set_fields(name, {"forced": "open", "setting:open_seconds": "5"})
    await stores.breakers.set_fields(name, {"setting:minimum_calls": "3"})
    await stores.breakers.reset(name)
    await stores.breakers.reset(name)
    assert (await stores.breakers.controls([name]))[name] == {
        "forced": "", "setting:open_seconds": "5", "setting:minimum_calls": "3",
        "reset_seq": "2"}


async def test_windows_are_put_deleted_and_config_windows_ended(stores: Stores) -> None:
    window_id = f"mw-{_record()}"
    await stores.windows.put(window_id, b'{"scope":"all"}')
    await stores.windows.end_config_windows(["cfg-a", "cfg-b"])
    windows, ended = await stores.windows.windows()
    assert windows[window_id] == b'{"scope":"all"}' and {"cfg-a", "cfg-b"} <= ended
    assert await stores.windows.delete(window_id)
    assert not await stores.windows.delete(window_id)
    assert window_id not in (await stores.windows.windows())[0]


async def test_api_keys_are_put_listed_and_revoked(stores: Stores) -> None:
    digest = secrets.token_hex(32)
    await stores.keys.put(digest, b'{"client_id":"shop"}')
    assert (await stores.keys.keys())[digest] == b'{"client_id":"shop"}'
    assert await stores.keys.delete(digest)
    assert not await stores.keys.delete(digest)
    assert digest not in await stores.keys.keys()


# -- rate-limit buckets ---------------------------------------------------------------------

async def test_a_bucket_gives_its_burst_then_tokens_at_the_rate(stores: Stores) -> None:
    scope = _record()
    waits = [await stores.buckets.take(scope, 10.0, 3) for _ in range(4)]
    assert waits[:3] == [0.0, 0.0, 0.0]
    assert 0.05 < waits[3] <= 0.1
    await asyncio.sleep(0.12)
    assert await stores.buckets.take(scope, 10.0, 3) == 0.0
    assert await stores.buckets.take(scope, 10.0, 3) > 0


async def test_buckets_are_per_client(stores: Stores) -> None:
    first, second = _record(), _record()
    assert await stores.buckets.take(first, 1.0, 1) == 0.0
    assert await stores.buckets.take(first, 1.0, 1) > 0.9
    assert await stores.buckets.take(second, 1.0, 1) == 0.0


def test_the_bucket_step_refills_up_to_the_burst_and_says_how_long_to_wait() -> None:
    tokens, wait = refill_and_take(0.0, 100.0, 100.5, rate_per_s=2.0, burst=5)
    assert (tokens, wait) == (0.0, 0.0)
    tokens, wait = refill_and_take(0.0, 100.0, 100.25, rate_per_s=2.0, burst=5)
    assert (tokens, wait) == (0.5, 0.25)
    tokens, wait = refill_and_take(1.0, 0.0, 1000.0, rate_per_s=2.0, burst=5)
    assert (tokens, wait) == (4.0, 0.0)


async def test_fault_rules_are_capped_deleted_one_by_one_or_all_at_once(stores: Stores) -> None:
    await stores.faults.delete_all()
    assert await stores.faults.add("flt-a", b'{"id":"flt-a"}', most=2)
    assert await stores.faults.add("flt-b", b'{"id":"flt-b"}', most=2)
    assert not await stores.faults.add("flt-c", b'{"id":"flt-c"}', most=2)
    assert set(await stores.faults.rules()) == {"flt-a", "flt-b"}
    assert await stores.faults.delete("flt-a")
    assert not await stores.faults.delete("flt-a")
    assert await stores.faults.add("flt-c", b'{"id":"flt-c"}', most=2)
    assert sorted(await stores.faults.delete_all()) == ["flt-b", "flt-c"]
    assert await stores.faults.rules() == {}
