"""The waiting room's contract, in-process (memory store) in front of the real simulators.

Its fleet-wide rules (two gateways sharing one Redis, Redis down) are in
tests/system/test_waiting_room_fleet.py; the line's own behaviour in
tests/system/test_ticket_queue.py.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDictProxy

from loadtest.harness import Upstreams
from tests.conftest import ADMIN_TOKEN, GOOD_ORDER, InProcess, StartApp

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
CLIENT = "shop-app"


@dataclass(frozen=True)
class Answer:
    status: int
    headers: CIMultiDictProxy[str]
    json: dict[str, Any]

    @property
    def code(self) -> str | None:
        return self.json.get("code")


async def order(http: aiohttp.ClientSession, gw: InProcess | str, *, key: str | None = None,
                client: str = CLIENT, **headers: str) -> Answer:
    url = gw if isinstance(gw, str) else gw.url
    sent = {"Idempotency-Key": key or str(uuid.uuid4()), "X-Client-ID": client,
            **{name.replace("_", "-"): value for name, value in headers.items()}}
    async with http.post(url + "/v1/orders", json=GOOD_ORDER, headers=sent) as resp:
        return Answer(resp.status, resp.headers, await resp.json(content_type=None))


async def poll(http: aiohttp.ClientSession, gw: InProcess | str, ticket: str,
               client: str = CLIENT) -> Answer:
    url = gw if isinstance(gw, str) else gw.url
    async with http.get(f"{url}/v1/queue/{ticket}", headers={"X-Client-ID": client}) as resp:
        return Answer(resp.status, resp.headers, await resp.json(content_type=None))


async def until_admitted(http: aiohttp.ClientSession, gw: InProcess | str, ticket: str,
                         within_s: float = 10.0) -> Answer:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        answer = await poll(http, gw, ticket)
        assert answer.status == 200, answer
        if answer.json["state"] == "admitted":
            return answer
        await asyncio.sleep(0.1)
    raise AssertionError(f"{ticket} not admitted within {within_s} s")


async def admin(http: aiohttp.ClientSession, gw: InProcess | str, method: str, path: str,
                body: Any = None) -> Answer:
    url = gw if isinstance(gw, str) else gw.url
    async with http.request(method, url + path, json=body, headers=ADMIN) as resp:
        return Answer(resp.status, resp.headers, await resp.json(content_type=None))


def assert_queued(answer: Answer, position: int | None = None) -> dict[str, Any]:
    assert answer.status == 429, answer
    assert answer.headers["Content-Type"].startswith("application/problem+json")
    assert answer.code == "QUEUED" and answer.json["retryable"] is True
    queue: dict[str, Any] = answer.json["queue"]
    assert set(queue) == {"ticket", "position", "eta_s", "poll_after_s"}
    assert answer.headers["X-Queue-Ticket"] == queue["ticket"]
    assert answer.headers["Retry-After"] == str(queue["poll_after_s"])
    if position is not None:
        assert queue["position"] == position
    return queue


def room(**settings: Any) -> dict[str, Any]:
    return {"waiting_room": {"enabled": True, **settings}}


async def test_a_disabled_room_changes_nothing(
        gateway_app: StartApp, healthy: Upstreams, http: aiohttp.ClientSession) -> None:
    gw = await gateway_app(None)
    answer = await order(http, gw)
    assert answer.status == 201 and "X-Queue-Pass" not in answer.headers
    async with http.get(gw.url + "/v1/status") as resp:
        assert (await resp.json())["waiting_room"] == {
            "enabled": False, "queueing": False, "waiting": 0, "eta_s": 0,
            "sale_starts_at": None}


async def test_customers_beyond_the_rate_queue_with_place_and_eta_and_get_in_in_turn(
        gateway_app: StartApp, healthy: Upstreams, http: aiohttp.ClientSession) -> None:
    gw = await gateway_app(room(admit_per_s=2))
    straight = [await order(http, gw) for _ in range(2)]
    assert [a.status for a in straight] == [201, 201]
    assert all(a.headers["X-Queue-Pass"] for a in straight)
    key = str(uuid.uuid4())
    queued = [await order(http, gw, key=key), await order(http, gw)]
    first, second = assert_queued(queued[0], 1), assert_queued(queued[1], 2)
    # Admissions from the line start when the second slides on, then one every half second.
    assert first["eta_s"] == 1 and second["eta_s"] in (1, 2)
    assert key not in healthy.stats("order")["requests_by_key"], "a queued order is not sent"
    async with http.get(gw.url + "/v1/status") as resp:
        status = (await resp.json())["waiting_room"]
    assert status["enabled"] and status["queueing"] and status["eta_s"] >= 1
    admitted = await until_admitted(http, gw, first["ticket"])
    assert set(admitted.json) == {"state", "pass", "pass_expires_at"}
    # The pass lets the customer through; the queued answer was never stored under the key.
    through = await order(http, gw, key=key, X_Queue_Pass=admitted.json["pass"])
    assert through.status == 201 and "Idempotent-Replayed" not in through.headers
    assert healthy.stats("order")["requests_by_key"][key] == 1
    # And it keeps working, on every covered route, without taking an admission.
    for _ in range(3):
        assert (await order(http, gw, X_Queue_Pass=admitted.json["pass"])).status == 201


async def test_covered_submissions_reach_the_backend_at_the_rooms_rate(
        gateway_app: StartApp, healthy: Upstreams, http: aiohttp.ClientSession) -> None:
    """Customers let in together, ordering at once, still reach the backend at most
    admit_per_s + 1 in any second: each waits briefly for its turn."""
    # One pass for the lump (pass_submissions raised for it): pacing is what is tested, and
    # it holds however the customers came in; a pass's own bound has its test.
    gw = await gateway_app(room(admit_per_s=4, pass_submissions=10))
    first = await order(http, gw)
    assert first.status == 201
    lump = await asyncio.gather(*(order(http, gw, X_Queue_Pass=first.headers["X-Queue-Pass"])
                                  for _ in range(9)))
    assert [a.status for a in lump] == [201] * 9
    created = sorted(datetime.fromisoformat(a.json["created_at"]).timestamp()
                     for a in [first, *lump])
    busiest = max(sum(1 for t in created if start <= t < start + 1) for start in created)
    assert busiest <= 5, created
    assert created[-1] - created[0] >= 1.5  # ten orders at four a second, one ahead


async def test_a_resubmission_with_the_ticket_waits_then_goes_through_with_a_pass(
        gateway_app: StartApp, healthy: Upstreams, http: aiohttp.ClientSession) -> None:
    gw = await gateway_app(room(admit_per_s=1, queue_all=True))
    key = str(uuid.uuid4())
    ticket = assert_queued(await order(http, gw, key=key))["ticket"]
    deadline = time.monotonic() + 10
    while True:
        again = await order(http, gw, key=key, X_Queue_Ticket=ticket)
        if again.status != 429:
            break
        assert assert_queued(again)["ticket"] == ticket, "the same ticket, not a new one"
        assert time.monotonic() < deadline
        await asyncio.sleep(0.2)
    assert again.status == 201 and again.headers["X-Queue-Pass"]


async def test_forged_and_foreign_tickets_and_passes_count_as_none(
        gateway_app: StartApp, healthy: Upstreams, http: aiohttp.ClientSession) -> None:
    gw = await gateway_app(room(admit_per_s=1, queue_all=True))
    ticket = assert_queued(await order(http, gw))["ticket"]
    number, signature = ticket.split(".")
    for forged in (f"{int(number) + 1}.{signature}", number + ".AAAA", "x" * 500, "%00",
                   "1.2.3", "-1.x"):
        assert (await poll(http, gw, forged)).code == "NOT_FOUND"
    foreign = await poll(http, gw, ticket, client="other-app")
    assert (foreign.status, foreign.code) == (404, "NOT_FOUND")
    # Said for a waiting customer's app, not as a path to check against /openapi.json.
    assert "same client" in foreign.json["hint"] and "openapi" not in foreign.json["hint"]
    assert foreign.json["detail"] == "This ticket is not one this client holds."
    # Another client's (or a forged) ticket on a request: a new customer, a new ticket.
    other = assert_queued(await order(http, gw, client="other-app", X_Queue_Ticket=ticket))
    assert other["ticket"] != ticket
    granted = (await until_admitted(http, gw, ticket)).json["pass"]
    for bad_pass in (granted + "x", "9" + granted, "4102444800.AAAAAAAAAAAAAAAAAAAAAA"):
        assert_queued(await order(http, gw, X_Queue_Pass=bad_pass))
    assert_queued(await order(http, gw, client="other-app", X_Queue_Pass=granted))


async def test_non_ascii_tickets_and_passes_are_unknown_values_not_errors(
        gateway_app: StartApp, healthy: Upstreams, http: aiohttp.ClientSession) -> None:
    gw = await gateway_app(room(admit_per_s=1, queue_all=True))
    ticket = assert_queued(await order(http, gw))["ticket"]
    for odd in ("1.%C3%A9", ticket + "%C3%A9", "%C3%A9"):
        assert (await poll(http, gw, odd)).code == "NOT_FOUND"
    # Header values outside ASCII (sent as Latin-1 bytes): no pass, no ticket, never a 500.
    assert_queued(await order(http, gw, X_Queue_Pass="é" + ticket))
    assert_queued(await order(http, gw, X_Queue_Ticket=ticket[:-1] + "é"))


async def test_one_pass_lets_through_at_most_pass_submissions_new_orders(
        gateway_app: StartApp, healthy: Upstreams, http: aiohttp.ClientSession) -> None:
    """One pass placed 43 orders in 15 s and took the pacing meant for every customer let
    in: a pass now lets through `pass_submissions` (default 5) submissions, each again."""
    gw = await gateway_app(room(admit_per_s=50))
    first = await order(http, gw)
    assert first.status == 201
    granted = first.headers["X-Queue-Pass"]
    assert (await admin(http, gw, "PUT", "/admin/waiting-room", {"queue_all": True})).status \
        == 200
    keys = [str(uuid.uuid4()) for _ in range(6)]
    answers = [await order(http, gw, key=key, X_Queue_Pass=granted) for key in keys]
    assert [a.status for a in answers[:5]] == [201] * 5
    assert_queued(answers[5])  # the pass counts as none: a new customer, in line
    again = await order(http, gw, key=keys[0], X_Queue_Pass=granted)
    assert again.status == 201 and again.headers["Idempotent-Replayed"] == "true"


async def test_an_idle_ticket_lapses_to_410_and_is_counted(
        gateway_app: StartApp, healthy: Upstreams, http: aiohttp.ClientSession) -> None:
    gw = await gateway_app(room(admit_per_s=1, queue_all=True, ticket_idle_s=3))
    ticket = assert_queued(await order(http, gw))["ticket"]
    await admin(http, gw, "POST", "/admin/breakers/order/open")  # nobody is admitted meanwhile
    await asyncio.sleep(2.5)
    assert (await poll(http, gw, ticket)).status == 200, "kept while polled"
    await asyncio.sleep(4.2)  # not polled for ticket_idle_s and a second more
    lapsed = await poll(http, gw, ticket)
    assert lapsed.status == 410 and lapsed.code == "QUEUE_TICKET_EXPIRED"
    assert lapsed.json["retryable"] is False
    assert (await order(http, gw, X_Queue_Ticket=ticket)).code == "QUEUE_TICKET_EXPIRED"
    figures = (await admin(http, gw, "GET", "/admin/waiting-room")).json
    assert figures["expired_total"] == 1
    async with http.get(gw.url + "/metrics") as resp:
        assert "gateway_waiting_room_expired_total 1.0" in await resp.text()


async def test_admissions_pause_while_a_covered_breaker_is_open_then_resume(
        gateway_app: StartApp, healthy: Upstreams, http: aiohttp.ClientSession) -> None:
    gw = await gateway_app(room(admit_per_s=5))
    await admin(http, gw, "POST", "/admin/breakers/order/open")
    await asyncio.sleep(0.3)  # one admission step sees it
    paused = assert_queued(await order(http, gw))
    assert paused["eta_s"] is None, "no ETA while paused"
    assert (await poll(http, gw, paused["ticket"])).json["eta_s"] is None
    async with http.get(gw.url + "/v1/status") as resp:
        status = (await resp.json())["waiting_room"]
    assert status["queueing"] and status["eta_s"] is None
    await asyncio.sleep(0.5)
    assert (await poll(http, gw, paused["ticket"])).json["state"] == "waiting"
    await admin(http, gw, "POST", "/admin/breakers/order/reset")
    await until_admitted(http, gw, paused["ticket"], within_s=3)


async def test_a_completed_key_is_replayed_without_queueing(
        gateway_app: StartApp, healthy: Upstreams, http: aiohttp.ClientSession) -> None:
    gw = await gateway_app(room(admit_per_s=50))
    key = str(uuid.uuid4())
    first = await order(http, gw, key=key)
    assert first.status == 201
    assert (await admin(http, gw, "PUT", "/admin/waiting-room", {"queue_all": True})).status \
        == 200
    assert_queued(await order(http, gw))
    replay = await order(http, gw, key=key)
    assert replay.status == 201 and replay.headers["Idempotent-Replayed"] == "true"
    assert replay.json == first.json


async def test_admin_shows_and_changes_settings_never_the_secret(
        gateway_app: StartApp, healthy: Upstreams, http: aiohttp.ClientSession) -> None:
    gw = await gateway_app(room(secret="a-secret-of-our-own-0123456789"))
    shown = await admin(http, gw, "GET", "/admin/waiting-room")
    assert shown.status == 200
    assert set(shown.json) == {"settings", "waiting", "admitted_total", "expired_total"}
    assert shown.json["settings"] == {
        "enabled": True, "routes": ["POST /v1/orders"], "admit_per_s": 50, "queue_all": False,
        "pass_ttl_s": 900.0, "pass_submissions": 5, "tickets_per_address_per_min": 600,
        "ticket_idle_s": 60.0, "return_origins": [], "sale_starts_at": None}
    changed = await admin(http, gw, "PUT", "/admin/waiting-room",
                          {"admit_per_s": 7, "routes": ["order", "GET /v1/availability"]})
    assert changed.status == 200
    assert (changed.json["admit_per_s"], changed.json["queue_all"]) == (7, False)
    # A whole number written with a point, as every integer field reads it (the OpenAPI
    # document says so).
    whole = await admin(http, gw, "PUT", "/admin/waiting-room", {"admit_per_s": 237.0})
    assert (whole.status, whole.json["admit_per_s"]) == (200, 237)
    assert "Settings-Overridden" not in whole.headers
    # Turned off with queue_all still stored: the answer says what comes back with it.
    await admin(http, gw, "PUT", "/admin/waiting-room", {"queue_all": True})
    off = await admin(http, gw, "PUT", "/admin/waiting-room", {"enabled": False})
    assert off.json["queue_all"] is True
    assert off.headers["Settings-Overridden"] == "queue_all (no effect while enabled is false)"
    await admin(http, gw, "PUT", "/admin/waiting-room", {"enabled": True, "queue_all": False})
    changed = await admin(http, gw, "PUT", "/admin/waiting-room", {"admit_per_s": 7})
    assert "secret" not in changed.json
    assert (await admin(http, gw, "GET", "/admin/waiting-room")).json["settings"] == changed.json
    # In force before the answer: availability is covered now.
    async with http.get(gw.url + "/v1/availability?address=x&product=y",
                        headers={"X-Client-ID": CLIENT}) as resp:
        assert resp.headers.get("X-Queue-Pass")


@pytest.mark.parametrize(("body", "field"), [
    ({"admit_per_s": -1}, "admit_per_s"),
    ({"admit_per_s": 0}, "admit_per_s"),
    ({"admit_per_s": 2.5}, "admit_per_s"),
    ({"admit_per_s": "5"}, "admit_per_s"),
    ({"pass_ttl_s": -5}, "pass_ttl_s"),
    ({"ticket_idle_s": 1}, "ticket_idle_s"),
    ({"routes": ["GET /v1/nowhere"]}, "routes.0"),
    ({"routes": []}, "routes"),
    ({"enabled": "yes"}, "enabled"),
    ({"surprise": True}, "surprise"),
    ({"secret": "s" * 32}, "secret"),
    ([], "body"),
    ({}, "body"),
])
async def test_bad_admin_input_is_422_with_field_errors_and_changes_nothing(
        body: Any, field: str, gateway_app: StartApp, http: aiohttp.ClientSession) -> None:
    gw = await gateway_app(room())
    before = (await admin(http, gw, "GET", "/admin/waiting-room")).json["settings"]
    answer = await admin(http, gw, "PUT", "/admin/waiting-room", body)
    assert answer.status == 422 and answer.code == "VALIDATION_FAILED", answer
    assert field in {e["field"] for e in answer.json["errors"]}
    assert (await admin(http, gw, "GET", "/admin/waiting-room")).json["settings"] == before


async def test_the_room_has_its_metrics(
        gateway_app: StartApp, healthy: Upstreams, http: aiohttp.ClientSession) -> None:
    gw = await gateway_app(room(admit_per_s=1, queue_all=True))
    ticket = assert_queued(await order(http, gw))["ticket"]
    await until_admitted(http, gw, ticket)
    async with http.get(gw.url + "/metrics") as resp:
        text = await resp.text()
    for series in ("gateway_waiting_room_waiting 0.0", "gateway_waiting_room_admitted_total 1.0",
                   "gateway_waiting_room_expired_total 0.0",
                   "gateway_waiting_room_wait_seconds_count 1.0"):
        assert series in text


async def test_a_poll_answers_at_once_unless_it_asks_to_wait_for_its_admission(
        gateway_app: StartApp, healthy: Upstreams, http: aiohttp.ClientSession) -> None:
    gw = await gateway_app(room(admit_per_s=1))
    assert (await order(http, gw)).status == 201
    ticket = assert_queued(await order(http, gw), 1)["ticket"]
    started = time.monotonic()
    first = await poll(http, gw, ticket)
    assert first.json["state"] == "waiting" and first.json["position"] == 1
    assert time.monotonic() - started < 0.5, "answered at once"
    async with http.get(f"{gw.url}/v1/queue/{ticket}?wait_s=2",
                        headers={"X-Client-ID": CLIENT}) as resp:
        held = await resp.json()
    assert held["state"] == "admitted", "held until the admission, due within the second"
    assert 0.3 < time.monotonic() - started < 2.0
    for bad in ("abc", "-1", "2.5", "nan", ""):
        async with http.get(f"{gw.url}/v1/queue/{ticket}?wait_s={bad}",
                            headers={"X-Client-ID": CLIENT}) as resp:
            assert resp.status == 422 and (await resp.json())["errors"][0]["field"] == "wait_s"


async def test_enabling_the_room_for_several_workers_without_redis_is_refused(
        gateway_app: StartApp, http: aiohttp.ClientSession) -> None:
    gw = await gateway_app({"server": {"workers": 2, "port": 8080}})
    answer = await admin(http, gw, "PUT", "/admin/waiting-room", {"enabled": True})
    assert answer.status == 422 and answer.json["errors"][0]["field"] == "enabled"
    assert "redis.url" in answer.json["errors"][0]["message"]
    assert (await admin(http, gw, "GET", "/admin/waiting-room")).json["settings"]["enabled"] \
        is False


async def test_one_address_takes_at_most_its_tickets_a_minute_others_queue_as_usual(
        gateway_app: StartApp, healthy: Upstreams, http: aiohttp.ClientSession) -> None:
    """68,115 tickets from one address in 10 s put every real customer behind them. With
    the default (600 a minute), the 601st new ticket from an address is 429, while a
    customer from another address (behind the trusted proxy) still takes one."""
    gw = await gateway_app({**room(queue_all=True),
                            "server": {"trusted_proxies": ["127.0.0.1/32", "::1/128"]}})
    bot = {"X_Forwarded_For": "198.51.100.7"}
    codes = [(await order(http, gw, **bot)).code for _ in range(600)]
    assert codes == ["QUEUED"] * 600  # each with a ticket of its own
    # Then refused, but for the few the minute's refill (10 a second) lets through.
    refused = await order(http, gw, **bot)
    for _ in range(100):
        if refused.code == "RATE_LIMITED":
            break
        refused = await order(http, gw, **bot)
    assert refused.code == "RATE_LIMITED" and int(refused.headers["Retry-After"]) >= 1
    # The proxy's own address is not the client's: another customer behind it queues.
    assert_queued(await order(http, gw, X_Forwarded_For="198.51.100.8"))
    # A hop the client wrote left of the proxy's proves nothing: the rightmost untrusted
    # address is the client, so a bot cannot rotate addresses it invents.
    # (Its bucket refills 10 a second meanwhile: most of a burst is refused, not all; with
    # a bucket of its own, none would be.)
    spoofs = [(await order(http, gw, X_Forwarded_For="203.0.113.1, 198.51.100.7")).code
              for _ in range(20)]
    assert spoofs.count("RATE_LIMITED") >= 10, spoofs
