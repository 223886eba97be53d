"""Tracing across the process boundary: configured by the standard OTEL_* variables
alone, spans still batched are exported when the process is told to stop, access-log
lines carry the ids, and a dead collector costs neither requests nor a flooded log."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import orjson

from loadtest.harness import Gateway, Upstreams, free_port
from loadtest.otlp_receiver import Receiver

AVAILABILITY = "/v1/availability?address=Beijing&product=fiber-500"


def _otel(endpoint: str, **more: str) -> dict[str, str]:
    return {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
            "OTEL_SERVICE_NAME": "gateway-under-test", **more}


async def test_spans_batched_at_shutdown_are_exported_and_the_log_names_them(
        log_dir: Path, upstreams: Upstreams, receiver: Receiver,
        http: aiohttp.ClientSession) -> None:
    # A minute between exports: only the drain at shutdown can send these spans.
    gw = Gateway(log_dir, upstreams.urls, env=_otel(
        receiver.url, OTEL_TRACES_SAMPLER="always_on", OTEL_BSP_SCHEDULE_DELAY="60000"))
    try:
        for _ in range(5):
            async with http.get(gw.url + AVAILABILITY) as resp:
                assert resp.status == 200
        async with http.get(gw.url + "/healthz") as resp:
            assert resp.status == 200
        await asyncio.sleep(0.3)
        assert receiver.spans == [], "nothing exported before the batch is due"
    finally:
        code = await asyncio.to_thread(gw.stop)
    assert code == 0
    servers = [s for s in receiver.spans if s.kind == "server"]
    assert len(servers) == 5 and len(receiver.spans) == 10
    assert {s.service for s in servers} == {"gateway-under-test"}
    lines = [orjson.loads(line) for line in gw.proc.log_text().splitlines()
             if line.startswith("{") and '"route"' in line]
    traced = {(line["trace_id"], line["span_id"]) for line in lines
              if line["route"] == "/v1/availability"}
    assert traced == {(s.trace_id, s.span_id) for s in servers}
    assert all("trace_id" not in line for line in lines if line["route"] == "/healthz")


async def test_a_dead_collector_loses_spans_not_requests_and_is_logged_once(
        log_dir: Path, upstreams: Upstreams, http: aiohttp.ClientSession) -> None:
    gw = Gateway(log_dir, upstreams.urls, env=_otel(
        f"http://127.0.0.1:{free_port()}", OTEL_TRACES_SAMPLER="always_on",
        OTEL_BSP_SCHEDULE_DELAY="50", OTEL_EXPORTER_OTLP_TIMEOUT="1"))
    try:
        started = time.monotonic()
        for _ in range(60):
            async with http.get(gw.url + AVAILABILITY) as resp:
                assert resp.status == 200
            await asyncio.sleep(0.03)  # about two seconds: dozens of failed exports
        assert time.monotonic() - started < 10
    finally:
        await asyncio.to_thread(gw.stop)
    complaints = [line for line in gw.proc.log_text().splitlines()
                  if '"logger":"opentelemetry' in line]
    assert 1 <= len(complaints) <= 2, complaints
