"""Every failure of a backend becomes a problem+json answer a client can act on, in time
(in-process, in front of the real simulators; a killed backend process and a raw-socket
backend are in tests/system/)."""

from __future__ import annotations

import time
import uuid
from typing import Any

import aiohttp
import pytest

from loadtest.harness import Upstreams
from tests.clients import AUTH, check_problem
from tests.conftest import GOOD_PAYMENT, NO_STALE_ANSWERS, InProcess, StartApp

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


@pytest.fixture
async def gateway(gateway_app: StartApp) -> InProcess:
    return await gateway_app(NO_STALE_ANSWERS)


@pytest.mark.parametrize("lang", ["en", "zh-CN"])
@pytest.mark.parametrize("fault", list(FAULTS))
async def test_read_and_payment_under_fault(fault: str, lang: str, gateway: InProcess,
                                            healthy: Upstreams,
                                            http: aiohttp.ClientSession) -> None:
    healthy.set_faults("availability", **FAULTS[fault])
    healthy.set_faults("payment", **FAULTS[fault])
    (read_status, read_code), (pay_status, pay_code) = EXPECTED[fault]
    headers = {"Accept-Language": lang}

    started = time.monotonic()
    async with http.get(gateway.url + AVAILABILITY, headers=headers) as resp:
        await check_problem(resp, read_status, read_code, lang, started)

    started = time.monotonic()
    async with http.post(gateway.url + "/v1/payments", json=GOOD_PAYMENT,
                         headers={**headers, "Idempotency-Key": str(uuid.uuid4())}) as resp:
        await check_problem(resp, pay_status, pay_code, lang, started)


async def test_gateway_recovers_when_backend_heals(gateway: InProcess, healthy: Upstreams,
                                                   http: aiohttp.ClientSession) -> None:
    healthy.set_faults("availability", reset_rate=1.0)
    async with http.get(gateway.url + AVAILABILITY) as resp:
        assert resp.status == 502
    healthy.heal()
    async with http.get(gateway.url + AVAILABILITY) as resp:
        assert resp.status == 200


async def test_one_failing_backend_leaves_the_others_alone(gateway: InProcess, healthy: Upstreams,
                                                           http: aiohttp.ClientSession) -> None:
    healthy.set_faults("payment", hang=True)
    async with http.get(gateway.url + AVAILABILITY) as resp:
        assert resp.status == 200
    async with http.get(gateway.url + "/v1/orders/ord_x") as resp:
        assert resp.status == 404
        assert (await resp.json())["code"] == "ORDER_NOT_FOUND"


async def test_status_page_reports_a_failing_backend(gateway: InProcess, healthy: Upstreams,
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
    async with http.post(gateway.url + "/admin/breakers/availability/reset",
                         headers=AUTH):
        pass
    async with http.get(gateway.url + AVAILABILITY) as resp:
        assert resp.status == 200
    async with http.get(gateway.url + "/v1/status") as resp:
        assert (await resp.json())["backends"]["availability"]["health"] == "up"
