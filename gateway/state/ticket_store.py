"""The waiting room's line: tickets, admissions of the last second, the pause flag, a
scheduled sale's pre-queue and its draw, and the submissions each pass let through, for
`waiting_room.py`.

A line is kept in the order it is admitted: a ticket's place is its rank there. Tickets
issued while a sale is scheduled take a *lot* instead of their number as their place: a
52-bit number from `secrets`, set below every ticket number, so the pre-queue sits ahead of
every later arrival in an order no client can know or sway. The draw at the start is then
a marker set once (the order was fixed, unseen, as the tickets came), so it cannot run
twice or lose a ticket however many processes reach it, and costs the same for a million
tickets as for ten. Tickets already waiting when a sale is scheduled are given lots then.
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


# A pre-queue ticket's place: a lot of this many random bits, less 2**LOT_BITS, so every
# lot is below zero and every ticket number above it (a Redis score holds both exactly).
LOT_BITS = 52


def lot() -> int:
    """A pre-queue place: uniform, from the system's secret source."""
    return secrets.randbits(LOT_BITS) - (1 << LOT_BITS)


@dataclass(frozen=True, slots=True)
class Sale:
    """A scheduled sale as one process's settings say: its start (Unix time; None: no sale)
    and the version of the settings that said so. A line takes a sale only from a newer
    version than the one it holds, so a process that has not yet seen a change cannot undo
    it; version 0 (the config file) is taken only by a line that holds none."""

    starts_at: float | None = None
    version: int = 0


NO_SALE = Sale()


@dataclass(frozen=True, slots=True)
class Entry:
    """A new customer at the waiting room's door: let in now (`ticket` None), or given
    ticket `ticket`, `position` in line (1 = next in)."""

    ticket: int | None
    position: int = 0  # 0 in a sale's pre-queue, where no place is known yet
    paused: bool = False
    due_s: float = 0.0  # until the next admission from the line is due (its pace)
    starts_in_s: float = 0.0  # > 0: in a sale's pre-queue, this long before its draw


class TicketState(StrEnum):
    WAITING = "waiting"
    ADMITTED = "admitted"
    GONE = "gone"  # lost its place (or never was): expired, or admitted and then left idle


@dataclass(frozen=True, slots=True)
class Ticket:
    state: TicketState
    position: int = 0  # WAITING: place in line, 1 = next in; 0 in a pre-queue
    admitted_at: float = 0.0  # ADMITTED: Unix time of the admission
    paused: bool = False
    due_s: float = 0.0  # WAITING: until the next admission from the line is due
    starts_in_s: float = 0.0  # WAITING: > 0 in a sale's pre-queue, until its draw


@dataclass(frozen=True, slots=True)
class Tick:
    """What one admission step did and saw."""

    expired: int  # waiting tickets that lost their place in this step
    waiting: int  # live waiting tickets after it
    paused: bool
    recent: int  # customers let in during the last second, this step's included
    waits: tuple[float, ...] = ()  # ticket-to-admission seconds of each ticket admitted
    starts_in_s: float = 0.0  # > 0: a sale is scheduled, its draw this far off
    drawn: int | None = None  # this step drew the sale: so many pre-queue tickets


class TicketQueue(Protocol):
    """The waiting room's line. Tickets are numbered in issue order; every step is atomic,
    and at most `admit_per_s` customers are let in during any one-second interval."""

    async def enter(self, admit_per_s: int, queue_all: bool) -> Entry:
        """Let a new customer in if nobody waits, there is room this second and admissions
        are neither paused nor held for everyone (`queue_all`); else issue a ticket."""

    async def poll(self, number: int, idle_s: float) -> Ticket:
        """A ticket's state; a live ticket's idle timer starts again."""

    async def tick(self, admit_per_s: int, idle_s: float, hold_s: float,
                   sale: Sale = NO_SALE) -> Tick:
        """One admission step, safe for every process to run on its own timer: take
        `sale` if newer than the line's, drop tickets idle longer than `idle_s`, draw a
        sale whose start has come (once), then, unless paused or before a sale's start,
        admit the first live places that fit this second, paced one every 1/admit_per_s
        seconds (see PACE_CREDIT_S). `hold_s` > 0 pauses admissions for that long."""

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
        self._lots: dict[int, int] = {}  # waiting number -> its lot (a sale's pre-queue)
        self._sale: float | None = None  # the sale's start (wall), None: no sale
        self._sale_version = -1  # the version of the settings the sale came from
        self._drawn = True  # the sale's start has been seen by a step (or there is none)

    async def enter(self, admit_per_s: int, queue_all: bool) -> Entry:
        now = self._clock.monotonic()
        paused = self._slide(now)
        starts_in = self._starts_in()
        if (not (paused or queue_all or self._waiting or starts_in)
                and len(self._recent) < admit_per_s):
            self._recent.append(now)
            self._pace = self._paced_from(now) + 1.0 / admit_per_s
            return Entry(None)
        self._next += 1
        number = self._next
        self._waiting[number] = self._seen[number] = now
        due = max(0.0, self._pace - now)
        if starts_in:
            self._lots[number] = lot()
            bisect.insort(self._line, number, lo=self._head, key=self._place)
            return Entry(number, 0, paused, due, starts_in)
        self._line.append(number)
        return Entry(number, len(self._waiting), paused, due)

    async def poll(self, number: int, idle_s: float) -> Ticket:
        now = self._clock.monotonic()
        seen = self._seen.get(number)
        if seen is None or now - seen > idle_s:
            return Ticket(TicketState.GONE)
        del self._seen[number]
        self._seen[number] = now
        if number in self._admitted:
            return Ticket(TicketState.ADMITTED, admitted_at=self._admitted[number])
        paused, due = now < self._paused_until, max(0.0, self._pace - now)
        if starts_in := self._starts_in():
            return Ticket(TicketState.WAITING, 0, paused=paused, due_s=due,
                          starts_in_s=starts_in)
        position = bisect.bisect_right(self._line, self._place(number), lo=self._head,
                                       key=self._place) - self._head
        return Ticket(TicketState.WAITING, position, paused=paused, due_s=due)

    async def tick(self, admit_per_s: int, idle_s: float, hold_s: float,
                   sale: Sale = NO_SALE) -> Tick:
        now = self._clock.monotonic()
        self._schedule(sale)
        if hold_s > 0:
            self._paused_until = max(self._paused_until, now + hold_s)
        expired = self._expire(now, idle_s)
        paused = self._slide(now)
        drawn = None
        starts_in = self._starts_in()
        if not (starts_in or self._drawn):
            self._drawn = True
            drawn = len(self._lots)
        waits: list[float] = []
        gap = 1.0 / admit_per_s
        self._pace = self._paced_from(now)
        while (not (paused or starts_in) and self._waiting
               and len(self._recent) < admit_per_s and self._pace <= now):
            self._pace += gap
            n = self._line[self._head]
            self._head += 1
            waits.append(now - self._waiting.pop(n))
            self._lots.pop(n, None)
            self._admitted[n] = self._clock.wall()
            self._recent.append(now)
        self._admitted_total += len(waits)
        if self._head > len(self._line) // 2:
            del self._line[:self._head]
            self._head = 0
        return Tick(expired, len(self._waiting), paused, len(self._recent), tuple(waits),
                    starts_in, drawn)

    def _expire(self, now: float, idle_s: float) -> int:
        """Drop the tickets idle longer than `idle_s`: how many of them were waiting."""
        idle = []
        for n, seen in self._seen.items():
            if now - seen <= idle_s:
                break
            idle.append(n)
        expired = 0
        for n in idle:
            del self._seen[n]
            self._admitted.pop(n, None)
            self._lots.pop(n, None)
            expired += self._waiting.pop(n, None) is not None
        self._expired_total += expired
        if expired:
            waiting = self._waiting
            self._line = [n for n in self._line[self._head:] if n in waiting]
            self._head = 0
        return expired

    def _schedule(self, sale: Sale) -> None:
        """Take a newer sale. A start still to come makes every waiting ticket part of its
        pre-queue (a new lot each: a second sale draws anew)."""
        if sale.version <= self._sale_version or (sale.version == 0 and sale.starts_at is None):
            return
        self._sale_version = sale.version
        if sale.starts_at == self._sale:
            return
        self._sale = sale.starts_at
        # A start brought forward to now (or called off) before the draw: drawn at once.
        if self._starts_in():
            self._drawn = False
            self._lots = {n: lot() for n in self._waiting}
            self._line, self._head = sorted(self._waiting, key=self._place), 0

    def _place(self, number: int) -> int:
        """Where a waiting ticket stands in line: its lot, or else its number."""
        return self._lots.get(number, number)

    def _starts_in(self) -> float:
        """Seconds until the scheduled sale's start; 0 with none to come."""
        if self._sale is None:
            return 0.0
        return max(0.0, self._sale - self._clock.wall())

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
    "og:{wr}:sale",  # hash: starts (ms, 0: none), version, drawn (0/1): the scheduled sale
)


# The waiting room's scripts share ROOM_KEYS (KEYS[1..10] in that order) and Redis's clock,
# and each mirrors one step of MemoryTicketQueue. `recent` keeps every admission of
# the last 1000 ms inclusive, so no closed one-second interval sees more than admit_per_s.
# `waiting` is scored by place: a pre-queue ticket's lot (below 0), else its number.
# `starts_in` is the time (ms) to a scheduled sale's start, 0 when none is to come.
_ROOM_PRELUDE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', '(' .. (now - 1000))
local paused = redis.call('EXISTS', KEYS[6])
local starts_in = math.max(0, tonumber(redis.call('HGET', KEYS[10], 'starts') or 0) - now)
"""

# ARGV admit_per_s, queue_all (0/1), a member naming this admission uniquely, a lot (the
# place, should the ticket join a pre-queue). Numbering starts from the clock
# (store.first_ticket_number) whenever `seq` is missing.
_ENTER = Script.of(_ROOM_PRELUDE + """
local waiting = redis.call('ZCARD', KEYS[1])
if paused == 0 and ARGV[2] == '0' and waiting == 0 and starts_in == 0
   and redis.call('ZCARD', KEYS[5]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[5], now, ARGV[3])
  local pace = tonumber(redis.call('GET', KEYS[9]) or 0)
  if pace < now - 200 then pace = now end
  redis.call('SET', KEYS[9], string.format('%.3f', pace + 1000 / tonumber(ARGV[1])))
  return {0, 0, 0, 0, 0}
end
if redis.call('EXISTS', KEYS[7]) == 0 then
  redis.call('SET', KEYS[7], string.format('%.0f', now * NUMBERS_A_MS))
end
local n = redis.call('INCR', KEYS[7])
local position = waiting + 1
if starts_in > 0 then
  redis.call('ZADD', KEYS[1], ARGV[4], n)
  position = 0
else
  redis.call('ZADD', KEYS[1], n, n)
end
redis.call('ZADD', KEYS[3], now, n)
redis.call('HSET', KEYS[4], n, now)
local due = math.max(0, tonumber(redis.call('GET', KEYS[9]) or 0) - now)
return {n, position, paused, math.floor(due), starts_in}
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
if starts_in > 0 then rank = -1 end
return {'waiting', rank + 1, paused, math.floor(due), starts_in}
""")

# ARGV admit_per_s, idle_ms, hold_ms (0: no pause from this caller), the caller's sale: its
# start (ms, 0: none), the version it came from, and a secret seed for new lots. Tickets
# waiting when a sale to come is taken get lots from the seed (the first 52 bits of a SHA-1
# of seed and number: unknowable without the seed, which never leaves the caller). Tickets
# are paced one every 1000/admit_per_s ms; a step that comes late catches up at most 200 ms
# of them (store.PACE_CREDIT_S), and after a quiet spell the pace starts again from now, so
# the customers admitted reach the backend evenly, not in a lump each time the second slides.
_TICK = Script.of(_ROOM_PRELUDE + """
local sale = redis.call('HMGET', KEYS[10], 'version', 'starts', 'drawn')
local version = tonumber(ARGV[5])
if (sale[1] == false and (version > 0 or ARGV[4] ~= '0'))
   or (sale[1] and version > tonumber(sale[1])) then
  redis.call('HSET', KEYS[10], 'version', version)
  if (sale[2] or '0') ~= ARGV[4] then
    starts_in = math.max(0, tonumber(ARGV[4]) - now)
    if starts_in > 0 then sale[3] = '0' elseif sale[3] ~= '0' then sale[3] = '1' end
    redis.call('HSET', KEYS[10], 'starts', ARGV[4], 'drawn', sale[3])
    if starts_in > 0 then
      for _, n in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
        local lot = tonumber(string.sub(redis.sha1hex(ARGV[6] .. n), 1, LOT_HEX), 16)
        redis.call('ZADD', KEYS[1], string.format('%.0f', lot - LOT_SPAN), n)
      end
    end
  end
end
local drawn = -1
if starts_in == 0 and sale[3] == '0' then
  redis.call('HSET', KEYS[10], 'drawn', 1)
  drawn = redis.call('ZCOUNT', KEYS[1], '-inf', '(0')
end
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
if paused == 0 and starts_in == 0 then
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
return {expired, redis.call('ZCARD', KEYS[1]), paused, redis.call('ZCARD', KEYS[5]), waits,
        starts_in, drawn}
""".replace("LOT_HEX", str(LOT_BITS // 4)).replace("LOT_SPAN", str(1 << LOT_BITS)))


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
        number, position, paused, due, starts_in = await self._connection.eval(
            _ENTER, ROOM_KEYS, admit_per_s, int(queue_all), secrets.token_hex(8), lot(),
            repeatable=False)
        return Entry(number or None, position, bool(paused), int(due) / 1000,
                     int(starts_in) / 1000)

    async def poll(self, number: int, idle_s: float) -> Ticket:
        # Repeatable: it only reads and restarts the idle timer.
        answer = await self._connection.eval(_POLL, ROOM_KEYS, number, int(idle_s * 1000),
                                             repeatable=True)
        state = TicketState(answer[0].decode())
        if state is TicketState.ADMITTED:
            return Ticket(state, admitted_at=int(answer[1]) / 1000)
        if state is TicketState.WAITING:
            return Ticket(state, int(answer[1]), paused=bool(answer[2]),
                          due_s=int(answer[3]) / 1000, starts_in_s=int(answer[4]) / 1000)
        return Ticket(state)

    async def tick(self, admit_per_s: int, idle_s: float, hold_s: float,
                   sale: Sale = NO_SALE) -> Tick:
        starts = 0 if sale.starts_at is None else round(sale.starts_at * 1000)
        expired, waiting, paused, recent, waits, starts_in, drawn = await self._connection.eval(
            _TICK, ROOM_KEYS, admit_per_s, int(idle_s * 1000), int(hold_s * 1000), starts,
            sale.version, secrets.token_hex(16), repeatable=False)
        return Tick(expired, waiting, bool(paused), recent,
                    tuple(int(w) / 1000 for w in waits), int(starts_in) / 1000,
                    None if drawn < 0 else int(drawn))

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
