"""The process harness (loadtest/harness.py): a port taken between being found free and
being bound starts the child again on another, instead of failing the test."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from loadtest import harness
from loadtest.harness import Gateway, RedisServer, Upstreams


@pytest.fixture
def taken_first(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """The first port handed out is one this test already listens on."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port: int = holder.getsockname()[1]
        real = harness.free_port
        handed: list[int] = []

        def first_taken() -> int:
            handed.append(port if not handed else real())
            return handed[-1]

        monkeypatch.setattr(harness, "free_port", first_taken)
        yield port


def test_ports_come_from_outside_the_ephemeral_range() -> None:
    ports = {harness.free_port() for _ in range(20)}
    assert all(port < harness._ephemeral_start() for port in ports)


def test_a_gateway_whose_port_was_taken_starts_on_another(
        taken_first: int, log_dir: Path, upstreams: Upstreams) -> None:
    gw = Gateway(log_dir, upstreams.urls)
    try:
        assert gw.port != taken_first
    finally:
        gw.stop()


def test_a_redis_whose_port_was_taken_starts_on_another(taken_first: int, log_dir: Path) -> None:
    server = RedisServer(log_dir)
    try:
        assert server.port != taken_first
    finally:
        server.stop()
