"""A scheduled sale (docs/api.md, "Scheduled sales"), in-process in front of the real
simulators: the pre-queue before `sale_starts_at`, the draw by lot at the start, and the
admin API, status and timeline that show it. The line's own behaviour (memory and Redis,
one draw for many processes) is in tests/system/test_ticket_queue.py; two processes
sharing Redis in tests/system/test_waiting_room_fleet.py.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest

from gateway.contract.clock import iso_utc
from gateway.pipeline.waiting_room import DRAW_SPREAD_S
from loadtest.flash_sale import kendall_tau
from loadtest.harness import Upstreams
from tests.app.test_waiting_room import (
    Answer,
    admin,
    assert_queued,
    order,
    poll,
    room,
)
from tests.conftest import StartApp

PRE_QUEUE_KEYS = {"ticket", "position", "eta_s", "starts_in_s", "poll_after_s"}


def in_s(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()


def assert_pre_queued(answer: Answer) -> dict[str, Any]:
    assert answer.status == 429 and answer.code == "QUEUED", answer
    queue: dict[str, Any] = answer.json["queue"]
    assert set(queue) == PRE_QUEUE_KEYS
    assert queue["position"] is None and queue["eta_s"] is None
    assert isinstance(queue["starts_in_s"], int) and queue["starts_in_s"] >= 1
    assert answer.headers["Retry-After"] == str(queue["poll_after_s"])
    # The next poll comes by just after the draw at the latest, to learn the place at once.
    assert 1 <= queue["poll_after_s"] <= queue["starts_in_s"] + DRAW_SPREAD_S
    return queue


async def states(http: aiohttp.ClientSession, url: str,
                 tickets: list[str]) -> list[dict[str, Any]]:
    answers = [await poll(http, url, t) for t in tickets]
    assert all(a.status == 200 for a in answers), answers
    return [a.json for a in answers]


async def until_started(starts_at: float) -> None:
    await asyncio.sleep(max(0.0, starts_at - time.time()) + 0.3)  # the draw's step, too


# With the shipped settings (only the room turned on) and with a slow room whose order of
# admission can be watched.
@pytest.mark.parametrize("tuned", [{}, {"admit_per_s": 5}], ids=["defaults", "slow-room"])
async def test_before_the_start_nobody_is_let_in_then_the_pre_queue_goes_in_drawn_order(
        gateway_app: StartApp, healthy: Upstreams, http: aiohttp.ClientSession,
        tuned: dict[str, Any]) -> None:
    sale = in_s(2.5)
    starts_at = datetime.fromisoformat(sale).timestamp()
    gw = await gateway_app(room(sale_starts_at=sale, **tuned))
    before = healthy.stats("order")["requests"]
    early = [assert_pre_queued(await order(http, gw))["ticket"] for _ in range(25)]
    waiting = await poll(http, gw, early[0])
    assert waiting.status == 200 and waiting.json["state"] == "waiting"
    assert set(waiting.json) == {"state", "position", "eta_s", "starts_in_s", "poll_after_s"}
    assert waiting.json["position"] is None and waiting.json["starts_in_s"] >= 1
    # A resubmission with the ticket is held too: nothing covered goes through before.
    again = await order(http, gw, X_Queue_Ticket=early[1])
    assert assert_pre_queued(again)["ticket"] == early[1]
    async with http.get(gw.url + "/v1/status") as resp:
        shown = (await resp.json())["waiting_room"]
    assert (shown["queueing"], shown["eta_s"]) == (True, None)
    assert shown["sale_starts_at"] == iso_utc(starts_at)
    assert healthy.stats("order")["requests"] == before, "nothing reached the backend"

    await until_started(starts_at)
    first_look = await states(http, gw.url, early)
    drawn = {t: s["position"] for t, s in zip(early, first_look, strict=True)
             if s["state"] == "waiting"}
    # The places left are ranks 1..k of the draw (those before them are in already).
    assert sorted(drawn.values()) == list(range(1, len(drawn) + 1))
    later = assert_queued(await order(http, gw))
    assert later["position"] > len(drawn) - 5, "later arrivals queue behind the pre-queue"
    if not tuned:
        return
    assert len(drawn) >= 20, "five a second: the first steps let in the first few only"
    assert abs(kendall_tau(list(drawn.values()))) < 0.6, "unrelated to the arrival order"
    deadline = time.monotonic() + 5
    while True:
        now_in = {t for t, s in zip(early, await states(http, gw.url, early), strict=True)
                  if s["state"] == "admitted" and t in drawn}
        if len(now_in) >= 3 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    # Admitted in the drawn order: whoever is in, everyone drawn before them is too.
    assert {drawn[t] for t in now_in} == set(range(1, len(now_in) + 1))


async def test_the_draw_is_on_the_timeline_once(
        gateway_app: StartApp, healthy: Upstreams, http: aiohttp.ClientSession) -> None:
    gw = await gateway_app(room(admit_per_s=5))
    starts_at = time.time() + 1.5
    changed = await admin(http, gw, "PUT", "/admin/waiting-room",
                          {"sale_starts_at": in_s(1.5)})
    assert changed.status == 200 and changed.json["sale_starts_at"].endswith("Z")
    for _ in range(7):
        assert_pre_queued(await order(http, gw))
    await until_started(starts_at)
    events = (await admin(http, gw, "GET", "/admin/timeline")).json["events"]
    draws = [e for e in events if e.get("action") == "sale_drawn"]
    assert len(draws) == 1 and draws[0]["kind"] == "waiting_room"
    assert draws[0]["tickets"] == 7 and "7 pre-queue tickets" in draws[0]["summary"]


async def test_a_sale_is_taken_shown_and_refused_in_the_admin_api(
        gateway_app: StartApp, healthy: Upstreams, http: aiohttp.ClientSession) -> None:
    gw = await gateway_app(room())
    naive = await admin(http, gw, "PUT", "/admin/waiting-room",
                        {"sale_starts_at": "2031-05-01T20:00:00"})
    assert naive.status == 200 and naive.json["sale_starts_at"] == "2031-05-01T20:00:00.000Z"
    offset = await admin(http, gw, "PUT", "/admin/waiting-room",
                         {"sale_starts_at": "2031-05-01T22:00:00+02:00"})
    assert offset.json["sale_starts_at"] == "2031-05-01T20:00:00.000Z"
    shown = await admin(http, gw, "GET", "/admin/waiting-room")
    assert shown.json["settings"]["sale_starts_at"] == "2031-05-01T20:00:00.000Z"
    for bad in ("tomorrow", 1_900_000_000, True, "2031-13-01T00:00:00Z"):
        refused = await admin(http, gw, "PUT", "/admin/waiting-room", {"sale_starts_at": bad})
        assert refused.status == 422 and refused.code == "VALIDATION_FAILED", bad
        assert [e["field"] for e in refused.json["errors"]] == ["sale_starts_at"]
    off = await admin(http, gw, "PUT", "/admin/waiting-room", {"enabled": False})
    assert off.headers["Settings-Overridden"] == (
        "sale_starts_at (no effect while enabled is false)")
    called_off = await admin(http, gw, "PUT", "/admin/waiting-room",
                             {"enabled": True, "sale_starts_at": None})
    assert called_off.json["sale_starts_at"] is None
    assert (await order(http, gw)).status == 201, "no sale: straight in"


async def test_a_sale_scheduled_while_customers_wait_takes_them_into_its_pre_queue(
        gateway_app: StartApp, healthy: Upstreams, http: aiohttp.ClientSession) -> None:
    gw = await gateway_app(room(admit_per_s=1, queue_all=True))
    tickets = [assert_queued(await order(http, gw))["ticket"] for _ in range(4)]
    await admin(http, gw, "PUT", "/admin/waiting-room",
                {"queue_all": False, "sale_starts_at": in_s(30)})
    for ticket in tickets:
        answer = await poll(http, gw, ticket)
        assert answer.status == 200 and answer.json["state"] == "waiting"
        assert answer.json["position"] is None and 25 <= answer.json["starts_in_s"] <= 30
