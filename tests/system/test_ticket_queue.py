"""The waiting room's line (`store.TicketQueue`), one behaviour suite run against memory and
a real redis-server; and the pure parts of the room (tokens, poll interval).

Real (short) time: the Redis line keeps time by Redis's own clock.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.pipeline.queue_tokens import QueueTokens
from gateway.pipeline.waiting_room import (
    DRAW_SPREAD_S,
    MAX_POLL_S,
    poll_after_s,
    pre_queue_poll_s,
)
from gateway.state.room_store import RoomControl
from gateway.state.stores import Stores, redis_stores
from gateway.state.ticket_store import (
    ROOM_KEYS,
    MemoryTicketQueue,
    Sale,
    TicketQueue,
    TicketState,
)
from loadtest.flash_sale import kendall_tau
from loadtest.harness import RedisServer

LONG_IDLE_S = 60.0


@pytest.fixture
def queue(stores: Stores) -> TicketQueue:
    return stores.queue


async def test_customers_go_straight_in_until_the_second_is_full_then_take_numbers(
        queue: TicketQueue) -> None:
    assert [(await queue.enter(3, False)).ticket for _ in range(3)] == [None] * 3
    first, second = await queue.enter(3, False), await queue.enter(3, False)
    assert first.ticket is not None and second.ticket == first.ticket + 1
    assert (first.position, second.position) == (1, 2)
    assert not first.paused
    assert await queue.totals() == (2, 0, 0)


async def test_queue_all_gives_everyone_a_ticket(queue: TicketQueue) -> None:
    assert (await queue.enter(100, True)).ticket is not None


async def test_nobody_overtakes_a_waiting_ticket(queue: TicketQueue) -> None:
    ticket = (await queue.enter(5, True)).ticket
    # Room this second, but someone waits: the newcomer queues behind.
    later = await queue.enter(5, False)
    assert later.ticket is not None and ticket is not None and later.ticket > ticket
    assert later.position == 2


async def test_ticks_admit_the_lowest_numbers_and_never_more_than_the_rate_in_a_second(
        queue: TicketQueue) -> None:
    numbers = [(await queue.enter(3, True)).ticket for _ in range(7)]
    started = time.monotonic()
    admitted: list[int] = []
    while len(admitted) < 7 and time.monotonic() - started < 5:
        tick = await queue.tick(3, LONG_IDLE_S, 0)
        assert tick.recent <= 3
        for n in numbers:
            assert n is not None
            if n not in admitted and (await queue.poll(n, LONG_IDLE_S)).state \
                    is TicketState.ADMITTED:
                admitted.append(n)
        # Admitted so far are always the lowest numbers: a prefix of the line.
        assert admitted == numbers[:len(admitted)]
        await asyncio.sleep(0.05)
    assert admitted == numbers
    assert time.monotonic() - started > 2.0, "7 at 3 a second take three seconds' room"
    waiting, admitted_total, _ = await queue.totals()
    assert (waiting, admitted_total) == (0, 7)


async def test_a_waiting_ticket_knows_its_place_and_an_admitted_one_when(
        queue: TicketQueue) -> None:
    a, b = (await queue.enter(1, True)).ticket, (await queue.enter(1, True)).ticket
    assert a is not None and b is not None
    assert (await queue.poll(b, LONG_IDLE_S)).position == 2
    before = time.time()
    tick = await queue.tick(1, LONG_IDLE_S, 0)
    assert len(tick.waits) == 1 and tick.waiting == 1
    ticket = await queue.poll(a, LONG_IDLE_S)
    assert ticket.state is TicketState.ADMITTED
    assert before - 1 <= ticket.admitted_at <= time.time() + 1
    assert (await queue.poll(b, LONG_IDLE_S)).position == 1


async def test_an_idle_ticket_loses_its_place_and_takes_no_admission(
        queue: TicketQueue) -> None:
    idle_s = 0.4
    lapsing, kept = (await queue.enter(1, True)).ticket, (await queue.enter(1, True)).ticket
    assert lapsing is not None and kept is not None
    for _ in range(3):
        await asyncio.sleep(0.2)
        assert (await queue.poll(kept, idle_s)).state is TicketState.WAITING
    # Gone on a poll even before a tick drops it; then the tick counts it.
    assert (await queue.poll(lapsing, idle_s)).state is TicketState.GONE
    tick = await queue.tick(1, idle_s, 0)
    assert tick.expired == 1
    assert (await queue.poll(kept, idle_s)).state is TicketState.ADMITTED
    assert await queue.totals() == (0, 1, 1)
    assert (await queue.poll(123_456, idle_s)).state is TicketState.GONE


async def test_idleness_follows_the_last_poll_not_the_ticket_number(
        queue: TicketQueue) -> None:
    """The first ticket, kept alive, does not shield a later one that lapses: each step
    finds idle tickets by when they were last seen (the memory line keeps them in that
    order, so that a step never reads the whole line)."""
    idle_s = 0.4
    kept, lapsing = (await queue.enter(1, True)).ticket, (await queue.enter(1, True)).ticket
    last = (await queue.enter(1, True)).ticket
    assert kept is not None and lapsing is not None and last is not None
    for _ in range(3):
        await asyncio.sleep(0.2)
        assert (await queue.poll(kept, idle_s)).state is TicketState.WAITING
        assert (await queue.poll(last, idle_s)).state is TicketState.WAITING
    tick = await queue.tick(1, idle_s, 0)
    assert tick.expired == 1
    assert (await queue.poll(lapsing, idle_s)).state is TicketState.GONE
    assert (await queue.poll(kept, idle_s)).state is TicketState.ADMITTED
    assert (await queue.poll(last, idle_s)).position == 1, "the lapsed place is closed up"


async def test_a_hold_pauses_admissions_and_queues_everyone_until_it_lapses(
        queue: TicketQueue) -> None:
    waiting = (await queue.enter(10, True)).ticket
    assert waiting is not None
    tick = await queue.tick(10, LONG_IDLE_S, hold_s=0.5)
    assert tick.paused and not tick.waits
    entry = await queue.enter(10, False)
    assert entry.ticket is not None and entry.paused
    assert (await queue.poll(waiting, LONG_IDLE_S)).paused
    await asyncio.sleep(0.7)
    tick = await queue.tick(10, LONG_IDLE_S, 0)
    assert not tick.paused and len(tick.waits) == 1, "paced: one now, the next 0.1 s later"
    await asyncio.sleep(0.15)
    assert len((await queue.tick(10, LONG_IDLE_S, 0)).waits) == 1


async def test_room_settings_keep_a_version_and_one_secret(stores: Stores) -> None:
    control: RoomControl = stores.room
    assert await control.overrides() == (0, b"{}")
    first = await control.set_overrides(b'{"enabled": true}')
    second = await control.set_overrides(b'{"enabled": false}')
    assert second > first
    assert await control.overrides() == (second, b'{"enabled": false}')
    secret = await control.shared_secret(b"a" * 32)
    if stores.shared:  # every process gets the first one offered
        assert await control.shared_secret(b"b" * 32) == secret == b"a" * 32


def test_tickets_and_passes_are_bound_to_their_client_and_unforgeable() -> None:
    tokens = QueueTokens(b"s" * 32)
    ticket = tokens.ticket(42, "shop-app")
    assert tokens.ticket_number(ticket, "shop-app") == 42
    assert tokens.ticket_number(ticket, "other-app") is None
    assert QueueTokens(b"t" * 32).ticket_number(ticket, "shop-app") is None
    assert tokens.ticket_number("43" + ticket[2:], "shop-app") is None
    passes = tokens.make_pass(2_000_000_000, "shop-app")
    assert tokens.pass_valid(passes, "shop-app", now=1_999_999_999)
    assert not tokens.pass_valid(passes, "shop-app", now=2_000_000_000)
    assert not tokens.pass_valid(passes, "other-app", now=0)
    assert tokens.ticket_number(passes, "shop-app") is None, "a pass is no ticket"
    for junk in ("", ".", "x.y", "+1.abc", "١٢.abc", "1" * 100, "1.", None):
        assert tokens.ticket_number(junk, "shop-app") is None
        assert not tokens.pass_valid(junk, "shop-app", now=0)


@settings(max_examples=300, derandomize=True)
@given(junk=st.text(max_size=80), scope=st.text(max_size=20))
def test_any_text_is_no_ticket_and_no_pass_and_never_an_error(junk: str, scope: str) -> None:
    """Non-ASCII and malformed bytes (`1.é`, a NUL, a lone surrogate) are answered like any
    unknown value, never by an exception (a 500 at the route)."""
    tokens = QueueTokens(b"s" * 32)
    assert tokens.ticket_number(junk, scope) is None or junk.isascii()
    tokens.pass_valid(junk, scope, now=0)
    valid = tokens.ticket(7, "shop-app")
    for odd in (valid + "é", "é" + valid, valid[:-1] + "é", "7.é", "7." + "\udcff"):
        assert tokens.ticket_number(odd, "shop-app") is None
        assert not tokens.pass_valid(odd, "shop-app", now=0)


def test_a_pre_queue_polls_again_by_just_after_the_draw() -> None:
    assert pre_queue_poll_s(3600, 60) == MAX_POLL_S, "the usual pace through a countdown"
    firsts = {pre_queue_poll_s(3, 60) for _ in range(200)}
    assert firsts == set(range(3, 3 + DRAW_SPREAD_S + 1)), "spread just after the start"


def test_polls_come_often_enough_to_keep_a_place() -> None:
    assert poll_after_s(0, 60) == 1
    assert poll_after_s(20, 60) == 4
    assert poll_after_s(10_000, 60) == MAX_POLL_S
    assert poll_after_s(10_000, 6) == 2, "a third of the idle time at most"
    assert poll_after_s(None, 60) == MAX_POLL_S


async def test_after_the_first_second_tickets_are_admitted_evenly_not_in_lumps(
        queue: TicketQueue) -> None:
    numbers = [(await queue.enter(3, True)).ticket for _ in range(6)]
    admitted_at: dict[int, float] = {}
    started = time.monotonic()
    while len(admitted_at) < 6 and time.monotonic() - started < 5:
        await queue.tick(3, LONG_IDLE_S, 0)
        for n in numbers:
            assert n is not None
            ticket = await queue.poll(n, LONG_IDLE_S)
            if ticket.state is TicketState.ADMITTED:
                admitted_at.setdefault(n, ticket.admitted_at)
        await asyncio.sleep(0.02)
    times = [admitted_at[n] for n in numbers if n is not None]
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    # One every third of a second: lumps of three (the sliding second alone) would give
    # gaps of 0, 0, 1, 0, 0.
    assert all(gap >= 0.25 for gap in gaps), gaps


async def _a_ticket(queue: TicketQueue) -> int:
    number = (await queue.enter(1, True)).ticket
    assert number is not None
    return number


async def test_a_line_started_afresh_never_takes_an_old_ticket_for_a_new_one(
        log_dir: Path) -> None:
    """A Redis that lost its data (killed, restarted without persistence) starts the line
    again: the tickets signed before the loss name no ticket issued after it."""
    server = RedisServer(log_dir)
    stores = redis_stores(server.url, timeout_s=0.5)
    try:
        await stores.upkeep()
        before = [await _a_ticket(stores.queue) for _ in range(3)]
        server.restart()
        for number in before:  # a poll is repeatable: sent again on the new connection
            assert (await stores.queue.poll(number, LONG_IDLE_S)).state is TicketState.GONE
        after = [await _a_ticket(stores.queue) for _ in range(3)]
        assert min(after) > max(before)
        for number in before:
            assert (await stores.queue.poll(number, LONG_IDLE_S)).state is TicketState.GONE
        assert (await stores.queue.poll(after[0], LONG_IDLE_S)).state is TicketState.WAITING
    finally:
        await stores.close()
        server.stop()


async def test_a_restarted_process_numbers_its_line_above_the_one_before() -> None:
    line = MemoryTicketQueue()
    before = [await _a_ticket(line) for _ in range(3)]
    await asyncio.sleep(0.002)
    after = MemoryTicketQueue()
    assert await _a_ticket(after) > max(before)
    assert (await after.poll(before[0], LONG_IDLE_S)).state is TicketState.GONE


async def test_a_pass_lets_through_so_many_submissions_and_each_again(
        queue: TicketQueue) -> None:
    pass_id, expires_at = f"pass-{time.monotonic_ns()}", time.time() + 60
    assert [await queue.use_pass(pass_id, f"k{n}", 3, expires_at) for n in range(5)] == [
        True, True, True, False, False]
    assert await queue.use_pass(pass_id, "k1", 3, expires_at), "a resubmission goes"
    assert not await queue.use_pass(pass_id, "k3", 3, expires_at), "a refused one stays so"
    assert await queue.use_pass(pass_id + "-other", "k9", 3, expires_at), "each pass its own"


# -- a scheduled sale: the pre-queue and its draw -------------------------------------------

# How long the steps of `until_sale` pause admissions, so that the draw is seen before the
# first admission from it.
DRAW_HOLD_S = 0.3


async def until_sale(queue: TicketQueue, sale: Sale, hold_s: float = DRAW_HOLD_S) -> int:
    """Step the line (admissions paused) until the sale's start; how many tickets it drew."""
    assert sale.starts_at is not None
    while True:
        tick = await queue.tick(1, LONG_IDLE_S, hold_s, sale)
        if tick.drawn is not None:
            assert not tick.starts_in_s
            return tick.drawn
        assert tick.starts_in_s > 0 and not tick.waits, "nobody is let in before the start"
        await asyncio.sleep(0.02)


async def places(queue: TicketQueue, numbers: list[int]) -> list[int]:
    return [(await queue.poll(n, LONG_IDLE_S)).position for n in numbers]


async def test_before_a_sale_everyone_takes_a_pre_queue_ticket_with_no_place(
        queue: TicketQueue) -> None:
    sale = Sale(time.time() + 30, version=1)
    await queue.tick(100, LONG_IDLE_S, 0, sale)
    entry = await queue.enter(100, False)  # room to spare, nobody waiting: still a ticket
    assert entry.ticket is not None and entry.position == 0
    assert 28 < entry.starts_in_s <= 30
    ticket = await queue.poll(entry.ticket, LONG_IDLE_S)
    assert (ticket.state, ticket.position) == (TicketState.WAITING, 0)
    assert 28 < ticket.starts_in_s <= 30
    tick = await queue.tick(100, LONG_IDLE_S, 0, sale)
    assert not tick.waits and tick.waiting == 1 and tick.drawn is None
    assert 28 < tick.starts_in_s <= 30


async def test_at_the_start_the_pre_queue_is_drawn_once_at_random_and_later_ones_queue_behind(
        queue: TicketQueue) -> None:
    sale = Sale(time.time() + 1.0, version=1)
    await queue.tick(1, LONG_IDLE_S, 0, sale)
    early = [(await queue.enter(1, False)).ticket for _ in range(120)]
    assert all(n is not None for n in early)
    numbers = [n for n in early if n is not None]
    assert await until_sale(queue, sale) == 120
    # A second step, or a retry of the same one, finds it drawn: no second draw.
    assert (await queue.tick(1, LONG_IDLE_S, 0, sale)).drawn is None
    later = [(await queue.enter(1, False)).ticket for _ in range(3)]
    drawn = await places(queue, numbers)
    assert sorted(drawn) == list(range(1, 121)), "ranks of the draw, every ticket kept"
    assert abs(kendall_tau(drawn)) < 0.3, "the draw is unrelated to the arrival order"
    assert [e.position for e in [await queue.poll(n, LONG_IDLE_S) for n in later
                                 if n is not None]] == [121, 122, 123]
    # Admitted in the drawn order: the first in the draw goes first.
    first = numbers[drawn.index(1)]
    await asyncio.sleep(DRAW_HOLD_S + 0.05)
    await queue.tick(1, LONG_IDLE_S, 0, sale)
    assert (await queue.poll(first, LONG_IDLE_S)).state is TicketState.ADMITTED
    assert sorted(await places(queue, [n for n in numbers if n != first])) == list(
        range(1, 120))


async def test_tickets_waiting_when_a_sale_is_scheduled_join_its_pre_queue(
        queue: TicketQueue) -> None:
    waiting = [(await queue.enter(1, True)).ticket for _ in range(60)]
    numbers = [n for n in waiting if n is not None]
    assert await places(queue, numbers) == list(range(1, 61))
    sale = Sale(time.time() + 0.8, version=3)
    tick = await queue.tick(1, LONG_IDLE_S, 0, sale)
    assert not tick.waits and tick.starts_in_s > 0
    assert await places(queue, numbers) == [0] * 60
    assert await until_sale(queue, sale) == 60
    drawn = await places(queue, numbers)
    assert sorted(drawn) == list(range(1, 61)) and drawn != list(range(1, 61))


async def test_the_draw_happens_at_the_start_even_while_admissions_are_paused(
        queue: TicketQueue) -> None:
    sale = Sale(time.time() + 0.6, version=1)
    await queue.tick(5, LONG_IDLE_S, 0, sale)
    numbers = [(await queue.enter(5, False)).ticket for _ in range(4)]
    assert await until_sale(queue, sale, hold_s=1.0) == 4
    tick = await queue.tick(5, LONG_IDLE_S, 1.0, sale)
    assert tick.paused and not tick.waits, "admission in the drawn order waits for the pause"
    assert sorted(await places(queue, [n for n in numbers if n is not None])) == [1, 2, 3, 4]


async def test_an_older_settings_version_never_undoes_a_sale(queue: TicketQueue) -> None:
    sale = Sale(time.time() + 30, version=5)
    await queue.tick(10, LONG_IDLE_S, 0, sale)
    # A process that has not yet seen version 5 (or has no sale in its config file).
    for stale in (Sale(None, version=4), Sale(None, version=0), Sale(time.time(), 0)):
        assert (await queue.tick(10, LONG_IDLE_S, 0, stale)).starts_in_s > 0
    assert (await queue.enter(10, False)).starts_in_s > 0
    # Called off by a newer version: the line admits again.
    await queue.tick(10, LONG_IDLE_S, 0, Sale(None, version=6))
    assert (await queue.enter(10, False)).starts_in_s == 0


async def test_a_second_sale_draws_anew(queue: TicketQueue) -> None:
    first = Sale(time.time() + 0.5, version=1)
    await queue.tick(1, LONG_IDLE_S, 0, first)
    numbers = [n for n in [(await queue.enter(1, False)).ticket for _ in range(80)]
               if n is not None]
    await until_sale(queue, first)
    after_first = await places(queue, numbers)
    second = Sale(time.time() + 0.5, version=2)
    await queue.tick(1, LONG_IDLE_S, 0, second)
    assert await places(queue, numbers) == [0] * 80
    assert await until_sale(queue, second) == 80
    after_second = await places(queue, numbers)
    assert sorted(after_second) == list(range(1, 81)) and after_second != after_first


async def test_one_draw_for_every_process_that_reaches_the_start(
        redis_server: RedisServer) -> None:
    """Two lines on one Redis (as two processes have) step at the start together: one of
    them draws, and both then see the same order."""
    client = aioredis.Redis.from_url(redis_server.url)
    await client.delete(*ROOM_KEYS)
    await client.aclose()
    a, b = redis_stores(redis_server.url, timeout_s=1.0), redis_stores(redis_server.url,
                                                                        timeout_s=1.0)
    try:
        sale = Sale(time.time() + 0.5, version=1)
        await a.queue.tick(1, LONG_IDLE_S, 0, sale)
        numbers = [n for n in [(await b.queue.enter(1, False)).ticket for _ in range(30)]
                   if n is not None]
        draws: list[int] = []
        while not draws:
            ticks = await asyncio.gather(*(q.tick(1, LONG_IDLE_S, 0, sale)
                                           for q in (a.queue, b.queue) for _ in range(5)))
            draws = [t.drawn for t in ticks if t.drawn is not None]
            await asyncio.sleep(0.01)
        assert draws == [30]
        assert await places(a.queue, numbers) == await places(b.queue, numbers)
    finally:
        await a.close()
        await b.close()
