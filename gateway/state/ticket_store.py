"""The waiting room's line: tickets, admissions of the last second, the pause flag, and the
submissions each pass let through, for `waiting_room.py`.
"""

from __future__ import annotations

import bisect
import secrets
from collections import deque
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from gateway.contract.clock import Clock, SystemClock
from gateway.state.redis.connection import RedisConnection, Script, translated

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


class MemoryTicketQueue:
    """The line of one process (the Redis scripts below mirror each step)."""

    def __init__(self, clock: Clock | None = None) -> None:
        self._clock = clock or SystemClock()
        self._next = first_ticket_number(self._clock.wall())
        self._waiting: dict[int, float] = {}  # number -> issued at; insertion = number order
        # Waiting numbers in order from `_head` on, so a position is one bisection.
        self._line: list[int] = []
        self._head = 0
        self._admitted: dict[int, float] = {}  # number -> admitted at (wall)
        # number -> last poll or use, oldest first (a poll moves its ticket to the end), so
        # that a step finds the idle ones from the front without reading the whole line:
        # a sale's line holds hundreds of thousands, and a step runs 20 times a second.
        self._seen: dict[int, float] = {}
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
        del self._seen[number]
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
        idle = []
        for n, seen in self._seen.items():
            if now - seen <= idle_s:
                break
            idle.append(n)
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


# The waiting room's scripts share ROOM_KEYS (KEYS[1..9] in that order) and Redis's clock,
# and each mirrors one step of MemoryTicketQueue. `recent` keeps every admission of
# the last 1000 ms inclusive, so no closed one-second interval sees more than admit_per_s.
_ROOM_PRELUDE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', '(' .. (now - 1000))
local paused = redis.call('EXISTS', KEYS[6])
"""

# ARGV admit_per_s, queue_all (0/1), a member naming this admission uniquely. Numbering
# starts from the clock (store.first_ticket_number) whenever `seq` is missing.
_ENTER = Script.of(_ROOM_PRELUDE + """
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
_POLL = Script.of(_ROOM_PRELUDE + """
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
_TICK = Script.of(_ROOM_PRELUDE + """
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


PASS_KEY = "og:pass:{pass_id}"  # set: the submissions a pass let through, until it expires

# KEYS[1] the pass's set of submissions; ARGV submission, most, expiry (Unix ms).
_USE_PASS = Script.of("""
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then return 1 end
if redis.call('SCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('PEXPIREAT', KEYS[1], ARGV[3])
return 1
""")


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
        async with translated(), redis.pipeline(transaction=False) as pipe:
            pipe.zcard(ROOM_KEYS[0])
            pipe.hmget(ROOM_KEYS[7], ["admitted", "expired"])
            waiting, (admitted, expired) = await pipe.execute()
        return int(waiting), int(admitted or 0), int(expired or 0)
