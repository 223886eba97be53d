"""The hot path's pipelined Redis connection, against a real redis-server.

It must answer every caller with its own reply however many share a write, and
fail fast and clearly (never hang) when Redis is gone, stalled, refuses the
credentials or is not Redis at all; then recover by itself.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import hiredis
import pytest

from gateway.state.bucket_store import RATE_KEY
from gateway.state.common import StoreUnavailable
from gateway.state.redis.wire import Wire, WireError
from gateway.state.stores import redis_stores
from loadtest.harness import Proc, RedisServer, free_port


@pytest.fixture
def own_redis(log_dir: Path) -> Iterator[RedisServer]:
    server = RedisServer(log_dir)
    yield server
    server.stop()


@pytest.fixture
async def wire(redis_server: RedisServer) -> AsyncIterator[Wire]:
    connection = Wire(redis_server.url, timeout_s=1.0)
    yield connection
    connection.close()


async def test_concurrent_callers_each_get_their_own_reply(wire: Wire) -> None:
    await asyncio.gather(*(wire.call("SET", f"wire:{n}", n) for n in range(300)))
    values = await asyncio.gather(*(wire.call("GET", f"wire:{n}") for n in range(300)))
    assert values == [str(n).encode() for n in range(300)]


async def test_an_error_reply_is_returned_not_raised(wire: Wire) -> None:
    reply = await wire.call("EVALSHA", "0" * 40, 0)
    assert isinstance(reply, hiredis.ReplyError)
    assert str(reply).startswith("NOSCRIPT")
    assert await wire.call("PING") == b"PONG"


async def test_a_cancelled_caller_does_not_shift_the_others_replies(wire: Wire) -> None:
    await wire.call("SET", "wire:a", "a")
    await wire.call("SET", "wire:b", "b")
    doomed = asyncio.create_task(wire.call("GET", "wire:a"))
    kept = asyncio.create_task(wire.call("GET", "wire:b"))
    await asyncio.sleep(0)
    doomed.cancel()
    assert await kept == b"b"
    assert await wire.call("GET", "wire:a") == b"a"


async def test_nothing_listening_fails_at_once() -> None:
    wire = Wire(f"redis://127.0.0.1:{free_port()}/0", timeout_s=1.0)
    with pytest.raises(WireError, match="cannot connect"):
        await wire.call("PING")


async def test_a_killed_redis_fails_fast_and_a_restarted_one_is_used_again(
        own_redis: RedisServer) -> None:
    wire = Wire(own_redis.url, timeout_s=1.0)
    try:
        assert await wire.call("PING") == b"PONG"
        own_redis.kill()
        with pytest.raises(WireError):
            await asyncio.wait_for(wire.call("PING"), 2)
        own_redis.start()
        assert await wire.call("PING") == b"PONG"
    finally:
        wire.close()


async def test_a_stalled_redis_is_given_up_on_after_the_timeout(own_redis: RedisServer) -> None:
    wire = Wire(own_redis.url, timeout_s=0.3)
    try:
        assert await wire.call("PING") == b"PONG"
        own_redis.proc.signal(signal.SIGSTOP)
        try:
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(WireError, match="did not answer"):
                await asyncio.wait_for(wire.call("PING"), 5)
            assert loop.time() - started < 1.5
        finally:
            own_redis.proc.signal(signal.SIGCONT)
        assert await wire.call("PING") == b"PONG"
    finally:
        wire.close()


async def test_password_and_database_from_the_url(log_dir: Path) -> None:
    port = free_port()
    proc = Proc(f"redis-auth-{port}", ["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                                       "--save", "", "--requirepass", "s3cret"], log_dir)
    try:
        good = Wire(f"redis://:s3cret@127.0.0.1:{port}/3", timeout_s=1.0)
        for _ in range(50):
            try:
                await good.call("PING")
                break
            except WireError:
                await asyncio.sleep(0.1)
        await good.call("SET", "wire:db", "three")
        assert await good.call("SELECT", 3) == b"OK"
        assert await good.call("GET", "wire:db") == b"three"
        assert await good.call("SELECT", 0) == b"OK"
        assert await good.call("GET", "wire:db") is None
        good.close()
        bad = Wire(f"redis://:wrong@127.0.0.1:{port}/0", timeout_s=1.0)
        with pytest.raises(WireError, match="refused AUTH"):
            await bad.call("PING")
    finally:
        proc.stop()


async def test_a_server_that_is_not_redis_is_refused() -> None:
    async def babble(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)
        writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        await writer.drain()
        await reader.read(100)  # until the client hangs up
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(babble, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        wire = Wire(f"redis://127.0.0.1:{port}/0", timeout_s=1.0)
        with pytest.raises(WireError):
            await asyncio.wait_for(wire.call("PING"), 3)
    finally:
        server.close()
        await server.wait_closed()


class ReplyCutter:
    """A relay in front of a real Redis that can cut the connection when a reply comes back:
    the command reached Redis and ran, and its caller never hears of it."""

    def __init__(self, redis_port: int) -> None:
        self._redis_port = redis_port
        self.cut_next_reply = False
        self.port = 0
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _relay(self, client_in: asyncio.StreamReader,
                     client_out: asyncio.StreamWriter) -> None:
        self._connections.add(asyncio.current_task())  # type: ignore[arg-type]
        redis_in, redis_out = await asyncio.open_connection("127.0.0.1", self._redis_port)

        async def requests() -> None:
            while data := await client_in.read(65536):
                redis_out.write(data)

        async def replies() -> None:
            while data := await redis_in.read(65536):
                if self.cut_next_reply:
                    self.cut_next_reply = False
                    return
                client_out.write(data)

        pumps = [asyncio.create_task(requests()), asyncio.create_task(replies())]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            client_out.transport.abort()
            redis_out.transport.abort()
            client_out.close()
            redis_out.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for connection in list(self._connections):
            connection.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)


@pytest.fixture
async def cutter(redis_server: RedisServer) -> AsyncIterator[ReplyCutter]:
    relay = ReplyCutter(redis_server.port)
    await relay.start()
    yield relay
    await relay.close()


async def test_a_command_whose_reply_was_lost_is_not_sent_again(cutter: ReplyCutter) -> None:
    wire = Wire(f"redis://127.0.0.1:{cutter.port}", timeout_s=1.0)
    try:
        await wire.call("SET", "wire:runs", 0)
        cutter.cut_next_reply = True
        with pytest.raises(WireError):
            await wire.call("INCR", "wire:runs")
        assert await wire.call("GET", "wire:runs") == b"1", "ran once, never resent"
    finally:
        wire.close()


async def test_a_repeatable_command_whose_reply_was_lost_is_sent_once_more(
        cutter: ReplyCutter) -> None:
    wire = Wire(f"redis://127.0.0.1:{cutter.port}", timeout_s=1.0)
    try:
        cutter.cut_next_reply = True
        assert await wire.call("SET", "wire:again", "x", repeatable=True) == b"OK"
        with pytest.raises(WireError):
            cutter.cut_next_reply = True
            await wire.call("SET", "wire:again", "y")  # not said to be repeatable
    finally:
        wire.close()


async def test_a_group_whose_reply_was_lost_is_sent_again_whole(cutter: ReplyCutter) -> None:
    wire = Wire(f"redis://127.0.0.1:{cutter.port}", timeout_s=1.0)
    try:
        cutter.cut_next_reply = True
        group = [("SET", "wire:g1", "1"), ("SET", "wire:g2", "2"), ("GET", "wire:g1")]
        heard: list[tuple[int, object]] = []
        assert await wire.call_together(group, lambda i, r: heard.append((i, r))) == [
            b"OK", b"OK", b"1"]
        assert heard == [(0, b"OK"), (1, b"OK"), (2, b"1")], "each reply heard as it came"
    finally:
        wire.close()


async def test_a_lost_reply_takes_one_token_not_two(cutter: ReplyCutter) -> None:
    store = redis_stores(f"redis://127.0.0.1:{cutter.port}", timeout_s=1.0)
    direct = Wire(f"redis://127.0.0.1:{cutter.port}", timeout_s=1.0)
    try:
        await direct.call("DEL", RATE_KEY.format(scope="cut"))
        assert await store.buckets.take("cut", 0.001, 5) == 0  # 4 tokens left
        cutter.cut_next_reply = True
        with pytest.raises(StoreUnavailable):
            await store.buckets.take("cut", 0.001, 5)
        tokens = await direct.call("HGET", RATE_KEY.format(scope="cut"), "tokens")
        assert float(tokens) == pytest.approx(3, abs=0.01), "the script ran exactly once"
    finally:
        await store.close()
        direct.close()
