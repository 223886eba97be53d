"""The hardening issue's desync, tried through a real nginx that reuses its connections to
the gateway for other clients' requests (upstream keep-alive, bodies streamed as they
arrive), as an ingress tuned for throughput runs.

Attackers send the issue's stream (a POST whose body comes in two parts, the second
followed by the start of a head that is never finished, then a whole GET of a route under
maintenance) while honest clients read a route that is not under maintenance. What would
show a desync: an honest client answered with someone else's request id, a
`503 MAINTENANCE` on its route, or a 400 for its well-formed request. Bounded in tries and
time; each try is timed so that reads split where the stream's pieces do.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from loadtest.harness import Gateway, LoadBalancer, Upstreams
from tests.app.test_one_reading import ATTACK, Answer, _Answers, ask
from tests.conftest import ADMIN_TOKEN

pytestmark = pytest.mark.slow

TRIES = 1600  # attack streams in all (the probe hit 3 in 1,566)
ATTACKERS = 4
HONEST = 6
BUDGET_S = 60.0
PIECE_PAUSE_S = 0.004
# Large honest heads: the ingress's writes of them are split across the gateway's reads.
PAD = "".join(f"X-Pad-{i}: {'a' * 4000}\r\n" for i in range(4))
ATTACK_READ_S = 0.1  # what the attacker is told does not matter


@dataclass
class Seen:
    attacks: int = 0
    honest: int = 0
    wrong: list[tuple[str, Answer]] = field(default_factory=list)


@pytest.fixture
def ingress(log_dir: Path, upstreams: Upstreams) -> Iterator[LoadBalancer]:
    gw = Gateway(log_dir, upstreams.urls, env={"GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN})
    balancer = LoadBalancer(log_dir, [f"127.0.0.1:{gw.port}"], keepalive=True)
    try:
        gw.admin("PUT", "/admin/maintenance", ADMIN_TOKEN,
                 {"scope": "GET /v1/orders/{order_id}"})
        yield balancer
    finally:
        balancer.stop()
        gw.stop()


async def _attack(port: int, seen: Seen, deadline: float) -> None:
    loop = asyncio.get_running_loop()
    while seen.attacks < TRIES and loop.time() < deadline:
        seen.attacks += 1
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for piece in ATTACK:
                writer.write(piece)
                await writer.drain()
                await asyncio.sleep(PIECE_PAUSE_S)
            with contextlib.suppress(TimeoutError, ConnectionError):
                async with asyncio.timeout(ATTACK_READ_S):
                    while await reader.read(65536):
                        pass
        finally:
            writer.close()


async def _honest(port: int, n: int, seen: Seen, deadline: float) -> None:
    loop = asyncio.get_running_loop()
    connection = await asyncio.open_connection("127.0.0.1", port)
    i = 0
    try:
        while seen.attacks < TRIES and loop.time() < deadline:
            i += 1
            rid = f"p{n * 1_000_000 + i}"
            answer = await _ask(connection, f"GET /v1/payments/pay_{n} HTTP/1.1\r\nHost: gw\r\n"
                                            f"X-Request-ID: {rid}\r\n{PAD}\r\n".encode())
            if answer is None:  # the ingress ends a connection after so many requests
                connection[1].close()
                connection = await asyncio.open_connection("127.0.0.1", port)
                continue
            seen.honest += 1
            if answer.request_id != rid or answer.code == "MAINTENANCE" or answer.status == 400:
                seen.wrong.append((rid, answer))
    finally:
        connection[1].close()


async def _ask(connection: tuple[asyncio.StreamReader, asyncio.StreamWriter],
               request: bytes) -> Answer | None:
    """The answer to `request`; None if the connection was closed before one came."""
    answers = _Answers()
    try:
        if not await ask(*connection, request, answers):
            return None
    except ConnectionError:
        return None
    return answers.found[0]


def test_no_client_is_answered_for_another_through_a_reusing_ingress(
        ingress: LoadBalancer) -> None:
    async def main() -> Seen:
        seen = Seen()
        deadline = asyncio.get_running_loop().time() + BUDGET_S
        await asyncio.gather(*(_attack(ingress.port, seen, deadline) for _ in range(ATTACKERS)),
                             *(_honest(ingress.port, n, seen, deadline) for n in range(HONEST)))
        return seen

    seen = asyncio.run(main())
    print(f"{seen.attacks} attack streams, {seen.honest} honest requests")
    assert seen.attacks >= 100 and seen.honest >= 100, seen
    assert seen.wrong == []
