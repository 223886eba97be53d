"""A gateway on a `redis+sentinel://` URL, against a real master, replica and sentinel.

It finds the master through the sentinel, keeps idempotency records and admin
state there, and after a failover follows the new master: a payment stored
before the failover is still replayed, and new ones are stored on the new master.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import redis

from gateway import redis_sentinel
from gateway.settings import SettingsError, load_settings
from loadtest.harness import Gateway, Proc, RedisServer, Upstreams, free_port
from tests.conftest import ADMIN_TOKEN, GOOD_PAYMENT

SERVICE = "orders-redis"
RECOVERY_S = 5.0  # after the sentinels name the new master


@dataclass
class Sentinel:
    proc: Proc
    port: int

    def ask(self, *command: str) -> object:
        client = redis.Redis(port=self.port, socket_timeout=2, decode_responses=True)
        try:
            return client.execute_command(*command)
        finally:
            client.close()

    def master_port(self) -> int:
        _, port = self.ask("SENTINEL", "get-master-addr-by-name", SERVICE)  # type: ignore[misc]
        return int(port)


def _start_sentinel(log_dir: Path, master_port: int) -> Sentinel:
    port = free_port()
    conf = log_dir / f"sentinel-{port}.conf"
    conf.write_text(f"port {port}\nbind 127.0.0.1\ndir {log_dir}\n"
                    f"sentinel monitor {SERVICE} 127.0.0.1 {master_port} 1\n"
                    f"sentinel down-after-milliseconds {SERVICE} 1000\n"
                    f"sentinel failover-timeout {SERVICE} 5000\n")
    proc = Proc(f"sentinel-{port}", ["redis-server", str(conf), "--sentinel"], log_dir)
    sentinel = Sentinel(proc, port)
    _wait(lambda: _answers(sentinel), 10, "sentinel did not start")
    return sentinel


def _answers(sentinel: Sentinel) -> bool:
    try:
        return sentinel.master_port() > 0
    except redis.RedisError:
        return False


def _wait(check: object, within_s: float, what: str) -> None:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError(what)


@dataclass
class Rig:
    master: RedisServer
    replica: RedisServer
    sentinel: Sentinel
    gateway: Gateway


@pytest.fixture
def rig(log_dir: Path, upstreams: Upstreams) -> Iterator[Rig]:
    master = RedisServer(log_dir)
    # Stream the first full sync at once (Redis waits 5 s by default for more replicas).
    redis.Redis(port=master.port).config_set("repl-diskless-sync-delay", 0)
    replica = RedisServer(log_dir, replica_of=master.port)
    sentinel = _start_sentinel(log_dir, master.port)
    gateway = None
    try:
        url = f"redis+sentinel://127.0.0.1:{sentinel.port}/{SERVICE}"
        gateway = Gateway(log_dir, upstreams.urls, config={"redis": {"url": url}},
                          env={"GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN})
        yield Rig(master, replica, sentinel, gateway)
    finally:
        if gateway is not None:
            gateway.stop()
        sentinel.proc.stop()
        replica.stop()
        master.stop()


async def _pay(http: aiohttp.ClientSession, gw: Gateway, key: str) -> aiohttp.ClientResponse:
    async with http.post(gw.url + "/v1/payments", json=GOOD_PAYMENT,
                         headers={"Idempotency-Key": key}) as resp:
        await resp.read()
        return resp


def test_sentinel_urls_parse_with_defaults_and_refuse_what_they_lack() -> None:
    target = redis_sentinel.parse("redis+sentinel://u:p%40ss@a:26380,b/svc/3")
    assert target == redis_sentinel.SentinelTarget((("a", 26380), ("b", 26379)), "svc", 3,
                                                   "u", "p@ss")
    assert redis_sentinel.parse("redis://localhost:6379/0") is None
    for bad in ("redis+sentinel://a:1", "redis+sentinel:///svc", "redis+sentinel://a/s/1/x"):
        with pytest.raises(ValueError):
            redis_sentinel.parse(bad)


@pytest.mark.slow
async def test_the_gateway_follows_the_master_through_a_failover(
        rig: Rig, http: aiohttp.ClientSession) -> None:
    before = str(uuid.uuid4())
    assert (await _pay(http, rig.gateway, before)).status == 201
    replay = await _pay(http, rig.gateway, before)
    assert replay.headers.get("Idempotent-Replayed") == "true"
    # Admin state goes through the sentinel too (redis-py's client).
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with http.get(rig.gateway.url + "/admin/maintenance", headers=auth) as resp:
        assert resp.status == 200

    # Once the replica holds the record and the sentinel knows it, the master dies.
    replica = redis.Redis(port=rig.replica.port)
    try:
        _wait(lambda: replica.dbsize() >= 1, 20, "the replica never caught up")
        _wait(lambda: bool(rig.sentinel.ask("SENTINEL", "replicas", SERVICE)), 20,
              "the sentinel never saw the replica")
        rig.master.kill()
        _wait(lambda: rig.sentinel.master_port() == rig.replica.port, 30, "no failover")

        # Right after the switch the sentinel may not vouch for the new master yet:
        # clients get the retryable STATE_UNAVAILABLE for a moment, then it works.
        after, started = str(uuid.uuid4()), time.monotonic()
        statuses = [(await _pay(http, rig.gateway, after)).status]
        while statuses[-1] == 503 and time.monotonic() - started < RECOVERY_S:
            await asyncio.sleep(0.1)
            statuses.append((await _pay(http, rig.gateway, after)).status)
        assert statuses[-1] == 201 and set(statuses) <= {201, 503}, statuses
        print(f"after the failover: {statuses.count(503)} x 503 STATE_UNAVAILABLE, then 201"
              f" {time.monotonic() - started:.2f} s after the sentinel named the new master")
        replay = await _pay(http, rig.gateway, before)
        assert replay.status == 201 and replay.headers.get("Idempotent-Replayed") == "true"
        assert replica.dbsize() >= 2, "both records live on the promoted replica"
    finally:
        replica.close()


def test_settings_take_a_sentinel_url_and_refuse_a_broken_one() -> None:
    good = load_settings(env={"GATEWAY_REDIS_URL": "redis+sentinel://s1,s2:26380/svc"})
    assert good.redis.url == "redis+sentinel://s1,s2:26380/svc"
    with pytest.raises(SettingsError, match=r"redis\.url"):
        load_settings(env={"GATEWAY_REDIS_URL": "redis+sentinel://s1"})
