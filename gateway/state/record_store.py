"""Idempotency records: one per (client scope, route, key), with the claim's owner and lease,
the fingerprint and the stored answer, for `idempotency.py`.

On Redis every operation is one Lua script: atomic, one round trip, and safe to repeat
(each checks the claim's owner token), so one whose reply was lost to a dropped
connection is run again. Each record is one hash under one key, so every script touches
a single key (one hash slot on Redis Cluster). Lease deadlines are Redis's own clock
(`TIME`), so gateways on different machines agree on when a lease has run out however
their clocks drift.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

import orjson

from gateway.contract.clock import Clock, SystemClock
from gateway.contract.reply import Reply
from gateway.state.common import StoreUnavailable
from gateway.state.redis.connection import RedisConnection, Script


class ClaimStatus(StrEnum):
    CLAIMED = "claimed"  # no record yet: this claim owns a new one, forward the request
    # An earlier attempt's outcome is unknown (or its owner's lease ran out): this
    # claim owns the record now and must ask the backend before forwarding.
    RECONCILE = "reconcile"
    COMPLETED = "completed"  # the stored answer is in `reply`
    IN_FLIGHT = "in_flight"  # another claim holds the record for `lease_left_s` more
    REUSED = "reused"  # the key was first used with a different request


@dataclass(frozen=True, slots=True)
class Claim:
    status: ClaimStatus
    reply: Reply | None = None
    lease_left_s: float = 0.0


class IdempotencyRecords(Protocol):
    """Idempotency records, one per (client scope, route, key)."""

    async def claim(self, record: str, fingerprint: str, owner: str, lease_s: float,
                    ttl_s: int) -> Claim:
        """Claim an idempotency record for `owner`, or say why not, in one step.

        A repeated claim by the same owner (a retried command) answers as the
        first did. The record expires `ttl_s` after it was created.
        """

    async def answered(self, record: str) -> bool:
        """Whether the record holds a final answer (a read: claims nothing)."""

    async def complete(self, record: str, owner: str, reply: Reply,
                       keep_s: int | None = None) -> bool:
        """Store the final answer; False when `owner` no longer holds the claim. `keep_s`:
        the record expires that long from now, if sooner than its own retention."""

    async def release(self, record: str, owner: str) -> None:
        """Forget an in-flight record `owner` holds: the backend was certainly not reached."""

    async def abandon(self, record: str, owner: str) -> None:
        """Mark the outcome of `owner`'s attempt unknown: the next claim reconciles."""


@dataclass(slots=True)
class _Record:
    state: str  # "in_flight", "unknown" or "completed"
    fingerprint: str
    owner: str
    lease_until: float
    expires: float
    reconcile: bool = False
    reply: Reply | None = None


class MemoryIdempotencyRecords:
    def __init__(self, clock: Clock | None = None, max_records: int = 100_000) -> None:
        self._clock = clock or SystemClock()
        self._max_records = max_records
        # Insertion order is creation order: records go oldest first (their retention runs
        # from creation), and one answered sooner-expiring (`keep_s`) is dropped when met.
        self._records: OrderedDict[str, _Record] = OrderedDict()

    async def claim(self, record: str, fingerprint: str, owner: str, lease_s: float,
                    ttl_s: int) -> Claim:
        now = self._clock.monotonic()
        self._expire(now)
        found = self._records.get(record)
        if found is not None and found.expires <= now:
            del self._records[record]
            found = None
        if found is None:
            self._records[record] = _Record("in_flight", fingerprint, owner, now + lease_s,
                                            now + ttl_s)
            return Claim(ClaimStatus.CLAIMED)
        if found.fingerprint != fingerprint:
            return Claim(ClaimStatus.REUSED)
        if found.state == "completed":
            return Claim(ClaimStatus.COMPLETED, found.reply)
        if found.state == "in_flight" and found.owner == owner:
            return Claim(ClaimStatus.RECONCILE if found.reconcile else ClaimStatus.CLAIMED)
        if found.state == "in_flight" and found.lease_until > now:
            return Claim(ClaimStatus.IN_FLIGHT, lease_left_s=found.lease_until - now)
        found.state, found.owner, found.lease_until = "in_flight", owner, now + lease_s
        found.reconcile = True
        return Claim(ClaimStatus.RECONCILE)

    async def answered(self, record: str) -> bool:
        found = self._records.get(record)
        return found is not None and found.state == "completed" and \
            found.expires > self._clock.monotonic()

    async def complete(self, record: str, owner: str, reply: Reply,
                       keep_s: int | None = None) -> bool:
        found = self._records.get(record)
        if found is None or found.owner != owner:
            return False
        found.state, found.reply = "completed", reply
        if keep_s is not None:
            found.expires = min(found.expires, self._clock.monotonic() + keep_s)
        return True

    async def release(self, record: str, owner: str) -> None:
        found = self._records.get(record)
        if found is not None and found.owner == owner and found.state == "in_flight":
            del self._records[record]

    async def abandon(self, record: str, owner: str) -> None:
        found = self._records.get(record)
        if found is not None and found.owner == owner and found.state == "in_flight":
            found.state, found.owner = "unknown", ""

    def _expire(self, now: float) -> None:
        records = self._records
        while records:
            oldest = next(iter(records.values()))
            if oldest.expires > now and len(records) < self._max_records:
                return
            records.popitem(last=False)


IDEMPOTENCY_KEY = "og:idem:{record}"


# KEYS[1] record; ARGV fingerprint, owner, lease_ms, ttl_ms.
_CLAIM = Script.of("""
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local r = redis.call('HMGET', KEYS[1], 'state', 'fp', 'owner', 'lease', 'reconcile',
                     'status', 'ctype', 'headers', 'body')
local lease = string.format('%d', now + tonumber(ARGV[3]))
if not r[1] then
  redis.call('HSET', KEYS[1], 'state', 'in_flight', 'fp', ARGV[1], 'owner', ARGV[2],
             'lease', lease, 'reconcile', '0')
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  return {'claimed'}
end
if r[2] ~= ARGV[1] then return {'reused'} end
if r[1] == 'completed' then return {'completed', r[6], r[7], r[8], r[9]} end
if r[1] == 'in_flight' then
  if r[3] == ARGV[2] then
    if r[5] == '1' then return {'reconcile'} end
    return {'claimed'}
  end
  local left = tonumber(r[4]) - now
  if left > 0 then return {'in_flight', tostring(left)} end
end
redis.call('HSET', KEYS[1], 'state', 'in_flight', 'owner', ARGV[2], 'lease', lease,
           'reconcile', '1')
return {'reconcile'}
""")

# KEYS[1] record; ARGV owner, status, content type, headers (JSON), body, keep_ms (0: the
# record's own retention; else it expires that soon, unless it would sooner anyway).
# The owner stays on the record so that a repeated call answers 1 again.
_COMPLETE = Script.of("""
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'state', 'completed', 'status', ARGV[2], 'ctype', ARGV[3],
           'headers', ARGV[4], 'body', ARGV[5])
redis.call('HDEL', KEYS[1], 'lease', 'reconcile')
local keep = tonumber(ARGV[6])
if keep > 0 then
  local left = redis.call('PTTL', KEYS[1])
  if left < 0 or keep < left then redis.call('PEXPIRE', KEYS[1], keep) end
end
return 1
""")

# KEYS[1] record; ARGV owner.
_RELEASE = Script.of("""
local r = redis.call('HMGET', KEYS[1], 'state', 'owner')
if r[1] == 'in_flight' and r[2] == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
""")

# KEYS[1] record; ARGV owner.
_ABANDON = Script.of("""
local r = redis.call('HMGET', KEYS[1], 'state', 'owner')
if r[1] == 'in_flight' and r[2] == ARGV[1] then
  redis.call('HSET', KEYS[1], 'state', 'unknown')
  redis.call('HDEL', KEYS[1], 'owner', 'lease', 'reconcile')
end
return 1
""")


# A final answer no replica held in time is written again this often, for this many tries
# (a minute: past any failover, and past the default lease).
ANSWER_REHOLD_S = 0.5
ANSWER_REHOLD_TRIES = 120


class RedisIdempotencyRecords:
    """Each step is guarded by the owner token: repeated, it answers as the first run did and
    changes nothing more, so every one is sent as repeatable.

    While replicas are required (`state/redis/replica_acks.py`), a claim that wrote the record
    goes on only once they hold it, and is withdrawn otherwise: nothing is forwarded on a
    claim a failover could forget. A final answer is acknowledged the same way, but kept
    when the acknowledgement is late (the backend has acted and the client gets its
    answer), and written again off the request path until replicas hold it.
    """

    def __init__(self, connection: RedisConnection) -> None:
        self._connection = connection

    async def claim(self, record: str, fingerprint: str, owner: str, lease_s: float,
                    ttl_s: int) -> Claim:
        keys = (IDEMPOTENCY_KEY.format(record=record),)
        args = (fingerprint, owner, int(lease_s * 1000), ttl_s * 1000)
        connection = self._connection
        if not connection.acks.required:
            return _claim_of(await connection.eval(_CLAIM, keys, *args, repeatable=True))
        answer, held = await connection.eval_held(_CLAIM, keys, *args)
        claim = _claim_of(answer)
        wrote = claim.status in (ClaimStatus.CLAIMED, ClaimStatus.RECONCILE)
        if wrote and not await connection.acknowledged(held, "claim"):
            await self._withdraw(record, owner, claim.status)
            raise StoreUnavailable("no replica acknowledged the claim in time")
        return claim

    async def _withdraw(self, record: str, owner: str, status: ClaimStatus) -> None:
        """A claim no replica holds goes as it was found: a new record is deleted, a record
        whose earlier outcome is unknown stays unknown, so the next claim still reconciles.
        With Redis out of reach meanwhile, the lease lets the next claim reconcile."""
        with contextlib.suppress(StoreUnavailable):
            if status is ClaimStatus.CLAIMED:
                await self.release(record, owner)
            else:
                await self.abandon(record, owner)

    async def answered(self, record: str) -> bool:
        state = await self._connection.command("HGET", IDEMPOTENCY_KEY.format(record=record),
                                               "state", repeatable=True)
        return bool(state == b"completed")

    async def complete(self, record: str, owner: str, reply: Reply,
                       keep_s: int | None = None) -> bool:
        keys = (IDEMPOTENCY_KEY.format(record=record),)
        args = (owner, reply.status, reply.content_type, orjson.dumps(reply.headers), reply.body,
                (keep_s or 0) * 1000)
        connection = self._connection
        if not connection.acks.required:
            return bool(await connection.eval(_COMPLETE, keys, *args, repeatable=True))
        done, held = await connection.eval_held(_COMPLETE, keys, *args)
        if done and not await connection.acknowledged(held, "answer"):
            connection.later(self._hold_later(keys, args))
        return bool(done)

    async def _hold_later(self, keys: tuple[str, ...], args: tuple[Any, ...]) -> None:
        """Write a late answer again until replicas hold it. Were the master to die first,
        the replica promoted would hold the claim but not the answer, and a resubmission
        would meet 409 until the lease ran out; written again there, it is replayed."""
        connection = self._connection
        for _ in range(ANSWER_REHOLD_TRIES):
            await asyncio.sleep(ANSWER_REHOLD_S)
            try:
                done, held = await connection.eval_held(_COMPLETE, keys, *args)
            except StoreUnavailable:
                continue  # no master yet, mid-failover
            if not done or await connection.acknowledged(held, None):
                return  # held; or the claim is gone, and with it the answer

    async def release(self, record: str, owner: str) -> None:
        await self._connection.eval(_RELEASE, (IDEMPOTENCY_KEY.format(record=record),), owner,
                                    repeatable=True)

    async def abandon(self, record: str, owner: str) -> None:
        await self._connection.eval(_ABANDON, (IDEMPOTENCY_KEY.format(record=record),), owner,
                                    repeatable=True)


def _claim_of(answer: list[Any]) -> Claim:
    status = ClaimStatus(answer[0].decode())
    if status is ClaimStatus.COMPLETED:
        return Claim(status, _decode_reply(answer[1:]))
    if status is ClaimStatus.IN_FLIGHT:
        return Claim(status, lease_left_s=int(answer[1]) / 1000)
    return Claim(status)


def _decode_reply(fields: list[bytes]) -> Reply:
    status, ctype, headers, body = fields
    return Reply(int(status), body, ctype.decode(),
                 tuple((name, value) for name, value in orjson.loads(headers)))
