"""Writes that replicas must hold (`state/redis/replica_acks.py`), against real redis-server.

A replica that streams holds every write; a replica behind a stalled relay holds none,
although the master still counts it as connected. Concurrent writes share one WAIT; a
reply that wrote nothing is heard before the WAIT; a barrier covers writes made on other
connections; `auto` follows what the master reports. Through the stores: a claim no
replica held is withdrawn as it was found, a late answer is kept (and replayed at once:
a replay waits for no replica), an admin change no replica held is refused.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis

from gateway.contract.reply import Reply
from gateway.state.common import StoreUnavailable
from gateway.state.record_store import ClaimStatus
from gateway.state.redis.replica_acks import ReplicaAcks
from gateway.state.redis.wire import Wire
from gateway.state.stores import Stores, redis_stores
from loadtest.harness import RedisServer, Relay, replicas_hold_writes, wait_until

TIMEOUT_MS = 150


class Pair:
    """A master and one replica that reaches it through a relay the test can stall."""

    def __init__(self, log_dir: Path) -> None:
        self.master = RedisServer(log_dir)
        self.relay = Relay(self.master.port)
        self.replica = RedisServer(log_dir, replica_of=self.relay.port)
        self.client = redis.Redis(port=self.master.port)
        wait_until(lambda: replicas_hold_writes(self.master.port, 1), 20,
                   "the replica never came online")

    def waits(self) -> int:
        """WAIT commands the master has run so far."""
        return int(self.client.info("commandstats").get("cmdstat_wait", {}).get("calls", 0))

    def stop(self) -> None:
        self.client.close()
        self.relay.close()
        self.replica.stop()
        self.master.stop()


@pytest.fixture
def pair(log_dir: Path) -> Iterator[Pair]:
    pair = Pair(log_dir)
    yield pair
    pair.stop()


@pytest.fixture
async def acks(pair: Pair) -> AsyncIterator[ReplicaAcks]:
    """The acknowledged connection to the pair's master, one replica required."""
    connection = ReplicaAcks(Wire(pair.master.url, timeout_s=1.0), 1, sentinel=False,
                             timeout_ms=TIMEOUT_MS)
    yield connection
    connection.close()


@pytest.fixture
async def stalled_stores(pair: Pair) -> AsyncIterator[Stores]:
    stores = redis_stores(pair.master.url, timeout_s=0.5, replica_ack_timeout_ms=TIMEOUT_MS)
    await stores.upkeep()  # "auto": the master reports its replica, so 1 is required
    pair.relay.stall()
    yield stores
    await stores.close()


async def _written(acks: ReplicaAcks, *command: str | int) -> tuple[object, bool]:
    reply, held = await acks.write(*command)
    return reply, await held()


async def test_a_streaming_replica_holds_every_write_and_a_group_costs_one_wait(
        pair: Pair, acks: ReplicaAcks) -> None:
    before = pair.waits()
    answers = await asyncio.gather(*(_written(acks, "SET", f"acks:{n}", n)
                                     for n in range(50)))
    assert answers == [(b"OK", True)] * 50
    assert pair.waits() - before == 1, "one WAIT covers the whole group"
    for n in range(50):
        pair.client.set(f"acks:other:{n}", n)
    assert await asyncio.gather(*(acks.barrier() for _ in range(20))) == [True] * 20


async def test_a_reply_is_heard_before_the_wait_that_follows_it(
        pair: Pair, acks: ReplicaAcks) -> None:
    pair.relay.stall()
    started = time.monotonic()
    reply, held = await acks.write("GET", "acks:nothing")
    assert reply is None and time.monotonic() - started < TIMEOUT_MS / 1000
    assert await held() is False


async def test_a_stalled_replica_holds_nothing_though_the_master_counts_it(
        pair: Pair, acks: ReplicaAcks) -> None:
    pair.relay.stall()
    started = time.monotonic()
    assert await _written(acks, "SET", "acks:stalled", "x") == (b"OK", False)
    assert TIMEOUT_MS / 1000 <= time.monotonic() - started < 1.0
    assert pair.client.info("replication")["connected_slaves"] == 1
    assert pair.client.get("acks:stalled") == b"x", "the master ran it all the same"
    # Barriers asked for while one group waits go in the next group, not in a queue of
    # one WAIT each: each caller waits at most two timeouts.
    first = asyncio.ensure_future(acks.barrier())
    await asyncio.sleep(0.05)
    started = time.monotonic()
    assert await asyncio.gather(*(acks.barrier() for _ in range(20))) == [False] * 20
    assert await first is False
    assert time.monotonic() - started < 2 * TIMEOUT_MS / 1000 + 0.5


async def test_a_barrier_covers_a_write_made_on_another_connection(
        pair: Pair, acks: ReplicaAcks) -> None:
    pair.client.set("acks:elsewhere", "1")
    assert await acks.barrier() is True
    replica = redis.Redis(port=pair.replica.port)
    try:
        assert replica.get("acks:elsewhere") == b"1"
    finally:
        replica.close()
    pair.relay.stall()
    pair.client.set("acks:elsewhere", "2")
    assert await acks.barrier() is False


async def test_auto_requires_one_while_the_master_reports_a_replica(
        pair: Pair, redis_server: RedisServer) -> None:
    alone = redis_stores(redis_server.url, timeout_s=0.5)
    replicated = redis_stores(pair.master.url, timeout_s=0.5)
    try:
        record = f"auto-{time.monotonic_ns()}"
        with pytest.raises(StoreUnavailable):  # until the master was asked: closed, not open
            await alone.records.claim(record, "fp", "a", 30, 60)
        await alone.upkeep()
        assert (await alone.records.claim(record, "fp", "a", 30, 60)).status \
            is ClaimStatus.CLAIMED, "no replica: nothing to wait for"
        await replicated.upkeep()
        pair.relay.stall()
        with pytest.raises(StoreUnavailable, match="no replica"):
            await replicated.records.claim(record + "r", "fp", "a", 30, 60)
    finally:
        await alone.close()
        await replicated.close()


async def test_a_claim_no_replica_held_is_withdrawn_and_the_key_may_be_sent_again(
        pair: Pair, stalled_stores: Stores) -> None:
    records = stalled_stores.records
    with pytest.raises(StoreUnavailable):
        await records.claim("withdrawn", "fp", "a", 30, 60)
    assert not pair.client.exists("og:idem:withdrawn"), "the new record went with its claim"
    pair.relay.flow()
    pair.client.set("acks:nudge", "1")  # the held bytes go on with the next ones
    wait_until(lambda: redis.Redis(port=pair.replica.port).get("acks:nudge") == b"1", 10,
               "the replica never caught up")
    assert (await records.claim("withdrawn", "fp", "b", 30, 60)).status is ClaimStatus.CLAIMED


async def test_a_reconciling_claim_no_replica_held_stays_unknown(pair: Pair) -> None:
    stores = redis_stores(pair.master.url, timeout_s=0.5, replica_ack_timeout_ms=TIMEOUT_MS)
    try:
        await stores.upkeep()
        records = stores.records
        assert (await records.claim("unknown", "fp", "a", 30, 60)).status \
            is ClaimStatus.CLAIMED
        await records.abandon("unknown", "a")  # the outcome of that attempt is unknown
        pair.relay.stall()
        with pytest.raises(StoreUnavailable):
            await records.claim("unknown", "fp", "b", 30, 60)
        # Withdrawn, it must still be reconciled: never claimed afresh and sent blindly.
        assert pair.client.hget("og:idem:unknown", "state") == b"unknown"
    finally:
        await stores.close()


async def test_an_answer_no_replica_held_is_kept_and_counted(pair: Pair) -> None:
    counted: list[tuple[str, bool]] = []
    stores = redis_stores(pair.master.url, timeout_s=0.5, replica_ack_timeout_ms=TIMEOUT_MS,
                          count_ack=lambda write, held: counted.append((write, held)))
    try:
        await stores.upkeep()
        records = stores.records
        assert (await records.claim("late", "fp", "a", 30, 60)).status is ClaimStatus.CLAIMED
        pair.relay.stall()
        assert await records.complete("late", "a", Reply(201, b'{"ok":1}', "application/json"))
        assert counted == [("claim", True), ("answer", False)]
        started = time.monotonic()
        claim = await records.claim("late", "fp", "b", 30, 60)
        assert claim.status is ClaimStatus.COMPLETED and claim.reply is not None
        assert claim.reply.body == b'{"ok":1}'
        assert counted == [("claim", True), ("answer", False)], "a replay asks no replica"
        assert time.monotonic() - started < TIMEOUT_MS / 1000
    finally:
        await stores.close()


async def test_an_admin_change_no_replica_held_is_refused(stalled_stores: Stores) -> None:
    with pytest.raises(StoreUnavailable, match="no replica acknowledged the change"):
        await stalled_stores.windows.put("w1", b"{}")
    with pytest.raises(StoreUnavailable):
        await stalled_stores.breakers.set_fields("payment", {"forced": "open"})
    with pytest.raises(StoreUnavailable):
        await stalled_stores.room.set_overrides(b"{}")
