"""Fault injection (game days): the rules of docs/api.md "Fault injection".

In-process against the real simulators for the rules' effects, admin input and
counts; two gateway processes sharing a real Redis for the fleet-wide parts.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from loadtest.harness import Gateway, RedisServer, Upstreams
from tests.conftest import ADMIN_TOKEN, GOOD_PAYMENT, NO_STALE_ANSWERS, StartApp

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
AVAILABILITY = "/v1/availability?address=Beijing%201&product=fiber-500"
COHORT = {"X-Fault-Cohort": "gameday"}


async def _admin(http: aiohttp.ClientSession, url: str, method: str, path: str,
                 body: Any = None) -> tuple[int, Any]:
    async with http.request(method, url + path, json=body, headers=ADMIN) as resp:
        return resp.status, await resp.json(content_type=None)


async def _get(http: aiohttp.ClientSession, url: str, path: str = AVAILABILITY,
               headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    async with http.get(url + path, headers=headers or {}) as resp:
        return resp.status, await resp.json(content_type=None)


async def test_an_abort_fails_the_call_as_the_backend_would_and_sends_nothing(
        gateway_app: StartApp, healthy: Upstreams, http: aiohttp.ClientSession) -> None:
    gw = await gateway_app(NO_STALE_ANSWERS)
    before = healthy.stats("payment")["requests"]
    status, rule = await _admin(http, gw.url, "PUT", "/admin/faults", {
        "scope": "payment", "abort": {"percent": 100, "status": 503}, "ttl_s": 60})
    assert status == 200 and rule["id"].startswith("flt-") and rule["expires_at"].endswith("Z")
    key = str(uuid.uuid4())
    async with http.post(gw.url + "/v1/payments", json=GOOD_PAYMENT,
                         headers={"Idempotency-Key": key}) as resp:
        assert resp.status == 502
        assert (await resp.json())["code"] == "UPSTREAM_UNAVAILABLE"
    assert healthy.stats("payment")["requests"] == before, "nothing reached the backend"
    # Other backends are untouched.
    assert (await _get(http, gw.url))[0] == 200
    # Ended: the same key may be sent again (no record was kept), and is charged once.
    status, ended = await _admin(http, gw.url, "DELETE", f"/admin/faults/{rule['id']}")
    assert (status, ended) == (200, {"ended": [rule["id"]]})
    async with http.post(gw.url + "/v1/payments", json=GOOD_PAYMENT,
                         headers={"Idempotency-Key": key}) as resp:
        assert resp.status == 201
    assert healthy.stats("payment")["charges_by_key"][key] == 1
    _, listed = await _admin(http, gw.url, "GET", "/admin/faults")
    assert listed == {"faults": []}


async def test_a_header_scoped_rule_touches_only_its_cohort_and_counts_what_it_did(
        gateway_app: StartApp, healthy: Upstreams, http: aiohttp.ClientSession) -> None:
    gw = await gateway_app(NO_STALE_ANSWERS)
    status, _ = await _admin(http, gw.url, "PUT", "/admin/faults", {
        "scope": "GET /v1/availability", "abort": {"percent": 100, "status": "reset"},
        "match_header": {"name": "x-fault-cohort", "value": "gameday"}, "ttl_s": 60})
    assert status == 200
    assert (await _get(http, gw.url))[0] == 200
    status, body = await _get(http, gw.url, headers=COHORT)
    assert (status, body["code"]) == (502, "UPSTREAM_UNAVAILABLE")
    assert (await _get(http, gw.url, headers={"X-Fault-Cohort": "other"}))[0] == 200
    _, listed = await _admin(http, gw.url, "GET", "/admin/faults")
    # A reset is worth a retry for a read: each attempt rolled its own dice.
    assert listed["faults"][0]["injected"]["abort"] >= 2
    async with http.get(gw.url + "/metrics") as resp:
        metrics = await resp.text()
    assert 'gateway_faults_injected_total{backend="availability",kind="abort"}' in metrics
    # Never the gateway's own routes.
    for path in ("/healthz", "/readyz", "/v1/status", "/metrics"):
        async with http.get(gw.url + path, headers=COHORT) as resp:
            assert resp.status == 200, path


async def test_a_delay_counts_against_the_timeout_and_for_the_breakers_slow_calls(
        gateway_app: StartApp, healthy: Upstreams, http: aiohttp.ClientSession) -> None:
    gw = await gateway_app({**NO_STALE_ANSWERS, "upstreams": {"availability": {
        "breaker": {"slow_call_duration_ms": 250, "slow_call_rate_threshold": 1.0,
                    "minimum_calls": 100}}}})
    await _admin(http, gw.url, "PUT", "/admin/faults", {
        "scope": "availability", "delay": {"percent": 100, "ms": 300}, "ttl_s": 60})
    started = time.monotonic()
    assert (await _get(http, gw.url))[0] == 200
    assert time.monotonic() - started >= 0.3
    # Two rules add their delays; past the 1 s timeout: a timeout, and nothing sent.
    await _admin(http, gw.url, "PUT", "/admin/faults", {
        "scope": "all", "delay": {"percent": 100, "ms": 900}, "ttl_s": 60})
    before = healthy.stats("availability")["requests"]
    status, body = await _get(http, gw.url, headers={"X-Request-Timeout-Ms": "1000"})
    assert (status, body["code"]) == (504, "UPSTREAM_TIMEOUT")
    assert healthy.stats("availability")["requests"] == before
    _, breakers = await _admin(http, gw.url, "GET", "/admin/breakers")
    availability = next(b for b in breakers["breakers"] if b["name"] == "availability")
    assert availability["window"]["slow_calls"] >= 1  # the 300 ms delay was a slow call
    # The kill switch ends them all.
    status, ended = await _admin(http, gw.url, "DELETE", "/admin/faults")
    assert status == 200 and len(ended["ended"]) == 2
    started = time.monotonic()
    assert (await _get(http, gw.url))[0] == 200
    assert time.monotonic() - started < 0.3


async def test_a_rule_ends_at_its_expiry(
        gateway_app: StartApp, healthy: Upstreams, http: aiohttp.ClientSession) -> None:
    gw = await gateway_app(NO_STALE_ANSWERS)
    await _admin(http, gw.url, "PUT", "/admin/faults", {
        "scope": "order", "abort": {"percent": 100, "status": 500}, "ttl_s": 1})
    assert (await _get(http, gw.url, "/v1/orders/ord_x"))[0] == 502
    await asyncio.sleep(1.1)
    assert (await _get(http, gw.url, "/v1/orders/ord_x"))[0] == 404  # the backend's own answer
    _, listed = await _admin(http, gw.url, "GET", "/admin/faults")
    assert listed == {"faults": []}


@pytest.mark.parametrize(("body", "field"), [
    ({"scope": "payment", "abort": {"percent": 101, "status": 503}, "ttl_s": 60},
     "abort.percent"),
    ({"scope": "payment", "abort": {"percent": 50, "status": 404}, "ttl_s": 60}, "abort.status"),
    ({"scope": "payment", "abort": {"percent": 50, "status": 503}}, "ttl_s"),
    ({"scope": "payment", "abort": {"percent": 50, "status": 503}, "ttl_s": 3601}, "ttl_s"),
    ({"scope": "billing", "abort": {"percent": 50, "status": 503}, "ttl_s": 60}, "scope"),
    ({"scope": "payment", "ttl_s": 60}, "abort"),
    ({"scope": "payment", "delay": {"percent": 50, "ms": 0}, "ttl_s": 60}, "delay.ms"),
    ({"scope": "payment", "delay": {"percent": 50, "ms": 10}, "ttl_s": 60,
      "match_header": {"name": "bad header", "value": "x"}}, "match_header.name"),
])
async def test_bad_rules_are_422_with_field_errors(
        gateway_app: StartApp, http: aiohttp.ClientSession, body: dict[str, Any],
        field: str) -> None:
    gw = await gateway_app(None)
    status, answer = await _admin(http, gw.url, "PUT", "/admin/faults", body)
    assert status == 422 and answer["code"] == "VALIDATION_FAILED"
    assert any(e["field"].startswith(field) for e in answer["errors"]), answer["errors"]
    assert (await _admin(http, gw.url, "GET", "/admin/faults"))[1] == {"faults": []}


async def test_at_most_twenty_rules_and_unknown_ids_are_404(
        gateway_app: StartApp, http: aiohttp.ClientSession) -> None:
    gw = await gateway_app(None)
    rule = {"scope": "order", "delay": {"percent": 0, "ms": 5}, "ttl_s": 60}
    for _ in range(20):
        assert (await _admin(http, gw.url, "PUT", "/admin/faults", rule))[0] == 200
    status, answer = await _admin(http, gw.url, "PUT", "/admin/faults", rule)
    assert status == 422 and answer["code"] == "VALIDATION_FAILED"
    assert [(e["field"], e["type"]) for e in answer["errors"]] == [("body", "too_many_rules")]
    status, answer = await _admin(http, gw.url, "DELETE", "/admin/faults/flt-nothere")
    assert (status, answer["code"]) == (404, "NOT_FOUND")


async def test_rules_hold_on_every_process_sharing_redis(
        log_dir: Path, upstreams: Upstreams, redis_server: RedisServer,
        http: aiohttp.ClientSession) -> None:
    """Defaults but the Redis URL and the admin token: added on one process, in force on
    the other within a second; the kill switch through the other ends it on both."""
    env = {"GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN}
    config = {"redis": {"url": redis_server.url}, **NO_STALE_ANSWERS}
    first = Gateway(log_dir, upstreams.urls, config=config, env=env, short_timeouts=False)
    second = Gateway(log_dir, upstreams.urls, config=config, env=env, short_timeouts=False)
    try:
        await _admin(http, first.url, "DELETE", "/admin/faults")
        _, rule = await _admin(http, first.url, "PUT", "/admin/faults", {
            "scope": "availability", "abort": {"percent": 100, "status": 500},
            "match_header": {"name": "X-Fault-Cohort", "value": "gameday"}, "ttl_s": 60})
        assert (await _get(http, first.url, headers=COHORT))[0] == 502  # at once, here
        await asyncio.sleep(1.0)
        assert (await _get(http, second.url, headers=COHORT))[0] == 502  # within 1 s there
        _, listed = await _admin(http, second.url, "GET", "/admin/faults")
        assert [r["id"] for r in listed["faults"]] == [rule["id"]]
        _, ended = await _admin(http, second.url, "DELETE", "/admin/faults")
        assert ended == {"ended": [rule["id"]]}
        assert (await _get(http, second.url, headers=COHORT))[0] == 200
        await asyncio.sleep(1.0)
        assert (await _get(http, first.url, headers=COHORT))[0] == 200
    finally:
        first.stop()
        second.stop()
