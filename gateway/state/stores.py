"""`Stores`: one store of each concern, in this process's memory or in a shared Redis.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from gateway.contract.clock import Clock
from gateway.state.bucket_store import MemoryTokenBuckets, RedisTokenBuckets, TokenBuckets
from gateway.state.fault_store import FaultStore, MemoryFaults, RedisFaults
from gateway.state.intent_store import BreakerIntents, MemoryBreakerIntents, RedisBreakerIntents
from gateway.state.key_store import KeyStore, MemoryKeys, RedisKeys
from gateway.state.record_store import (
    IdempotencyRecords,
    MemoryIdempotencyRecords,
    RedisIdempotencyRecords,
)
from gateway.state.redis.connection import AckHook, RedisConnection, uncounted
from gateway.state.room_store import MemoryRoomControl, RedisRoomControl, RoomControl
from gateway.state.ticket_store import MemoryTicketQueue, RedisTicketQueue, TicketQueue
from gateway.state.timeline_store import MemoryTimeline, RedisTimeline, TimelineStore
from gateway.state.window_store import MemoryWindows, RedisWindows, WindowStore


@dataclass(frozen=True, slots=True)
class Stores:
    """One store per concern, all of one kind (memory, or one shared Redis)."""

    shared: bool  # True when other processes see what this one writes
    # On the sync timer: what the store itself follows (Redis: how many replicas it has).
    upkeep: Callable[[], Awaitable[None]]
    breakers: BreakerIntents
    records: IdempotencyRecords
    windows: WindowStore
    keys: KeyStore
    faults: FaultStore
    timeline: TimelineStore
    buckets: TokenBuckets
    queue: TicketQueue
    room: RoomControl
    close: Callable[[], Awaitable[None]]


async def _nothing_to_do() -> None:
    return None


def memory_stores(clock: Clock | None = None, max_records: int = 100_000,
                  max_buckets: int = 100_000) -> Stores:
    """Every concern in this process's memory: the embedded default (one process)."""
    return Stores(shared=False, upkeep=_nothing_to_do, breakers=MemoryBreakerIntents(),
                  records=MemoryIdempotencyRecords(clock, max_records), windows=MemoryWindows(),
                  keys=MemoryKeys(), faults=MemoryFaults(), timeline=MemoryTimeline(),
                  buckets=MemoryTokenBuckets(clock, max_buckets),
                  queue=MemoryTicketQueue(clock), room=MemoryRoomControl(),
                  close=_nothing_to_do)


def redis_stores(url: str, timeout_s: float, *,
                 min_replica_acks: Literal["auto"] | int = "auto",
                 replica_ack_timeout_ms: int = 200, count_ack: AckHook = uncounted) -> Stores:
    """Every concern in the Redis at `url`, over one shared connection."""
    connection = RedisConnection(url, timeout_s, min_replica_acks=min_replica_acks,
                                 replica_ack_timeout_ms=replica_ack_timeout_ms,
                                 count_ack=count_ack)
    return Stores(shared=True, upkeep=connection.upkeep,
                  breakers=RedisBreakerIntents(connection),
                  records=RedisIdempotencyRecords(connection),
                  windows=RedisWindows(connection), keys=RedisKeys(connection),
                  faults=RedisFaults(connection), timeline=RedisTimeline(connection),
                  buckets=RedisTokenBuckets(connection), queue=RedisTicketQueue(connection),
                  room=RedisRoomControl(connection), close=connection.close)
