"""Personal data (names, mobile numbers, resident IDs) never appears in full in logs,
metrics, error bodies or the shared store."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import redis

from gateway.contract.schemas import resident_id_check_char
from loadtest.harness import Gateway, RedisServer, Upstreams
from tests.conftest import ADMIN_TOKEN


def _resident_id(first17: str) -> str:
    return first17 + resident_id_check_char(first17)


# Test customers used nowhere else, so any trace of them comes from this run.
CUSTOMERS: list[dict[str, str]] = [
    {"name": "欧阳测试明", "phone": "13912345678", "id_number": _resident_id("44030619850723411")},
    {"name": "Zoë Privacy-Probe", "phone": "+8615087654321",
     "id_number": _resident_id("31010419900101123")},
    # Full-width, as some phone keyboards send it.
    {"name": "司马　隐私", "phone": "１８６ ２２３３ ４４５５",
     "id_number": _resident_id("11010819771212004")},
]


def _needles() -> set[str]:
    """Every form of the customers' data that would be a leak."""
    found = set()
    for customer in CUSTOMERS:
        for value in customer.values():
            normal = privacy_normal(value)
            found |= {value, normal, normal[-11:] if normal.isdigit() else normal}
        found.add(customer["id_number"].lower())
    return {needle for needle in found if len(needle) >= 6}


def privacy_normal(value: str) -> str:
    from gateway.contract.schemas import normalise_text

    text: str = normalise_text(value)
    return text.replace(" ", "").removeprefix("+86") if any(c.isdigit() for c in text) else text


async def _traffic(gw: Gateway, upstreams: Upstreams, http: aiohttp.ClientSession) -> list[bytes]:
    """A run touching every path a request can take; returns the gateway-made error bodies."""
    problems: list[bytes] = []

    async def call(method: str, path: str, **kwargs: Any) -> None:
        async with http.request(method, gw.url + path, **kwargs) as resp:
            body = await resp.read()
            if resp.content_type == "application/problem+json":
                problems.append(body)

    for customer in CUSTOMERS:
        order = {"customer": customer, "product": "fiber-500", "address": "上海市浦东新区 99 号"}
        key = str(uuid.uuid4())
        for _ in range(2):  # stored, then replayed
            await call("POST", "/v1/orders", json=order, headers={"Idempotency-Key": key})
        bad_id = {**customer, "id_number": customer["id_number"][:-1] + "0"}
        await call("POST", "/v1/orders", json={**order, "customer": bad_id},
                   headers={"Idempotency-Key": str(uuid.uuid4())})
        await call("POST", "/v1/orders", json={**order, "customer": {**customer, "phone": "12"}},
                   headers={"Idempotency-Key": str(uuid.uuid4()), "Accept-Language": "zh-CN"})
        await call("POST", "/v1/orders", json={**order, "extra": customer["name"]},
                   headers={"Idempotency-Key": str(uuid.uuid4())})
        await call("POST", "/v1/orders", data=str(order), headers={
            "Idempotency-Key": key, "Content-Type": "application/json"})
        digits = privacy_normal(customer["phone"])
        await call("GET", f"/v1/orders/{digits}")  # a phone typed where an order id goes
        await call("GET", f"/v1/orders/{customer['id_number']}")
        await call("DELETE", f"/v1/orders/{customer['id_number']}")
        await call("GET", f"/v1/{customer['phone']}")
        await call("GET", "/v1/availability", params={"address": customer["name"],
                                                      "product": digits})
        await call("GET", "/v1/orders/x", headers={"X-Client-ID": digits,
                                                   "X-Request-ID": customer["id_number"]})
    upstreams.set_faults("order", error_rate=1.0, error_status=500)
    try:
        await call("POST", "/v1/orders", json={"customer": CUSTOMERS[0], "product": "p",
                                               "address": "a"},
                   headers={"Idempotency-Key": str(uuid.uuid4())})
    finally:
        upstreams.heal()
    return problems


async def test_a_full_run_leaves_no_personal_data_behind(
        log_dir: Path, upstreams: Upstreams, redis_server: RedisServer,
        http: aiohttp.ClientSession) -> None:
    gw = Gateway(log_dir, upstreams.urls, config={"server": {"log_level": "debug"}},
                 env={"GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN, "GATEWAY_REDIS_URL": redis_server.url})
    try:
        problems = await _traffic(gw, upstreams, http)
        async with http.get(gw.url + "/metrics") as resp:
            metrics = await resp.text()
    finally:
        gw.stop()
    await asyncio.sleep(0)
    codes = {orjson.loads(body)["code"] for body in problems}
    assert codes >= {"VALIDATION_FAILED", "MALFORMED_JSON", "NOT_FOUND", "METHOD_NOT_ALLOWED",
                     "UPSTREAM_UNAVAILABLE"}, codes
    stored = redis.Redis.from_url(redis_server.url)
    store_text = " ".join(str(stored.hgetall(k)) for k in stored.scan_iter("og:idem*")
                          if stored.type(k) == b"hash")
    stored.close()
    places = {"gateway log": gw.proc.log_text(), "metrics": metrics,
              "error bodies": b"\n".join(problems).decode(), "stored records": store_text,
              "simulator log": upstreams.proc.log_text()}
    assert "*******5678" in places["gateway log"]  # the masked form is what support sees
    for needle in sorted(_needles()):
        for place, text in places.items():
            assert needle not in text, f"{needle!r} found in the {place}"
