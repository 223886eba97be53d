"""The waiting room across processes: two gateway processes sharing one real Redis.

One line for the fleet (strict ticket order, admit_per_s fleet-wide), passes
honoured by every process (the signing secret is shared through Redis when none
is configured), settings and pauses reaching every process within a second,
and Redis down: new customers refused, passes still honoured.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from loadtest.harness import Gateway, RedisServer, Upstreams
from tests.app.test_waiting_room import Answer, assert_queued, order, poll
from tests.conftest import ADMIN_TOKEN

pytestmark = pytest.mark.slow

AVAILABILITY = "/v1/availability?address=x&product=y"


class Fleet:
    def __init__(self, log_dir: Path, room: dict[str, Any], **config: Any) -> None:
        self.sims = Upstreams(log_dir)
        self.redis = RedisServer(log_dir)
        self.gateways: list[Gateway] = []
        try:
            for _ in range(2):
                self.gateways.append(Gateway(
                    log_dir, self.sims.urls, env={"GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN},
                    config={"redis": {"url": self.redis.url}, "waiting_room": room, **config}))
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for gw in self.gateways:
            gw.stop()
        self.redis.stop()
        self.sims.proc.stop()


@pytest.fixture
def fleet_of(log_dir: Path) -> Iterator[Any]:
    started: list[Fleet] = []

    def start(room: dict[str, Any], **config: Any) -> Fleet:
        started.append(Fleet(log_dir, room, **config))
        return started[-1]

    yield start
    for fleet in started:
        fleet.stop()


def _breaker_state(gw: Gateway, name: str) -> str:
    found = gw.admin("GET", "/admin/breakers", ADMIN_TOKEN)["breakers"]
    return str(next(b["state"] for b in found if b["name"] == name))


def _number(ticket: str) -> int:
    return int(ticket.split(".", 1)[0])


# The line's guarantees hold on the shipped settings (50 a second, 60 s idle) and tuned ones.
@pytest.mark.parametrize("settings", [{}, {"admit_per_s": 4, "ticket_idle_s": 5}],
                         ids=["defaults", "tuned"])
async def test_one_line_for_the_fleet_in_ticket_order_at_the_fleet_rate(
        settings: dict[str, Any], fleet_of: Any, http: aiohttp.ClientSession) -> None:
    fleet = fleet_of({"enabled": True, "queue_all": True, **settings})
    rate = settings.get("admit_per_s", 50)
    a, b = fleet.gateways
    answers = await asyncio.gather(*(order(http, (a, b)[i % 2].url) for i in range(3 * rate)))
    tickets = sorted((assert_queued(x)["ticket"] for x in answers), key=_number)
    assert len({_number(t) for t in tickets}) == len(tickets), "numbers are unique fleet-wide"
    passes: dict[str, Answer] = {}
    started = time.monotonic()
    while len(passes) < len(tickets):
        assert time.monotonic() - started < 30, f"{len(passes)} of {len(tickets)} admitted"
        # Highest number first: admissions only grow, so if the line is kept, a ticket seen
        # admitted implies every lower one is admitted when polled after it.
        seen_admitted = False
        for i, ticket in enumerate(reversed(tickets)):
            answer = passes.get(ticket) or await poll(http, (a, b)[i % 2].url, ticket)
            assert answer.status == 200, answer
            admitted = answer.json["state"] == "admitted"
            assert admitted or not seen_admitted, f"{ticket} overtaken"
            seen_admitted |= admitted
            if admitted:
                passes[ticket] = answer
        await asyncio.sleep(0.2)
    # A pass expires pass_ttl_s after its admission (to the millisecond): no one-second
    # interval saw more than admit_per_s admissions, fleet-wide.
    times = sorted(datetime.fromisoformat(p.json["pass_expires_at"]).timestamp()
                   for p in passes.values())
    busiest = max(bisect.bisect_right(times, t + 1.0) - i for i, t in enumerate(times))
    assert busiest <= rate, busiest
    assert times[-1] - times[0] >= 2.0, "3 seconds' worth of customers took 2 s at least"
    # A pass from either process is honoured by the other; it is the client's own.
    granted = passes[tickets[0]].json["pass"]
    assert (await order(http, b.url, X_Queue_Pass=granted)).status == 201
    assert (await order(http, a.url, X_Queue_Pass=granted)).status == 201
    assert_queued(await order(http, a.url, client="other-app", X_Queue_Pass=granted))
    figures = a.admin("GET", "/admin/waiting-room", ADMIN_TOKEN)
    assert figures["waiting"] + figures["admitted_total"] == 3 * rate + 1, \
        "one new ticket (the foreign pass's), every ticket admitted once"


async def test_settings_changed_through_one_process_are_in_force_on_the_other_within_a_second(
        fleet_of: Any) -> None:
    fleet = fleet_of({})
    a, b = fleet.gateways
    changed = a.admin("PUT", "/admin/waiting-room", ADMIN_TOKEN,
                      {"enabled": True, "admit_per_s": 3, "routes": ["payment"]})
    assert changed["enabled"] and changed["admit_per_s"] == 3
    deadline = time.monotonic() + 1.0
    while b.admin("GET", "/admin/waiting-room", ADMIN_TOKEN)["settings"] != changed:
        assert time.monotonic() < deadline, "not on the other process within a second"
        time.sleep(0.05)
    # A later change wins everywhere, however the sync timers interleave.
    b.admin("PUT", "/admin/waiting-room", ADMIN_TOKEN, {"admit_per_s": 9})
    time.sleep(1.2)
    for gw in (a, b):
        assert gw.admin("GET", "/admin/waiting-room", ADMIN_TOKEN)["settings"]["admit_per_s"] == 9


async def test_a_breaker_tripped_on_one_process_pauses_admissions_on_every_process(
        fleet_of: Any, http: aiohttp.ClientSession) -> None:
    breaker = {"consecutive_failures": 3, "open_seconds": 4, "minimum_calls": 1000}
    fleet = fleet_of({"enabled": True, "admit_per_s": 100},
                     upstreams={"order": {"breaker": breaker}},
                     stale_cache={"max_entries": 0})
    a, b = fleet.gateways
    fleet.sims.set_faults("order", error_rate=1.0)
    for _ in range(3):
        assert (await order(http, a.url)).status == 502
    assert _breaker_state(a, "order") == "open"
    deadline = time.monotonic() + 1.5
    while True:
        answer = await order(http, b.url)
        if answer.status == 429:
            break
        assert time.monotonic() < deadline, f"B never paused: {answer}"
        await asyncio.sleep(0.1)
    queue = assert_queued(answer)
    assert queue["eta_s"] is None, "paused: no ETA"
    assert _breaker_state(b, "order") == "closed", "B's own breaker never saw a failure"
    # Past open_seconds the breaker lets probes through: the pause lapses, the line moves.
    fleet.sims.heal()
    deadline = time.monotonic() + 4 + 3
    while (await poll(http, b.url, queue["ticket"])).json["state"] != "admitted":
        assert time.monotonic() < deadline, "admissions never resumed"
        await asyncio.sleep(0.2)


async def test_with_redis_down_new_customers_get_503_and_passes_keep_working(
        fleet_of: Any, http: aiohttp.ClientSession) -> None:
    fleet = fleet_of({"enabled": True, "routes": ["GET /v1/availability"]})
    a, b = fleet.gateways
    headers = {"X-Client-ID": "shop-app"}
    async with http.get(a.url + AVAILABILITY, headers=headers) as resp:
        assert resp.status == 200
        granted = resp.headers["X-Queue-Pass"]
    fleet.redis.kill()
    for gw in (a, b):
        async with http.get(gw.url + AVAILABILITY, headers=headers) as resp:
            assert resp.status == 503 and (await resp.json())["code"] == "STATE_UNAVAILABLE"
        async with http.get(gw.url + AVAILABILITY,
                            headers={**headers, "X-Queue-Pass": granted}) as resp:
            assert resp.status == 200, "a pass is checked without Redis"
        assert (await poll(http, gw.url, "1.AAAAAAAAAAAAAAAAAAAAAA")).status == 404


# On the shipped settings, and paused over the start (the order breaker forced open), where
# every place stays still long enough to be compared between the processes.
@pytest.mark.parametrize("paused", [False, True], ids=["defaults", "paused-over-the-start"])
async def test_a_sale_scheduled_through_one_process_holds_both_and_is_drawn_once_for_both(
        paused: bool, fleet_of: Any, http: aiohttp.ClientSession) -> None:
    fleet = fleet_of({"enabled": True})
    a, b = fleet.gateways
    starts = datetime.now(UTC) + timedelta(seconds=3)
    a.admin("PUT", "/admin/waiting-room", ADMIN_TOKEN, {"sale_starts_at": starts.isoformat()})
    before = fleet.sims.stats("order")["requests"]
    # At once, on the other process too: it has not synced yet, but the line knows the sale.
    tickets: list[str] = []
    for i in range(30):
        answer = await order(http, (a, b)[i % 2].url)
        assert answer.status == 429 and answer.json["queue"]["position"] is None, answer
        tickets.append(answer.json["queue"]["ticket"])
    if paused:
        b.admin("POST", "/admin/breakers/order/open", ADMIN_TOKEN)
    assert fleet.sims.stats("order")["requests"] == before, "nobody let in before the start"
    await asyncio.sleep(max(0.0, starts.timestamp() - time.time()) + 0.5)
    events = a.admin("GET", "/admin/timeline", ADMIN_TOKEN)["events"]
    draws = [e for e in events if e.get("action") == "sale_drawn"]
    assert len(draws) == 1 and draws[0]["tickets"] == 30, draws
    if not paused:
        return  # let in at 50 a second: places move under the polls
    seen = [[(await poll(http, gw.url, t)).json for t in tickets] for gw in (a, b)]
    assert seen[0] == seen[1], "both processes see one draw"
    places = [s["position"] for s in seen[0]]
    assert sorted(places) == list(range(1, 31)) and places != sorted(places)
    assert all(s["eta_s"] is None for s in seen[0]), "drawn while paused: no ETA yet"
    # The pause ends: admission follows the draw.
    b.admin("POST", "/admin/breakers/order/reset", ADMIN_TOKEN)
    first = tickets[places.index(1)]
    deadline = time.monotonic() + 5
    while (await poll(http, a.url, first)).json["state"] != "admitted":
        assert time.monotonic() < deadline, "admissions never resumed"
        await asyncio.sleep(0.05)
