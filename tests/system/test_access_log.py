"""The access log of a real gateway process: one line per request, no bodies, no personal
data in the process's output."""

from __future__ import annotations

import asyncio
import uuid

import aiohttp
import orjson

from loadtest.harness import Gateway, Upstreams
from tests.conftest import GOOD_ORDER


def _key() -> dict[str, str]:
    return {"Idempotency-Key": str(uuid.uuid4())}


async def test_access_log_has_one_line_per_request_without_bodies(
        gateway: Gateway, healthy: Upstreams, http: aiohttp.ClientSession) -> None:
    rid = f"log-{uuid.uuid4().hex}"
    async with http.post(gateway.url + "/v1/orders", json=GOOD_ORDER,
                         headers={**_key(), "X-Request-ID": rid}) as resp:
        assert resp.status == 201
    for _ in range(40):  # the access log is flushed on a short timer
        lines = [line for line in gateway.proc.log_text().splitlines() if rid in line]
        if lines:
            break
        await asyncio.sleep(0.05)
    assert len(lines) == 1
    record = orjson.loads(lines[0])
    assert record["route"] == "/v1/orders" and record["status"] == 201
    log_text = gateway.proc.log_text()
    for secret in ("13800138000", "11010519491231002X", "张三"):
        assert secret not in log_text
