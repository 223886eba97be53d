"""Shared state, one small async interface per concern, in memory or in Redis.

- `BreakerIntents`: the SRE's intent per breaker (setting overrides, forced
  state, reset count), for `breaker_control.py`;
- `IdempotencyRecords`: one record per (client scope, route, key): claim
  owner and lease, fingerprint, stored answer, for `idempotency.py`;
- `WindowStore`: maintenance windows set through the admin API, and the config
  windows an SRE ended, for `maintenance.py`;
- `KeyStore`: client API keys added through the admin API, for `auth.py`;
- `FaultStore`: fault-injection rules added through the admin API, for `faults.py`;
- `TimelineStore`: the shared timeline of events, newest first, for `timeline.py`;
- `TokenBuckets`: tokens left and last refill per scope, for `rate_limit.py`
  (and, always in memory, the admin API's per-address limit);
- `TicketQueue`: the waiting room's tickets, admissions of the last second and
  pause flag, for `waiting_room.py`;
- `RoomControl`: the waiting-room settings changed through the admin API, and the
  secret every process signs with when none is configured, for `waiting_room.py`.

Each operation is one atomic step of the backing store (a hash field set, a
counter increment, one script), never read-then-write across round trips, so
two gateway processes acting at once cannot undo each other's change.

The `Memory*` classes here serve one process (the demo); `gateway.redis_store`
has one Redis class per interface, sharing one connection, for every process
and replica that shares the Redis. `Stores` bundles one of each. Every pair
passes the same behaviour suite (tests/test_store.py).
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import logging
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from gateway.contract.clock import Clock, SystemClock
from gateway.contract.reply import Reply

log = logging.getLogger("gateway.store")


# The waiting room admits from its line one ticket every 1/admit_per_s seconds, so admitted
# customers reach the backend at the pace they were let in. An admission step that fires late
# catches up at most this long's worth; after a quiet spell the pace starts again from now.
PACE_CREDIT_S = 0.2


# Ticket numbers start, whenever the line starts from nothing (a new process, or a Redis
# that lost its data), at the clock's milliseconds times this: so a ticket signed before
# the loss never names a ticket issued after it (its number is below every new one, unless
# the line it came from issued more than this many tickets a millisecond, on average).
# Numbers stay below 10**15 (the 15 digits a ticket may carry) until 2092.
TICKET_NUMBERS_A_MS = 256


def first_ticket_number(wall_s: float) -> int:
    """One before the first ticket number of a line started at Unix time `wall_s`."""
    return int(wall_s * 1000) * TICKET_NUMBERS_A_MS


class StoreUnavailable(Exception):
    """The shared store could not be reached in time."""


async def follow(what: str, sync: Callable[[], Awaitable[None]], interval_s: float) -> None:
    """Run `sync` every `interval_s` for ever; a store outage keeps the last state seen."""
    failing = False
    while True:
        try:
            await sync()
            if failing:
                log.info("store reachable again", extra={"fields": {"following": what}})
            failing = False
        except StoreUnavailable as exc:
            if not failing:
                log.warning("store unreachable, keeping the last state seen",
                            extra={"fields": {"following": what, "error": str(exc)}})
            failing = True
        await asyncio.sleep(interval_s)


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


class BreakerIntents(Protocol):
    async def set_fields(self, name: str, fields: dict[str, str]) -> None:
        """Set some fields of a breaker's control record, leaving the others."""

    async def reset(self, name: str) -> None:
        """Clear the forced state and bump the reset count, in one step."""

    async def controls(self, names: list[str]) -> dict[str, dict[str, str]]:
        """The control record of each named breaker (empty when never set)."""


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


class WindowStore(Protocol):
    async def windows(self) -> tuple[dict[str, bytes], set[str]]:
        """Windows set through the admin API (id -> JSON), and ids of config windows ended."""

    async def put(self, window_id: str, data: bytes) -> None: ...

    async def delete(self, window_id: str) -> bool:
        """Forget an admin window; False when there was none with this id."""

    async def end_config_windows(self, window_ids: list[str]) -> None:
        """Mark windows declared in the config file as ended, for good."""


class KeyStore(Protocol):
    async def keys(self) -> dict[str, bytes]:
        """Client API keys added through the admin API: SHA-256 hex -> client JSON."""

    async def put(self, key_sha256: str, data: bytes) -> None: ...

    async def delete(self, key_sha256: str) -> bool:
        """Revoke a key added through the admin API; False when there was none."""


class FaultStore(Protocol):
    async def rules(self) -> dict[str, bytes]:
        """Fault rules in force or run out (id -> JSON); run-out ones are deleted by adds."""

    async def add(self, rule_id: str, data: bytes, most: int) -> bool:
        """Add a rule unless `most` are stored already (False)."""

    async def delete(self, rule_id: str) -> bool:
        """End a rule; False when there was none with this id."""

    async def delete_all(self) -> list[str]:
        """End every rule (the kill switch); the ids ended."""


class TimelineStore(Protocol):
    async def append(self, events: list[bytes], keep: int) -> None:
        """Add events (oldest first), keeping the newest `keep`."""

    async def recent(self, limit: int) -> list[bytes]:
        """The newest `limit` events, newest first."""


class TokenBuckets(Protocol):
    async def take(self, scope: str, rate_per_s: float, burst: int) -> float:
        """Take one token from the bucket: 0.0 if taken, else seconds until one is due.

        A token bucket refilled at `rate_per_s` up to `burst`; a scope never seen
        starts full. Read, refill and take are one atomic step.
        """


@dataclass(frozen=True, slots=True)
class Entry:
    """A new customer at the waiting room's door: let in now (`ticket` None), or given
    ticket `ticket`, `position` in line (1 = next in)."""

    ticket: int | None
    position: int = 0
    paused: bool = False
    due_s: float = 0.0  # until the next admission from the line is due (its pace)


class TicketState(StrEnum):
    WAITING = "waiting"
    ADMITTED = "admitted"
    GONE = "gone"  # lost its place (or never was): expired, or admitted and then left idle


@dataclass(frozen=True, slots=True)
class Ticket:
    state: TicketState
    position: int = 0  # WAITING: place in line, 1 = next in
    admitted_at: float = 0.0  # ADMITTED: Unix time of the admission
    paused: bool = False
    due_s: float = 0.0  # WAITING: until the next admission from the line is due


@dataclass(frozen=True, slots=True)
class Tick:
    """What one admission step did and saw."""

    expired: int  # waiting tickets that lost their place in this step
    waiting: int  # live waiting tickets after it
    paused: bool
    recent: int  # customers let in during the last second, this step's included
    waits: tuple[float, ...] = ()  # ticket-to-admission seconds of each ticket admitted


class TicketQueue(Protocol):
    """The waiting room's line. Tickets are numbered in issue order; every step is atomic,
    and at most `admit_per_s` customers are let in during any one-second interval."""

    async def enter(self, admit_per_s: int, queue_all: bool) -> Entry:
        """Let a new customer in if nobody waits, there is room this second and admissions
        are neither paused nor held for everyone (`queue_all`); else issue a ticket."""

    async def poll(self, number: int, idle_s: float) -> Ticket:
        """A ticket's state; a live ticket's idle timer starts again."""

    async def tick(self, admit_per_s: int, idle_s: float, hold_s: float) -> Tick:
        """One admission step, safe for every process to run on its own timer: drop
        tickets idle longer than `idle_s`, then, unless paused, admit the lowest live
        numbers that fit this second, paced one every 1/admit_per_s seconds (see
        PACE_CREDIT_S). `hold_s` > 0 pauses admissions for that long."""

    async def totals(self) -> tuple[int, int, int]:
        """(waiting now, tickets admitted ever, waiting tickets expired ever)."""

    async def use_pass(self, pass_id: str, submission: str, most: int,
                       expires_at: float) -> bool:
        """Whether the pass `pass_id` may let `submission` through: one it let through
        already, or a new one while it has let fewer than `most` through. Forgotten at
        Unix time `expires_at`, when the pass is no pass anyway."""


class RoomControl(Protocol):
    async def overrides(self) -> tuple[int, bytes]:
        """(version, JSON of the settings changed through the admin API); (0, b"{}") when
        never changed. The version grows with each change."""

    async def set_overrides(self, data: bytes) -> int:
        """Replace the changed settings; the new version."""

    async def shared_secret(self, candidate: bytes) -> bytes:
        """The signing secret of every process sharing this store: the first one offered."""


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


def refill_and_take(tokens: float, last: float, now: float, rate_per_s: float,
                    burst: int) -> tuple[float, float]:
    """(tokens left, seconds to wait): the token-bucket step, shared by the memory store
    and mirrored by the Redis script."""
    tokens = min(float(burst), tokens + max(0.0, now - last) * rate_per_s)
    if tokens >= 1.0:
        return tokens - 1.0, 0.0
    return tokens, (1.0 - tokens) / rate_per_s


@dataclass(slots=True)
class _Record:
    state: str  # "in_flight", "unknown" or "completed"
    fingerprint: str
    owner: str
    lease_until: float
    expires: float
    reconcile: bool = False
    reply: Reply | None = None


class MemoryBreakerIntents:
    def __init__(self) -> None:
        self._breakers: dict[str, dict[str, str]] = {}

    async def set_fields(self, name: str, fields: dict[str, str]) -> None:
        self._breakers.setdefault(name, {}).update(fields)

    async def reset(self, name: str) -> None:
        record = self._breakers.setdefault(name, {})
        record["forced"] = ""
        record["reset_seq"] = str(int(record.get("reset_seq", "0")) + 1)

    async def controls(self, names: list[str]) -> dict[str, dict[str, str]]:
        return {name: dict(self._breakers.get(name, {})) for name in names}


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


class MemoryWindows:
    def __init__(self) -> None:
        self._windows: dict[str, bytes] = {}
        self._ended: set[str] = set()

    async def windows(self) -> tuple[dict[str, bytes], set[str]]:
        return dict(self._windows), set(self._ended)

    async def put(self, window_id: str, data: bytes) -> None:
        self._windows[window_id] = data

    async def delete(self, window_id: str) -> bool:
        return self._windows.pop(window_id, None) is not None

    async def end_config_windows(self, window_ids: list[str]) -> None:
        self._ended.update(window_ids)


class MemoryKeys:
    def __init__(self) -> None:
        self._keys: dict[str, bytes] = {}

    async def keys(self) -> dict[str, bytes]:
        return dict(self._keys)

    async def put(self, key_sha256: str, data: bytes) -> None:
        self._keys[key_sha256] = data

    async def delete(self, key_sha256: str) -> bool:
        return self._keys.pop(key_sha256, None) is not None


class MemoryFaults:
    def __init__(self) -> None:
        self._rules: dict[str, bytes] = {}

    async def rules(self) -> dict[str, bytes]:
        return dict(self._rules)

    async def add(self, rule_id: str, data: bytes, most: int) -> bool:
        if len(self._rules) >= most:
            return False
        self._rules[rule_id] = data
        return True

    async def delete(self, rule_id: str) -> bool:
        return self._rules.pop(rule_id, None) is not None

    async def delete_all(self) -> list[str]:
        ended = list(self._rules)
        self._rules.clear()
        return ended


class MemoryTimeline:
    def __init__(self) -> None:
        self._events: deque[bytes] = deque()

    async def append(self, events: list[bytes], keep: int) -> None:
        for event in events:
            self._events.appendleft(event)
        while len(self._events) > keep:
            self._events.pop()

    async def recent(self, limit: int) -> list[bytes]:
        return list(itertools.islice(self._events, limit))


class MemoryTokenBuckets:
    """Token buckets of one process, the least recently used dropped past `max_buckets`
    (a dropped bucket comes back full)."""

    def __init__(self, clock: Clock | None = None, max_buckets: int = 100_000) -> None:
        self._clock = clock or SystemClock()
        self._max_buckets = max_buckets
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    async def take(self, scope: str, rate_per_s: float, burst: int) -> float:
        now = self._clock.monotonic()
        buckets = self._buckets
        tokens, last = buckets.pop(scope, (float(burst), now))
        tokens, wait = refill_and_take(tokens, last, now, rate_per_s, burst)
        buckets[scope] = (tokens, now)
        if len(buckets) > self._max_buckets:
            buckets.popitem(last=False)
        return wait


class MemoryTicketQueue:
    """The line of one process (the Redis script in redis_store mirrors each step)."""

    def __init__(self, clock: Clock | None = None) -> None:
        self._clock = clock or SystemClock()
        self._next = first_ticket_number(self._clock.wall())
        self._waiting: dict[int, float] = {}  # number -> issued at; insertion = number order
        # Waiting numbers in order from `_head` on, so a position is one bisection.
        self._line: list[int] = []
        self._head = 0
        self._admitted: dict[int, float] = {}  # number -> admitted at (wall)
        self._seen: dict[int, float] = {}  # number -> last poll or use
        self._recent: deque[float] = deque()  # admission times within the last second
        self._paused_until = 0.0
        self._pace = 0.0  # when the next ticket may be admitted: one every 1/admit_per_s
        self._admitted_total = 0
        self._expired_total = 0
        # Passes in use: the submissions each let through, until the pass expires.
        self._passes: dict[str, tuple[set[str], float]] = {}

    async def enter(self, admit_per_s: int, queue_all: bool) -> Entry:
        now = self._clock.monotonic()
        paused = self._slide(now)
        if not (paused or queue_all or self._waiting) and len(self._recent) < admit_per_s:
            self._recent.append(now)
            self._pace = self._paced_from(now) + 1.0 / admit_per_s
            return Entry(None)
        self._next += 1
        self._waiting[self._next] = self._seen[self._next] = now
        self._line.append(self._next)
        return Entry(self._next, len(self._waiting), paused, max(0.0, self._pace - now))

    async def poll(self, number: int, idle_s: float) -> Ticket:
        now = self._clock.monotonic()
        seen = self._seen.get(number)
        if seen is None or now - seen > idle_s:
            return Ticket(TicketState.GONE)
        self._seen[number] = now
        if number in self._admitted:
            return Ticket(TicketState.ADMITTED, admitted_at=self._admitted[number])
        position = bisect.bisect_right(self._line, number, lo=self._head) - self._head
        return Ticket(TicketState.WAITING, position, paused=now < self._paused_until,
                      due_s=max(0.0, self._pace - now))

    async def tick(self, admit_per_s: int, idle_s: float, hold_s: float) -> Tick:
        now = self._clock.monotonic()
        if hold_s > 0:
            self._paused_until = max(self._paused_until, now + hold_s)
        idle = [n for n, seen in self._seen.items() if now - seen > idle_s]
        expired = 0
        for n in idle:
            del self._seen[n]
            self._admitted.pop(n, None)
            expired += self._waiting.pop(n, None) is not None
        self._expired_total += expired
        if expired:
            self._line, self._head = list(self._waiting), 0
        paused = self._slide(now)
        waits: list[float] = []
        gap = 1.0 / admit_per_s
        self._pace = self._paced_from(now)
        while (not paused and self._waiting and len(self._recent) < admit_per_s
               and self._pace <= now):
            self._pace += gap
            n = self._line[self._head]
            self._head += 1
            waits.append(now - self._waiting.pop(n))
            self._admitted[n] = self._clock.wall()
            self._recent.append(now)
        self._admitted_total += len(waits)
        if self._head > len(self._line) // 2:
            del self._line[:self._head]
            self._head = 0
        return Tick(expired, len(self._waiting), paused, len(self._recent), tuple(waits))

    async def totals(self) -> tuple[int, int, int]:
        return len(self._waiting), self._admitted_total, self._expired_total

    async def use_pass(self, pass_id: str, submission: str, most: int,
                       expires_at: float) -> bool:
        now = self._clock.wall()
        for gone in [p for p, (_, until) in self._passes.items() if until <= now]:
            del self._passes[gone]
        used, _ = self._passes.setdefault(pass_id, (set(), expires_at))
        if submission in used:
            return True
        if len(used) >= most:
            return False
        used.add(submission)
        return True

    def _paced_from(self, now: float) -> float:
        """When the next admission is due: a late step catches up, a quiet spell does not."""
        return now if self._pace < now - PACE_CREDIT_S else self._pace

    def _slide(self, now: float) -> bool:
        """Forget admissions older than a second; whether admissions are paused."""
        recent = self._recent
        while recent and recent[0] < now - 1.0:
            recent.popleft()
        return now < self._paused_until


class MemoryRoomControl:
    def __init__(self) -> None:
        self._version, self._data = 0, b"{}"

    async def overrides(self) -> tuple[int, bytes]:
        return self._version, self._data

    async def set_overrides(self, data: bytes) -> int:
        self._version, self._data = self._version + 1, data
        return self._version

    async def shared_secret(self, candidate: bytes) -> bytes:
        return candidate


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
