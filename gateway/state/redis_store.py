"""The Redis implementation of each store (with `redis_wire`, the only code that imports redis).

One class per interface of `gateway.store`, all sharing one `RedisConnection`:
redis-py's client for what is off the hot path, the pipelined wire for the
scripts on it. Calls have their own short timeout; any Redis error surfaces
as `StoreUnavailable`, and each concern decides what that means for it. Every
idempotency operation is one Lua script: atomic, one round trip, and safe to
repeat (each checks the claim's owner token), so one whose reply was lost to
a dropped connection is run again; the token-bucket script is not. Scripts go
over the hot path's own pipelined connection (`gateway/state/redis_wire.py`), so those
that concurrent requests call in the same turn of the event loop travel in one
write. Each record is one hash under one key, so every script touches a single
key (one hash slot on Redis Cluster).

Lease deadlines are Redis's own clock (`TIME`), so gateways on different
machines agree on when a lease has run out however their clocks drift.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal

import orjson
import redis.asyncio as aioredis
from hiredis import ReplyError
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from gateway.contract import redis_sentinel
from gateway.contract.reply import Reply
from gateway.state.redis_wire import Wire, WireError
from gateway.state.replica_acks import ReplicaAcks
from gateway.state.store import (
    TICKET_NUMBERS_A_MS,
    Claim,
    ClaimStatus,
    Entry,
    Stores,
    StoreUnavailable,
    Tick,
    Ticket,
    TicketState,
)

BREAKER_KEY = "og:breaker:{name}"
IDEMPOTENCY_KEY = "og:idem:{record}"
MAINTENANCE_KEY = "og:maintenance"  # hash: window id -> window JSON
ENDED_WINDOWS_KEY = "og:maintenance:ended"  # set: ids of config windows ended by an SRE
API_KEYS_KEY = "og:api_keys"  # hash: SHA-256 hex of a client API key -> client JSON
FAULTS_KEY = "og:faults"  # hash: fault rule id -> rule JSON
TIMELINE_KEY = "og:timeline"  # list: event JSON, newest first, capped
RATE_KEY = "og:rl:{scope}"  # hash: tokens, ts (Redis time of the last refill)
# The waiting room: one hash tag, so its scripts touch one slot on Redis Cluster.
ROOM_KEYS = (
    "og:{wr}:waiting",  # sorted set: waiting ticket numbers, scored by number
    "og:{wr}:admitted",  # sorted set: admitted ticket numbers, scored by admission time (ms)
    "og:{wr}:seen",  # sorted set: every live ticket, scored by its last poll or use (ms)
    "og:{wr}:issued",  # hash: waiting ticket number -> issue time (ms)
    "og:{wr}:recent",  # sorted set: customers let in during the last second, by time (ms)
    "og:{wr}:paused",  # string with a time to live: admissions paused while it exists
    "og:{wr}:seq",  # counter: the last ticket number issued
    "og:{wr}:totals",  # hash: admitted, expired
    "og:{wr}:pace",  # the time (ms) the next ticket may be admitted: one every 1000/rate ms
)
ROOM_SETTINGS_KEY = "og:{wr}:settings"  # hash: version, overrides (JSON)
PASS_KEY = "og:pass:{pass_id}"  # set: the submissions a pass let through, until it expires
ROOM_SECRET_KEY = "og:{wr}:secret"  # the signing secret, when none is configured


@dataclass(frozen=True, slots=True)
class _Script:
    """A Lua script, known to Redis by its SHA-1 once loaded."""

    source: str
    sha: str

    @classmethod
    def of(cls, source: str) -> _Script:
        return cls(source, hashlib.sha1(source.encode()).hexdigest())


# KEYS[1] record; ARGV fingerprint, owner, lease_ms, ttl_ms.
_CLAIM = _Script.of("""
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
_COMPLETE = _Script.of("""
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
_RELEASE = _Script.of("""
local r = redis.call('HMGET', KEYS[1], 'state', 'owner')
if r[1] == 'in_flight' and r[2] == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
""")

# KEYS[1] record; ARGV owner.
_ABANDON = _Script.of("""
local r = redis.call('HMGET', KEYS[1], 'state', 'owner')
if r[1] == 'in_flight' and r[2] == ARGV[1] then
  redis.call('HSET', KEYS[1], 'state', 'unknown')
  redis.call('HDEL', KEYS[1], 'owner', 'lease', 'reconcile')
end
return 1
""")


# KEYS[1] bucket; ARGV rate per second, burst, ttl_ms. Mirrors store.refill_and_take.
_TAKE_TOKEN = _Script.of("""
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(b[1]) or burst
local last = tonumber(b[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - last) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.6f', tokens),
           'ts', string.format('%.6f', now))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return string.format('%.6f', wait)
""")


# The waiting room's scripts share ROOM_KEYS (KEYS[1..9] in that order) and Redis's clock,
# and each mirrors one step of store.MemoryTicketQueue. `recent` keeps every admission of
# the last 1000 ms inclusive, so no closed one-second interval sees more than admit_per_s.
_ROOM_PRELUDE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', '(' .. (now - 1000))
local paused = redis.call('EXISTS', KEYS[6])
"""

# ARGV admit_per_s, queue_all (0/1), a member naming this admission uniquely. Numbering
# starts from the clock (store.first_ticket_number) whenever `seq` is missing.
_ENTER = _Script.of(_ROOM_PRELUDE + """
local waiting = redis.call('ZCARD', KEYS[1])
if paused == 0 and ARGV[2] == '0' and waiting == 0
   and redis.call('ZCARD', KEYS[5]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[5], now, ARGV[3])
  local pace = tonumber(redis.call('GET', KEYS[9]) or 0)
  if pace < now - 200 then pace = now end
  redis.call('SET', KEYS[9], string.format('%.3f', pace + 1000 / tonumber(ARGV[1])))
  return {0, 0, 0}
end
if redis.call('EXISTS', KEYS[7]) == 0 then
  redis.call('SET', KEYS[7], string.format('%.0f', now * NUMBERS_A_MS))
end
local n = redis.call('INCR', KEYS[7])
redis.call('ZADD', KEYS[1], n, n)
redis.call('ZADD', KEYS[3], now, n)
redis.call('HSET', KEYS[4], n, now)
local due = math.max(0, tonumber(redis.call('GET', KEYS[9]) or 0) - now)
return {n, waiting + 1, paused, math.floor(due)}
""".replace("NUMBERS_A_MS", str(TICKET_NUMBERS_A_MS)))

# ARGV ticket number, idle_ms. A ticket idle too long is gone even before a tick drops it.
_POLL = _Script.of(_ROOM_PRELUDE + """
local seen = redis.call('ZSCORE', KEYS[3], ARGV[1])
if not seen or now - tonumber(seen) > tonumber(ARGV[2]) then return {'gone'} end
redis.call('ZADD', KEYS[3], now, ARGV[1])
local admitted = redis.call('ZSCORE', KEYS[2], ARGV[1])
if admitted then return {'admitted', admitted} end
local rank = redis.call('ZRANK', KEYS[1], ARGV[1])
if not rank then return {'gone'} end
local due = math.max(0, tonumber(redis.call('GET', KEYS[9]) or 0) - now)
return {'waiting', rank + 1, paused, math.floor(due)}
""")

# ARGV admit_per_s, idle_ms, hold_ms (0: no pause from this caller). Tickets are paced one
# every 1000/admit_per_s ms; a step that comes late catches up at most 200 ms of them
# (store.PACE_CREDIT_S), and after a quiet spell the pace starts again from now, so
# the customers admitted reach the backend evenly, not in a lump each time the second slides.
_TICK = _Script.of(_ROOM_PRELUDE + """
if tonumber(ARGV[3]) > 0 then
  redis.call('SET', KEYS[6], '1', 'PX', ARGV[3])
  paused = 1
end
local idle = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', '(' .. (now - tonumber(ARGV[2])),
                        'LIMIT', 0, 10000)
local expired = 0
for _, n in ipairs(idle) do
  redis.call('ZREM', KEYS[3], n)
  redis.call('ZREM', KEYS[2], n)
  expired = expired + redis.call('ZREM', KEYS[1], n)
  redis.call('HDEL', KEYS[4], n)
end
if expired > 0 then redis.call('HINCRBY', KEYS[8], 'expired', expired) end
local waits = {}
if paused == 0 then
  local room = tonumber(ARGV[1]) - redis.call('ZCARD', KEYS[5])
  local gap = 1000 / tonumber(ARGV[1])
  local pace = tonumber(redis.call('GET', KEYS[9]) or 0)
  if pace < now - 200 then pace = now end
  if now < pace then room = 0 else room = math.min(room, math.floor((now - pace) / gap) + 1) end
  if room > 0 then
    local line = redis.call('ZRANGE', KEYS[1], 0, room - 1)
    if #line > 0 then
      redis.call('SET', KEYS[9], string.format('%.3f', pace + #line * gap))
    end
    for _, n in ipairs(line) do
      redis.call('ZREM', KEYS[1], n)
      redis.call('ZADD', KEYS[2], now, n)
      redis.call('ZADD', KEYS[5], now, 't' .. n)
      waits[#waits + 1] = tostring(now - tonumber(redis.call('HGET', KEYS[4], n) or now))
      redis.call('HDEL', KEYS[4], n)
    end
    if #waits > 0 then redis.call('HINCRBY', KEYS[8], 'admitted', #waits) end
  end
end
return {expired, redis.call('ZCARD', KEYS[1]), paused, redis.call('ZCARD', KEYS[5]), waits}
""")


# KEYS[1] the pass's set of submissions; ARGV submission, most, expiry (Unix ms).
_USE_PASS = _Script.of("""
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then return 1 end
if redis.call('SCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('PEXPIREAT', KEYS[1], ARGV[3])
return 1
""")


@asynccontextmanager
async def _translated() -> AsyncIterator[None]:
    try:
        yield
    except (RedisError, OSError, TimeoutError) as exc:
        raise StoreUnavailable(str(exc)) from exc


# (write, held): one replica acknowledgement asked for ("claim", "answer" or "admin") and
# whether the required replicas held the write in time.
AckHook = Callable[[str, bool], None]
Held = Callable[[], Awaitable[bool]]  # awaited: whether replicas hold a write


def _uncounted(_write: str, _held: bool) -> None:
    return None


class RedisConnection:
    """The clients every Redis store shares: redis-py's, the pipelined wire, and the
    connection of the writes that replicas must hold (`gateway/state/replica_acks.py`)."""

    def __init__(self, url: str, timeout_s: float, *,
                 min_replica_acks: Literal["auto"] | int = "auto",
                 replica_ack_timeout_ms: int = 200, count_ack: AckHook = _uncounted) -> None:
        # The client of everything off the hot path, whose commands are all safe to
        # repeat once (field sets, a reset count that only has to change).
        retry = Retry(NoBackoff(), 1)
        sentinel = redis_sentinel.parse(url)
        if sentinel is None:
            self.client = aioredis.Redis.from_url(
                url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, retry=retry,
                health_check_interval=30)
        else:
            self.client = sentinel.sentinel(timeout_s).master_for(
                sentinel.service, db=sentinel.db, username=sentinel.username,
                password=sentinel.password, socket_timeout=timeout_s,
                socket_connect_timeout=timeout_s, retry=retry, health_check_interval=30)
        self.wire = Wire(url, timeout_s)
        # Its answers come after the WAIT that closes each group: the wait is in its budget.
        self.acks = ReplicaAcks(Wire(url, timeout_s + replica_ack_timeout_ms / 1000),
                                min_replica_acks, sentinel is not None, replica_ack_timeout_ms)
        self._count_ack = count_ack
        self._later: set[asyncio.Future[None]] = set()

    async def upkeep(self) -> None:
        """On the sync timer: how many replicas the master has, for `min_replica_acks: auto`."""
        if not self.acks.follows_master:
            return
        async with _translated():
            info = await self.client.info("replication")
        self.acks.replicas_connected(int(info.get("connected_slaves", 0)))

    async def eval_held(self, script: _Script, keys: tuple[str, ...],
                        *args: str | bytes | int | float) -> tuple[Any, Held]:
        """Run a script that is harmless to repeat on the acknowledged connection: its reply
        as soon as it comes, and the acknowledgement to await (`acknowledged`) if it wrote."""
        command = ("EVALSHA", script.sha, len(keys), *keys, *args)
        try:
            reply, held = await self.acks.write(*command)
            if isinstance(reply, ReplyError) and str(reply).startswith("NOSCRIPT"):
                await self.wire.call("SCRIPT", "LOAD", script.source, repeatable=True)
                reply, held = await self.acks.write(*command)
        except WireError as exc:
            raise StoreUnavailable(str(exc)) from exc
        if isinstance(reply, ReplyError):
            raise StoreUnavailable(f"Redis refused a script: {reply}")
        return reply, held

    async def acknowledged(self, held: Held, write: str | None) -> bool:
        """Whether the required replicas held a write in time, counted as `write` unless
        None; False too when Redis could not say."""
        try:
            answer = await held()
        except WireError:
            answer = False
        if write is not None:
            self._count_ack(write, answer)
        return answer

    def later(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` off the request path, for as long as the connection is open."""
        task = asyncio.ensure_future(work)
        self._later.add(task)
        task.add_done_callback(self._later.discard)

    async def held_by_replicas(self) -> None:
        """After an admin change: return once the required replicas hold it, else raise
        `StoreUnavailable` (the change is on the master, and may not survive a failover)."""
        if self.acks.required and not await self.acknowledged(self.acks.barrier, "admin"):
            raise StoreUnavailable("no replica acknowledged the change in time")

    async def eval(self, script: _Script, keys: tuple[str, ...], *args: str | bytes | int | float,
                   repeatable: bool) -> Any:
        """Run one script on its keys: one round trip, shared with concurrent callers.

        `repeatable`: running it twice is harmless, so a reply lost to a dropped
        connection may be asked for again by running it again.
        """
        wire = self.wire
        try:
            reply = await wire.call("EVALSHA", script.sha, len(keys), *keys, *args,
                                    repeatable=repeatable)
            if isinstance(reply, ReplyError) and str(reply).startswith("NOSCRIPT"):
                # A restarted Redis has forgotten its scripts (so this one did not run):
                # load it, run it again.
                await wire.call("SCRIPT", "LOAD", script.source, repeatable=True)
                reply = await wire.call("EVALSHA", script.sha, len(keys), *keys, *args,
                                        repeatable=repeatable)
        except WireError as exc:
            raise StoreUnavailable(str(exc)) from exc
        if isinstance(reply, ReplyError):
            raise StoreUnavailable(f"Redis refused a script: {reply}")
        return reply

    async def command(self, *args: str | bytes | int | float, repeatable: bool) -> Any:
        """One plain command over the hot path's wire."""
        try:
            reply = await self.wire.call(*args, repeatable=repeatable)
        except WireError as exc:
            raise StoreUnavailable(str(exc)) from exc
        if isinstance(reply, ReplyError):
            raise StoreUnavailable(f"Redis refused a command: {reply}")
        return reply

    async def close(self) -> None:
        for task in self._later:
            task.cancel()
        self.wire.close()
        self.acks.close()
        await self.client.aclose()


# The admin changes below (breakers, maintenance windows, API keys, fault rules, waiting-room
# settings) each return only once the required replicas hold them: an SRE's change must
# not vanish in a failover a second after the admin API said 200.


class RedisBreakerIntents:
    def __init__(self, connection: RedisConnection) -> None:
        self._connection = connection
        self._redis = connection.client

    async def set_fields(self, name: str, fields: dict[str, str]) -> None:
        async with _translated():
            # redis-py's stub wants a mapping of its own wider key and value unions
            await self._redis.hset(BREAKER_KEY.format(name=name), mapping=fields)  # type: ignore[arg-type]
        await self._connection.held_by_replicas()

    async def reset(self, name: str) -> None:
        key = BREAKER_KEY.format(name=name)
        async with _translated(), self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, "forced", "")
            pipe.hincrby(key, "reset_seq", 1)
            await pipe.execute()
        await self._connection.held_by_replicas()

    async def controls(self, names: list[str]) -> dict[str, dict[str, str]]:
        async with _translated(), self._redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hgetall(BREAKER_KEY.format(name=name))
            found = await pipe.execute()
        return {name: {k.decode(): v.decode() for k, v in fields.items()}
                for name, fields in zip(names, found, strict=True)}


class _JsonByIdHash:
    """One Redis hash of JSON documents by id: written and deleted a field at a time."""

    key: str

    def __init__(self, connection: RedisConnection) -> None:
        self._connection = connection
        self._redis = connection.client

    async def put(self, field: str, data: bytes) -> None:
        async with _translated():
            await self._redis.hset(self.key, field, data)
        await self._connection.held_by_replicas()

    async def delete(self, field: str) -> bool:
        async with _translated():
            deleted = bool(await self._redis.hdel(self.key, field))
        await self._connection.held_by_replicas()
        return deleted


class RedisWindows(_JsonByIdHash):
    key = MAINTENANCE_KEY

    async def windows(self) -> tuple[dict[str, bytes], set[str]]:
        async with _translated(), self._redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(MAINTENANCE_KEY)
            pipe.smembers(ENDED_WINDOWS_KEY)
            windows, ended = await pipe.execute()
        return ({k.decode(): v for k, v in windows.items()}, {i.decode() for i in ended})

    async def end_config_windows(self, window_ids: list[str]) -> None:
        async with _translated():
            await self._redis.sadd(ENDED_WINDOWS_KEY, *window_ids)
        await self._connection.held_by_replicas()


_ADD_FAULT = _Script.of("""
if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
""")
_END_FAULTS = _Script.of("""
local ids = redis.call('HKEYS', KEYS[1])
redis.call('DEL', KEYS[1])
return ids
""")


class RedisFaults(_JsonByIdHash):
    key = FAULTS_KEY

    async def rules(self) -> dict[str, bytes]:
        async with _translated():
            # bytes: the client does not decode
            found: dict[bytes, bytes] = await self._redis.hgetall(FAULTS_KEY)  # type: ignore[assignment]
        return {k.decode(): v for k, v in found.items()}

    async def add(self, rule_id: str, data: bytes, most: int) -> bool:
        # Not repeatable: run twice after a lost answer, the count could be off by one.
        added = await self._connection.eval(_ADD_FAULT, (FAULTS_KEY,), rule_id, data, most,
                                            repeatable=False)
        await self._connection.held_by_replicas()
        return bool(added)

    async def delete_all(self) -> list[str]:
        ended = await self._connection.eval(_END_FAULTS, (FAULTS_KEY,), repeatable=False)
        await self._connection.held_by_replicas()
        return [i.decode() if isinstance(i, bytes) else str(i) for i in ended]


class RedisTimeline:
    def __init__(self, connection: RedisConnection) -> None:
        self._redis = connection.client

    async def append(self, events: list[bytes], keep: int) -> None:
        async with _translated(), self._redis.pipeline(transaction=True) as pipe:
            pipe.lpush(TIMELINE_KEY, *events)
            pipe.ltrim(TIMELINE_KEY, 0, keep - 1)
            await pipe.execute()

    async def recent(self, limit: int) -> list[bytes]:
        async with _translated():
            found: list[bytes] = await self._redis.lrange(TIMELINE_KEY, 0, limit - 1)  # type: ignore[assignment]
        return found


class RedisKeys(_JsonByIdHash):
    key = API_KEYS_KEY

    async def keys(self) -> dict[str, bytes]:
        async with _translated():
            # bytes: the client does not decode
            found: dict[bytes, bytes] = await self._redis.hgetall(API_KEYS_KEY)  # type: ignore[assignment]
        return {k.decode(): v for k, v in found.items()}


class RedisTokenBuckets:
    def __init__(self, connection: RedisConnection) -> None:
        self._connection = connection

    async def take(self, scope: str, rate_per_s: float, burst: int) -> float:
        # Idle longer than a full refill, a bucket is full again: no need to keep it.
        ttl_ms = int(burst / rate_per_s * 1000) + 1000
        # Not repeatable: run twice, it would take two tokens.
        wait = await self._connection.eval(_TAKE_TOKEN, (RATE_KEY.format(scope=scope),),
                                           rate_per_s, burst, ttl_ms, repeatable=False)
        return float(wait)


# A final answer no replica held in time is written again this often, for this many tries
# (a minute: past any failover, and past the default lease).
ANSWER_REHOLD_S = 0.5
ANSWER_REHOLD_TRIES = 120


class RedisIdempotencyRecords:
    """Each step is guarded by the owner token: repeated, it answers as the first run did and
    changes nothing more, so every one is sent as repeatable.

    While replicas are required (`gateway/state/replica_acks.py`), a claim that wrote the record
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


class RedisTicketQueue:
    def __init__(self, connection: RedisConnection) -> None:
        self._connection = connection

    async def enter(self, admit_per_s: int, queue_all: bool) -> Entry:
        # Not repeatable: run twice, it would let in (or queue) the customer twice.
        number, position, paused, *due = await self._connection.eval(
            _ENTER, ROOM_KEYS, admit_per_s, int(queue_all), secrets.token_hex(8),
            repeatable=False)
        return Entry(number or None, position, bool(paused), int(due[0]) / 1000 if due else 0.0)

    async def poll(self, number: int, idle_s: float) -> Ticket:
        # Repeatable: it only reads and restarts the idle timer.
        answer = await self._connection.eval(_POLL, ROOM_KEYS, number, int(idle_s * 1000),
                                             repeatable=True)
        state = TicketState(answer[0].decode())
        if state is TicketState.ADMITTED:
            return Ticket(state, admitted_at=int(answer[1]) / 1000)
        if state is TicketState.WAITING:
            return Ticket(state, int(answer[1]), paused=bool(answer[2]),
                          due_s=int(answer[3]) / 1000)
        return Ticket(state)

    async def tick(self, admit_per_s: int, idle_s: float, hold_s: float) -> Tick:
        expired, waiting, paused, recent, waits = await self._connection.eval(
            _TICK, ROOM_KEYS, admit_per_s, int(idle_s * 1000), int(hold_s * 1000),
            repeatable=False)
        return Tick(expired, waiting, bool(paused), recent,
                    tuple(int(w) / 1000 for w in waits))

    async def use_pass(self, pass_id: str, submission: str, most: int,
                       expires_at: float) -> bool:
        # Repeatable: a submission added once is found the second time.
        allowed = await self._connection.eval(
            _USE_PASS, (PASS_KEY.format(pass_id=pass_id),), submission, most,
            int(expires_at * 1000), repeatable=True)
        return bool(allowed)

    async def totals(self) -> tuple[int, int, int]:
        redis = self._connection.client
        async with _translated(), redis.pipeline(transaction=False) as pipe:
            pipe.zcard(ROOM_KEYS[0])
            pipe.hmget(ROOM_KEYS[7], ["admitted", "expired"])
            waiting, (admitted, expired) = await pipe.execute()
        return int(waiting), int(admitted or 0), int(expired or 0)


class RedisRoomControl:
    def __init__(self, connection: RedisConnection) -> None:
        self._connection = connection
        self._redis = connection.client

    async def overrides(self) -> tuple[int, bytes]:
        async with _translated():
            version, data = await self._redis.hmget(ROOM_SETTINGS_KEY, ["version", "overrides"])
        if isinstance(data, str):  # the client does not decode; the stub allows it
            data = data.encode()
        return int(version or 0), data or b"{}"

    async def set_overrides(self, data: bytes) -> int:
        async with _translated(), self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(ROOM_SETTINGS_KEY, "overrides", data)
            pipe.hincrby(ROOM_SETTINGS_KEY, "version", 1)
            _, version = await pipe.execute()
        await self._connection.held_by_replicas()
        return int(version)

    async def shared_secret(self, candidate: bytes) -> bytes:
        async with _translated():
            await self._redis.set(ROOM_SECRET_KEY, candidate, nx=True)
            secret: bytes | None = await self._redis.get(ROOM_SECRET_KEY)  # type: ignore[assignment]
        if secret is None:
            raise StoreUnavailable("the waiting room's secret vanished from Redis")
        return secret


def redis_stores(url: str, timeout_s: float, *,
                 min_replica_acks: Literal["auto"] | int = "auto",
                 replica_ack_timeout_ms: int = 200, count_ack: AckHook = _uncounted) -> Stores:
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


def _decode_reply(fields: list[bytes]) -> Reply:
    status, ctype, headers, body = fields
    return Reply(int(status), body, ctype.decode(),
                 tuple((name, value) for name, value in orjson.loads(headers)))
