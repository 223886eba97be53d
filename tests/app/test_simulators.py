"""The simulators behave as the contract says the gateway's guarantees are tested against."""

from __future__ import annotations

import random
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from upstreams import availability, order, payment
from upstreams.faults import SimulatorState

PAY = {"order_id": "ord_1", "amount": 100, "currency": "CNY", "method": "card"}
Client = TestClient[web.Request, web.Application]


@pytest.fixture
async def pay(aiohttp_client: Any) -> Client:
    client: Client = await aiohttp_client(payment.build_app(SimulatorState(rng=random.Random(1))))
    return client


async def _stats(client: Client) -> dict[str, Any]:
    resp = await client.get("/_stats")
    data: dict[str, Any] = await resp.json()
    return data


async def test_payment_dedup_by_client_and_key(pay: Client) -> None:
    first = await pay.post("/payments", json=PAY, headers={"Idempotency-Key": "k1"})
    again = await pay.post("/payments", json=PAY, headers={"Idempotency-Key": "k1"})
    other_client = await pay.post("/payments", json=PAY,
                                  headers={"Idempotency-Key": "k1", "X-Client-ID": "c2"})
    assert first.status == again.status == other_client.status == 201
    assert await first.read() == await again.read()
    assert (await other_client.json())["payment_id"] != (await first.json())["payment_id"]
    stats = await _stats(pay)
    assert stats["charges"] == 2
    assert stats["charges_by_key"] == {"k1": 2}
    assert stats["requests"] == 3


async def test_payment_without_dedup_charges_again(pay: Client) -> None:
    await pay.put("/_faults", json={"dedup": False})
    for _ in range(3):
        assert (await pay.post("/payments", json=PAY, headers={"Idempotency-Key": "k"})).status \
            == 201
    assert (await _stats(pay))["charges_by_key"] == {"k": 3}


async def test_lookup_by_key(pay: Client) -> None:
    created = await pay.post("/payments", json=PAY, headers={"Idempotency-Key": "k9"})
    found = await pay.get("/payments", params={"idempotency_key": "k9"})
    assert found.status == 200
    assert await found.read() == await created.read()
    assert (await pay.get("/payments", params={"idempotency_key": "nope"})).status == 404
    other = await pay.get("/payments", params={"idempotency_key": "k9"},
                          headers={"X-Client-ID": "someone-else"})
    assert other.status == 404


async def test_payment_business_errors(pay: Client) -> None:
    poor = await pay.post("/payments", json={**PAY, "method": "balance", "amount": 1_000_001})
    assert poor.status == 402
    assert (await poor.json())["code"] == "INSUFFICIENT_BALANCE"
    odd = await pay.post("/payments", json={**PAY, "method": "cash"})
    assert odd.status == 422
    assert (await odd.json())["code"] == "UNSUPPORTED_PAYMENT_METHOD"
    assert (await _stats(pay))["charges"] == 0


async def test_error_rate_answers_without_processing(pay: Client) -> None:
    await pay.put("/_faults", json={"error_rate": 1.0, "error_status": 503})
    resp = await pay.post("/payments", json=PAY, headers={"Idempotency-Key": "k"})
    assert resp.status == 503
    assert (await resp.json())["code"] == "INJECTED_ERROR"
    stats = await _stats(pay)
    assert stats["charges"] == 0 and stats["requests"] == 1


async def test_reset_processes_then_drops_the_connection(pay: Client) -> None:
    await pay.put("/_faults", json={"reset_rate": 1.0})
    with pytest.raises(Exception, match=r"reset|closed|Disconnected"):
        await pay.post("/payments", json=PAY, headers={"Idempotency-Key": "k"})
    assert (await _stats(pay))["charges"] == 1


async def test_fault_validation_and_healing(pay: Client) -> None:
    for bad in ({"error_rate": 2}, {"hang": "yes"}, {"nonsense": 1}, {"latency_ms": -1}, [1]):
        assert (await pay.put("/_faults", json=bad)).status == 422
    resp = await pay.put("/_faults", json={"latency_ms": 5})
    assert (await resp.json())["latency_ms"] == 5
    assert (await (await pay.delete("/_faults")).json())["latency_ms"] == 0
    assert (await _stats(pay))["requests"] == 0  # control routes are not counted


async def test_order_business_errors_and_lookup(aiohttp_client: Any) -> None:
    client = await aiohttp_client(order.build_app(SimulatorState(rng=random.Random(1))))
    body = {"customer": {"name": "n", "phone": "13800138000", "id_number": "x"},
            "product": "fiber", "address": "a"}
    created = await client.post("/orders", json=body, headers={"Idempotency-Key": "o1"})
    assert created.status == 201
    found = await client.get("/orders", params={"idempotency_key": "o1"})
    assert await found.read() == await created.read()
    withdrawn = await client.post("/orders", json={**body, "product": "withdrawn-adsl"})
    assert withdrawn.status == 422
    conflict = await client.post("/orders", json={**body, "product": "conflict-x"})
    assert conflict.status == 409


async def test_availability_is_deterministic(aiohttp_client: Any) -> None:
    client = await aiohttp_client(availability.build_app(SimulatorState(rng=random.Random(1))))
    answers = [await (await client.get("/availability", params={
        "address": "上海 1 号", "product": "fiber"})).json() for _ in range(2)]
    assert answers[0] == answers[1]
    unknown = await client.get("/availability", params={"address": "unknown", "product": "x"})
    assert unknown.status == 404


async def test_same_seed_same_ids(aiohttp_client: Any) -> None:
    ids = []
    for _ in range(2):
        client = await aiohttp_client(payment.build_app(SimulatorState(rng=random.Random(42))))
        ids.append((await (await client.post("/payments", json=PAY)).json())["payment_id"])
    assert ids[0] == ids[1]
