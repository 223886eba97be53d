"""Shared fixtures: one simulator process and one gateway for the suite, helpers for more.

Tests that change simulator faults use `upstreams` through `healthy`, which heals
every simulator and resets the shared gateway's breakers afterwards, so tests
never leak faults or open breakers into each other.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp import web

from gateway.app import build_app
from gateway.contract.settings import Settings
from gateway.state.fault_store import FAULTS_KEY
from gateway.state.room_store import ROOM_SECRET_KEY, ROOM_SETTINGS_KEY
from gateway.state.stores import Stores, memory_stores, redis_stores
from gateway.state.ticket_store import ROOM_KEYS
from loadtest.harness import (
    RUNNING,
    SHORT_TIMEOUTS,
    Gateway,
    RedisServer,
    Upstreams,
    merge,
    replicas_hold_writes,
    wait_until,
)
from loadtest.otlp_receiver import Receiver, receiver_app

ADMIN_TOKEN = "test-admin-token-0123456789"
GOOD_ORDER: dict[str, Any] = {
    "customer": {"name": "张三", "phone": "13800138000", "id_number": "11010519491231002X"},
    "product": "fiber-500",
    "address": "北京市朝阳区建国路 1 号",
}
GOOD_PAYMENT: dict[str, Any] = {"order_id": "ord_1", "amount": 9900, "currency": "CNY",
                                "method": "alipay"}
# For gateways whose tests watch backend failures reach the client: a kept availability
# answer would (rightly) be served instead. The stale cache has its own tests.
NO_STALE_ANSWERS: dict[str, Any] = {"stale_cache": {"max_entries": 0}}


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="session")
def upstreams(log_dir: Path) -> Iterator[Upstreams]:
    sims = Upstreams(log_dir)
    yield sims
    sims.proc.stop()


@contextmanager
def admin_gateway(log_dir: Path, upstreams: Upstreams,
                  config: dict[str, Any] | None = None) -> Iterator[Gateway]:
    """A gateway on these simulators with the suite's admin token, stopped afterwards."""
    gw = Gateway(log_dir, upstreams.urls, env={"GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN},
                 config=config)
    try:
        yield gw
    finally:
        gw.stop()


@contextmanager
def healed(upstreams: Upstreams, gw: Gateway) -> Iterator[Upstreams]:
    """Healthy simulators and `gw`'s breakers back to automatic, before and after."""
    upstreams.heal()
    gw.reset_breakers(ADMIN_TOKEN)
    try:
        yield upstreams
    finally:
        upstreams.heal()
        gw.reset_breakers(ADMIN_TOKEN)


@pytest.fixture(scope="session")
def gateway(log_dir: Path, upstreams: Upstreams) -> Iterator[Gateway]:
    with admin_gateway(log_dir, upstreams, NO_STALE_ANSWERS) as gw:
        yield gw


@pytest.fixture
def healthy(upstreams: Upstreams, gateway: Gateway) -> Iterator[Upstreams]:
    """Healthy simulators and closed breakers on the shared gateway, before and after."""
    with healed(upstreams, gateway) as sims:
        yield sims


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for proc in list(RUNNING):
            report.sections.append((f"log of {proc.name} (pid {proc.pid})", proc.log_tail()))


@dataclass(frozen=True)
class InProcess:
    """A gateway app served on a loopback port inside the test's own event loop: for contract
    behaviour that crosses no process boundary (the backends are the real simulators)."""

    url: str
    app: web.Application


StartApp = Callable[[dict[str, Any] | None], Awaitable[InProcess]]


@pytest.fixture
def gateway_app(aiohttp_server: Any, upstreams: Upstreams) -> StartApp:
    """Start `build_app` on these settings (merged over the suite's short timeouts, the
    simulators' URLs and the admin token), served by pytest-aiohttp's test server."""

    async def start(config: dict[str, Any] | None = None) -> InProcess:
        tree: dict[str, Any] = {
            "upstreams": {name: {"url": url, **SHORT_TIMEOUTS}
                          for name, url in upstreams.urls.items()},
            "admin": {"token": ADMIN_TOKEN}}
        merge(tree, config or {})
        app = build_app(Settings.model_validate(tree))
        server = await aiohttp_server(app)
        return InProcess(str(server.make_url("")).rstrip("/"), app)

    return start


@pytest.fixture
async def receiver(aiohttp_server: Any) -> Receiver:
    """A real OTLP/HTTP receiver in the test's event loop (`loadtest/otlp_receiver.py`)."""
    received = Receiver()
    server = await aiohttp_server(receiver_app(received))
    received.url = str(server.make_url("")).rstrip("/")
    return received


@pytest.fixture(scope="session")
def redis_server(log_dir: Path) -> Iterator[RedisServer]:
    server = RedisServer(log_dir)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def replicated_redis(log_dir: Path) -> Iterator[RedisServer]:
    """A master with one replica streaming from it, for writes that a replica must hold."""
    master = RedisServer(log_dir)
    replica = RedisServer(log_dir, replica_of=master.port)
    try:
        wait_until(lambda: replicas_hold_writes(master.port, 1), 20,
                   "the replica never came online")
        yield master
    finally:
        replica.stop()
        master.stop()


@pytest.fixture(params=["memory", "redis", "redis-replicated"])
async def stores(request: pytest.FixtureRequest) -> AsyncIterator[Stores]:
    """Every store of one kind, for the behaviour suites that run against each: memory,
    Redis alone, and a Redis master whose writes a replica must hold (`min_replica_acks`
    "auto" finds the replica, so every claim and answer goes through WAIT)."""
    if request.param == "memory":
        yield memory_stores()
        return
    server: RedisServer = request.getfixturevalue(
        "redis_server" if request.param == "redis" else "replicated_redis")
    # The session's Redis is shared by many tests; the waiting room's line is one per Redis.
    client = aioredis.Redis.from_url(server.url)
    await client.delete(*ROOM_KEYS, ROOM_SECRET_KEY, ROOM_SETTINGS_KEY, FAULTS_KEY)
    await client.aclose()
    shared = redis_stores(server.url, timeout_s=1.0)
    await shared.upkeep()  # as the app does at start: how many replicas must hold a write
    yield shared
    await shared.close()
