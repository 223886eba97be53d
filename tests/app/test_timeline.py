"""The shared timeline and the event stream of docs/api.md "Console, events and timeline".

In-process for the rules of one process; two gateway processes sharing a real
Redis for the fleet; a real process and SIGTERM for the end of a stream.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from loadtest.harness import Gateway, RedisServer, Upstreams
from tests.conftest import ADMIN_TOKEN, NO_STALE_ANSWERS, StartApp

ACTOR = {"Authorization": f"Bearer {ADMIN_TOKEN}", "X-Admin-Actor": "sre-li"}
AVAILABILITY = "/v1/availability?address=Beijing%201&product=fiber-500"


async def _admin(http: aiohttp.ClientSession, url: str, method: str, path: str,
                 body: Any = None) -> tuple[int, Any]:
    async with http.request(method, url + path, json=body, headers=ACTOR) as resp:
        return resp.status, await resp.json(content_type=None)


async def _timeline(http: aiohttp.ClientSession, url: str,
                    query: str = "") -> list[dict[str, Any]]:
    status, body = await _admin(http, url, "GET", "/admin/timeline" + query)
    assert status == 200, body
    events: list[dict[str, Any]] = body["events"]
    return events


async def test_admin_actions_and_breaker_transitions_are_on_the_timeline_newest_first(
        gateway_app: StartApp, healthy: Upstreams, http: aiohttp.ClientSession) -> None:
    gw = await gateway_app(None)
    await _admin(http, gw.url, "POST", "/admin/breakers/payment/open")
    await _admin(http, gw.url, "PUT", "/admin/maintenance", {
        "scope": "order", "read_only": True, "message": {"en": "Upgrade", "zh-CN": "升级"}})
    await _admin(http, gw.url, "PUT", "/admin/faults", {
        "scope": "availability", "delay": {"percent": 10, "ms": 50}, "ttl_s": 60})
    await _admin(http, gw.url, "PUT", "/admin/waiting-room", {"admit_per_s": 7})
    events = await _timeline(http, gw.url)
    kinds = [e["kind"] for e in events]
    assert kinds[:3] == ["waiting_room", "fault", "maintenance"]
    assert set(kinds[3:5]) == {"admin", "breaker"}  # the force and the transition it made
    transition = next(e for e in events if e["kind"] == "breaker")
    assert transition["backend"] == "payment" and transition["to_state"] == "open"
    assert transition["reason"] and "window" in transition
    assert all(e["actor"] == "sre-li" for e in events if e["kind"] != "breaker")
    assert all(e["at"].endswith("Z") and e["process"] for e in events)
    assert len(await _timeline(http, gw.url, "?limit=2")) == 2
    for bad in ("0", "1001", "x"):
        status, body = await _admin(http, gw.url, "GET", f"/admin/timeline?limit={bad}")
        assert (status, body["code"]) == (422, "VALIDATION_FAILED")
    await _admin(http, gw.url, "POST", "/admin/breakers/payment/reset")


async def _snapshots(http: aiohttp.ClientSession, url: str, count: int,
                     headers: dict[str, str] | None = None) -> list[dict[str, Any]]:
    found = []
    async with http.get(url + "/admin/events", headers=headers or ACTOR) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        event = None
        async for raw in resp.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                event = line[len("event: "):]
            elif line.startswith("data: ") and event == "snapshot":
                found.append(orjson.loads(line[len("data: "):]))
                if len(found) == count:
                    break
    return found


async def test_the_event_stream_sends_a_snapshot_every_second_with_traffic(
        gateway_app: StartApp, healthy: Upstreams, http: aiohttp.ClientSession) -> None:
    gw = await gateway_app(NO_STALE_ANSWERS)
    for _ in range(5):
        async with http.get(gw.url + AVAILABILITY) as resp:
            assert resp.status == 200
    await asyncio.sleep(1.1)  # traffic figures are sampled twice a second
    started = time.monotonic()
    first, second = await _snapshots(http, gw.url, 2)
    assert time.monotonic() - started < 2.5
    assert set(first) == {"at", "breakers", "maintenance", "faults", "waiting_room", "traffic"}
    assert {b["name"] for b in first["breakers"]} == {"order", "payment", "availability"}
    traffic = second["traffic"]["availability"]
    assert traffic["calls_per_s"] > 0 and traffic["failure_rate"] == 0
    assert traffic["p99_ms"] > 0
    # The last minute second by second, for a sparkline drawn whole from the first snapshot.
    recent = traffic.pop("recent_calls_per_s")
    assert len(recent) == 60 and sum(recent) > 0
    assert second["traffic"]["order"] == {"calls_per_s": 0.0, "failure_rate": 0.0,
                                          "p99_ms": 0.0, "recent_calls_per_s": [0.0] * 60}
    async with http.get(gw.url + "/admin/events") as resp:
        assert resp.status == 401


async def test_the_fleet_shares_one_timeline_and_a_drain_ends_open_streams_at_once(
        log_dir: Path, upstreams: Upstreams, redis_server: RedisServer,
        http: aiohttp.ClientSession) -> None:
    env = {"GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN}
    config = {"redis": {"url": redis_server.url}, "server": {"drain_delay_s": 3.0}}
    first = Gateway(log_dir, upstreams.urls, config=config, env=env, short_timeouts=False)
    second = Gateway(log_dir, upstreams.urls, config=config, env=env, short_timeouts=False)
    try:
        await _admin(http, first.url, "POST", "/admin/breakers/order/open")
        await asyncio.sleep(1.0)
        events = await _timeline(http, second.url, "?limit=20")
        forced = [e for e in events if e["kind"] == "admin" and e["action"] == "breaker.open"]
        assert forced and forced[0]["actor"] == "sre-li"
        # The forced state reaches both processes: one transition each.
        moved = {e["process"] for e in events
                 if e["kind"] == "breaker" and e["backend"] == "order" and e["to_state"] == "open"}
        assert len(moved) == 2, events
        await _admin(http, first.url, "POST", "/admin/breakers/order/reset")

        async def read_until_end() -> float:
            async with http.get(second.url + "/admin/events", headers=ACTOR) as resp:
                async for _ in resp.content:
                    pass
            return time.monotonic()

        reader = asyncio.create_task(read_until_end())
        await asyncio.sleep(1.5)
        signalled = time.monotonic()
        os.kill(second.proc.pid, signal.SIGTERM)
        ended = await asyncio.wait_for(reader, 10)
        # Ended at the start of the drain, not after its 3 s delay.
        assert ended - signalled < 1.5
    finally:
        first.stop()
        second.stop()


@pytest.mark.parametrize("limit", ["1", "1000"])
async def test_the_limits_of_limit_are_accepted(
        gateway_app: StartApp, http: aiohttp.ClientSession, limit: str) -> None:
    gw = await gateway_app(None)
    await _timeline(http, gw.url, f"?limit={limit}")
