"""Processes as operators run them: `demo`, graceful drain on SIGTERM, several workers."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

import aiohttp
import pytest

from loadtest.harness import BIN, Gateway, Proc, Upstreams, free_port
from tests.conftest import GOOD_ORDER


def _workers(pid: int) -> list[int]:
    """PIDs of the worker processes a supervisor started (not its helper processes)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == pid and b"spawn_main" in cmdline:
            found.append(int(stat.parent.name))
    return found


async def test_demo_serves_a_real_order_and_stops_cleanly(log_dir: Path,
                                                          http: aiohttp.ClientSession) -> None:
    port = free_port()
    demo = Proc("demo", [str(BIN / "order-gateway"), "demo", "--port", str(port)], log_dir)
    try:
        demo.wait_http(f"http://127.0.0.1:{port}/readyz")
        text = demo.log_text()
        assert f"http://127.0.0.1:{port}" in text
        token = re.search(r"admin token: (\S{16,})", text)
        assert token is not None
        # The console's address, signed in through the fragment (never sent to a server).
        assert f"http://127.0.0.1:{port}/admin/console#token={token.group(1)}" in text
        base = f"http://127.0.0.1:{port}"
        async with http.get(base + "/v1/availability",
                            params={"address": GOOD_ORDER["address"], "product": "fiber"}) as r:
            assert r.status == 200
        async with http.post(base + "/v1/orders", json=GOOD_ORDER,
                             headers={"Idempotency-Key": str(uuid.uuid4())}) as r:
            assert r.status == 201
            order = await r.json()
        payment = {"order_id": order["order_id"], "amount": 19900, "currency": "CNY",
                   "method": "wechat"}
        async with http.post(base + "/v1/payments", json=payment,
                             headers={"Idempotency-Key": str(uuid.uuid4())}) as r:
            assert r.status == 201
            assert (await r.json())["order_id"] == order["order_id"]
        assert '"route"' not in demo.log_text(), "no access log over the banner by default"
        demo.signal(signal.SIGTERM)
        assert demo.wait(timeout=15) == 0
    finally:
        demo.stop()


async def test_sigterm_drains_readyz_503_while_in_flight_request_completes(
        log_dir: Path, upstreams: Upstreams, healthy: Upstreams,
        http: aiohttp.ClientSession) -> None:
    gw = Gateway(log_dir, upstreams.urls, config={
        "server": {"drain_delay_s": 1.5, "drain_timeout_s": 10},
        "upstreams": {"order": {"timeout_s": 5.0}}})
    try:
        healthy.set_faults("order", latency_ms=2000)
        slow = asyncio.create_task(_post_order(http, gw.url))
        await asyncio.sleep(0.5)  # the slow request is now in flight at the backend
        gw.proc.signal(signal.SIGTERM)
        await asyncio.sleep(0.3)
        async with aiohttp.ClientSession() as fresh, fresh.get(gw.url + "/readyz") as resp:
            assert resp.status == 503
            assert (await resp.json())["status"] == "draining"
        async with http.get(gw.url + "/healthz") as resp:
            assert resp.status == 200
        status = await slow
        assert status == 201
        assert gw.proc.wait(timeout=15) == 0
        assert healthy.stats("order")["orders"] >= 1
    finally:
        gw.stop()


async def _post_order(http: aiohttp.ClientSession, base: str) -> int:
    async with http.post(base + "/v1/orders", json=GOOD_ORDER,
                         headers={"Idempotency-Key": str(uuid.uuid4())}) as resp:
        return resp.status


async def test_drain_timeout_bounds_shutdown(log_dir: Path, upstreams: Upstreams,
                                             healthy: Upstreams,
                                             http: aiohttp.ClientSession) -> None:
    gw = Gateway(log_dir, upstreams.urls, config={
        "server": {"drain_timeout_s": 1.0}, "upstreams": {"availability": {"timeout_s": 30}}})
    try:
        healthy.set_faults("availability", hang=True)
        hung = asyncio.create_task(http.get(gw.url + "/v1/availability?address=a&product=b"))
        await asyncio.sleep(0.3)
        started = time.monotonic()
        gw.proc.signal(signal.SIGTERM)
        assert gw.proc.wait(timeout=10) == 0
        assert time.monotonic() - started < 5
        hung.cancel()
    finally:
        gw.stop()


async def test_several_workers_share_the_port_and_stop_together(
        log_dir: Path, upstreams: Upstreams, healthy: Upstreams,
        http: aiohttp.ClientSession) -> None:
    gw = Gateway(log_dir, upstreams.urls, workers=2)
    try:
        deadline = time.monotonic() + 15
        while len(_workers(gw.proc.pid)) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        workers = _workers(gw.proc.pid)
        assert len(workers) == 2
        for _ in range(20):
            async with aiohttp.ClientSession() as fresh, fresh.get(
                    gw.url + "/v1/availability?address=a&product=b") as resp:
                assert resp.status == 200
        # Metrics are merged across workers: 20 requests however they were spread.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            async with http.get(gw.url + "/metrics") as resp:
                text = await resp.text()
            match = re.search(r'gateway_requests_total\{code="none",route="/v1/availability",'
                              r'status="200"\} (\S+)', text)
            if match and float(match.group(1)) >= 20:
                break
            await asyncio.sleep(0.2)
        assert match and float(match.group(1)) == 20
        gw.proc.signal(signal.SIGTERM)
        assert gw.proc.wait(timeout=15) == 0
        assert not any(Path(f"/proc/{pid}").exists() for pid in workers)
    finally:
        gw.stop()


@pytest.mark.parametrize("argv", [
    ["serve", "--host", "127.0.0.1", "--port", "{port}"],
    ["serve", "--host", "127.0.0.1", "--port", "{port}", "--workers", "2"],
    ["demo", "--port", "{port}"],
])
def test_a_port_in_use_is_one_clear_line_and_exit_1(argv: list[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([str(BIN / "order-gateway"),
                               *(a.format(port=port) for a in argv)],
                              capture_output=True, text=True, timeout=60,
                              env={**os.environ, "GATEWAY_CONFIG": ""})
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert "cannot listen" in output and "address already in use" in output
    assert "Traceback" not in output and "Unclosed" not in output


def _listen_backlog(port: int) -> int:
    """The accept queue's length of the socket listening on `port` (Send-Q in `ss -l`)."""
    out = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True,
                         check=True).stdout.split()
    return int(out[2])


def test_the_listen_backlog_is_a_setting_with_a_deep_default(
        log_dir: Path, upstreams: Upstreams, gateway: Gateway) -> None:
    somaxconn = int(Path("/proc/sys/net/core/somaxconn").read_text())
    assert _listen_backlog(gateway.port) == min(4096, somaxconn)
    tuned = Gateway(log_dir, upstreams.urls, config={"server": {"listen_backlog": 100}})
    try:
        assert _listen_backlog(tuned.port) == 100
    finally:
        tuned.stop()
