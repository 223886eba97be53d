"""Every failure of a backend becomes a problem+json answer a client can act on, in time."""

from __future__ import annotations

import gzip
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from loadtest.harness import Gateway, Upstreams, free_port
from tests.conftest import ADMIN_TOKEN, GOOD_PAYMENT, NO_STALE_ANSWERS

TIMEOUT_S = 1.0  # the suite's gateway timeout (loadtest/harness.py)
MARGIN_S = 0.5
AVAILABILITY = "/v1/availability?address=Beijing&product=fiber"

FAULTS: dict[str, dict[str, Any]] = {
    "error-500": {"error_rate": 1.0, "error_status": 500},
    "error-503": {"error_rate": 1.0, "error_status": 503},
    "reset": {"reset_rate": 1.0},
    "hang": {"hang": True},
    "slow": {"latency_ms": 2500},
    "garbage": {"garbage_rate": 1.0},
}
# What a read (availability) and a payment answer under each fault.
EXPECTED: dict[str, tuple[tuple[int, str], tuple[int, str]]] = {
    "error-500": ((502, "UPSTREAM_UNAVAILABLE"), (502, "UPSTREAM_UNAVAILABLE")),
    "error-503": ((502, "UPSTREAM_UNAVAILABLE"), (502, "UPSTREAM_UNAVAILABLE")),
    "reset": ((502, "UPSTREAM_UNAVAILABLE"), (502, "PAYMENT_OUTCOME_UNKNOWN")),
    "hang": ((504, "UPSTREAM_TIMEOUT"), (502, "PAYMENT_OUTCOME_UNKNOWN")),
    "slow": ((504, "UPSTREAM_TIMEOUT"), (502, "PAYMENT_OUTCOME_UNKNOWN")),
    "garbage": ((502, "UPSTREAM_UNAVAILABLE"), (502, "UPSTREAM_UNAVAILABLE")),
}
TITLES = {"en": "Service", "zh-CN": "服务"}


async def _check_problem(resp: aiohttp.ClientResponse, status: int, code: str, lang: str,
                         started: float) -> dict[str, Any]:
    elapsed = time.monotonic() - started
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/problem+json"
    body: dict[str, Any] = await resp.json()
    assert body["code"] == code
    assert body["status"] == status
    assert body["retryable"] is True
    assert body["request_id"] == resp.headers["X-Request-ID"]
    assert body["type"].startswith("https://errors.order-gateway.dev/")
    assert int(resp.headers["Retry-After"]) >= 1
    assert resp.headers["Content-Language"] == lang
    if lang == "zh-CN":
        assert any("\u4e00" <= ch <= "\u9fff" for ch in body["title"] + body["hint"])
    else:
        assert body["title"].isascii() and body["hint"].isascii()
    assert "Traceback" not in str(body)
    assert elapsed < TIMEOUT_S + MARGIN_S, f"answered after {elapsed:.2f}s"
    return body


@pytest.mark.parametrize("lang", ["en", "zh-CN"])
@pytest.mark.parametrize("fault", list(FAULTS))
async def test_read_and_payment_under_fault(fault: str, lang: str, gateway: Gateway,
                                            healthy: Upstreams,
                                            http: aiohttp.ClientSession) -> None:
    healthy.set_faults("availability", **FAULTS[fault])
    healthy.set_faults("payment", **FAULTS[fault])
    (read_status, read_code), (pay_status, pay_code) = EXPECTED[fault]
    headers = {"Accept-Language": lang}

    started = time.monotonic()
    async with http.get(gateway.url + AVAILABILITY, headers=headers) as resp:
        await _check_problem(resp, read_status, read_code, lang, started)

    started = time.monotonic()
    async with http.post(gateway.url + "/v1/payments", json=GOOD_PAYMENT,
                         headers={**headers, "Idempotency-Key": str(uuid.uuid4())}) as resp:
        await _check_problem(resp, pay_status, pay_code, lang, started)


async def test_gateway_recovers_when_backend_heals(gateway: Gateway, healthy: Upstreams,
                                                   http: aiohttp.ClientSession) -> None:
    healthy.set_faults("availability", reset_rate=1.0)
    async with http.get(gateway.url + AVAILABILITY) as resp:
        assert resp.status == 502
    healthy.heal()
    async with http.get(gateway.url + AVAILABILITY) as resp:
        assert resp.status == 200


async def test_one_failing_backend_leaves_the_others_alone(gateway: Gateway, healthy: Upstreams,
                                                           http: aiohttp.ClientSession) -> None:
    healthy.set_faults("payment", hang=True)
    async with http.get(gateway.url + AVAILABILITY) as resp:
        assert resp.status == 200
    async with http.get(gateway.url + "/v1/orders/ord_x") as resp:
        assert resp.status == 404
        assert (await resp.json())["code"] == "ORDER_NOT_FOUND"


async def test_status_page_reports_a_failing_backend(gateway: Gateway, healthy: Upstreams,
                                                     http: aiohttp.ClientSession) -> None:
    healthy.set_faults("availability", error_rate=1.0)
    async with http.get(gateway.url + AVAILABILITY) as resp:
        assert resp.status == 502
    async with http.get(gateway.url + "/v1/status") as resp:
        assert (await resp.json())["backends"]["availability"]["health"] == "degraded"
    for _ in range(4):  # five failures in a row open the breaker (the default)
        async with http.get(gateway.url + AVAILABILITY) as resp:
            assert resp.status == 502
    async with http.get(gateway.url + "/v1/status") as resp:
        status = await resp.json()
    assert status["status"] == "degraded"
    assert status["backends"]["availability"]["health"] == "down"
    assert status["backends"]["order"]["health"] == "up"
    healthy.heal()
    gateway.reset_breakers(ADMIN_TOKEN)
    async with http.get(gateway.url + AVAILABILITY) as resp:
        assert resp.status == 200
    async with http.get(gateway.url + "/v1/status") as resp:
        assert (await resp.json())["backends"]["availability"]["health"] == "up"


async def test_killed_backend_process_gives_fast_502(log_dir: Path,
                                                     http: aiohttp.ClientSession) -> None:
    sims = Upstreams(log_dir, seed=11)
    # Each answer here is one attempt: retries (and the breaker they would feed) are off.
    no_retries = {"retry": {"max_retries": 0}}
    gw = Gateway(log_dir, sims.urls, config={"upstreams": {
        "availability": no_retries, "payment": no_retries}})
    try:
        async with http.get(gw.url + AVAILABILITY) as resp:
            assert resp.status == 200
            answered = await resp.read()
        sims.proc.kill()
        # The answer seen a moment ago is served, marked stale, instead of an error...
        async with http.get(gw.url + AVAILABILITY) as resp:
            assert (resp.status, await resp.read()) == (200, answered)
            assert resp.headers["X-Gateway-Stale"] == "true"
            assert int(resp.headers["Age"]) <= 5
        # ...and a question never answered before gets the error.
        never_asked = AVAILABILITY.replace("Beijing", "Shanghai")
        for lang in ("en", "zh-CN"):
            started = time.monotonic()
            async with http.get(gw.url + never_asked, headers={"Accept-Language": lang}) as resp:
                await _check_problem(resp, 502, "UPSTREAM_UNAVAILABLE", lang, started)
            started = time.monotonic()
            # Refused before sending: the payment certainly did not happen.
            async with http.post(gw.url + "/v1/payments", json=GOOD_PAYMENT, headers={
                    "Accept-Language": lang, "Idempotency-Key": str(uuid.uuid4())}) as resp:
                await _check_problem(resp, 502, "UPSTREAM_UNAVAILABLE", lang, started)
    finally:
        gw.stop()
        sims.proc.stop()


@pytest.mark.parametrize("answer", ["declared-too-large", "inflates-too-large"])
async def test_an_oversized_backend_answer_is_refused_not_buffered(
        answer: str, log_dir: Path, upstreams: Upstreams, http: aiohttp.ClientSession) -> None:
    """A backend gone wrong cannot make the gateway hold more than 1 MiB of its answer,
    whether it declares the size or hides it in a small compressed body."""
    huge = b'{"pad": "' + b"x" * (3 * 1024 * 1024) + b'"}'
    if answer == "declared-too-large":
        body, headers = huge, {}
    else:
        body, headers = gzip.compress(huge), {"Content-Encoding": "gzip"}

    async def availability(_request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json", headers=headers)

    app = web.Application()
    app.router.add_get("/availability", availability)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    gw = Gateway(log_dir, {**upstreams.urls, "availability": f"http://127.0.0.1:{port}"},
                 config=NO_STALE_ANSWERS)
    try:
        assert len(body) < 1024 * 1024 or answer == "declared-too-large"
        async with http.get(gw.url + AVAILABILITY) as resp:
            assert resp.status == 502
            assert (await resp.json())["code"] == "UPSTREAM_UNAVAILABLE"
    finally:
        gw.stop()
        await runner.cleanup()
