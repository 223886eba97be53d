"""Every early answer is the full pipeline's answer: status, headers and body, byte for byte.

Generated over the route table, the settings variants under which the connection layer
answers at arrival (the defaults, an overload limit that does not move, rate limiting on,
API keys on) and the states that make it answer (a maintenance window on the route or its
backend, an open breaker, overload, and their combinations), in each language of the
catalog. Two gateways in this process, one with the answers at arrival and one without,
get the same request; their answers must be equal but for `Date` (and the random id of
a maintenance window). Each request is also checked to be answered at arrival exactly
where the rule says it may (`arrivals.refuses_early`, and overload for every plain GET),
so the test cannot pass by the fast lane standing aside.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httptools
import pytest
import uvloop

from gateway.contract.routes import ROUTES, RoutePolicy
from gateway.pipeline.arrivals import refuses_early
from tests.app.test_one_reading import (
    TUNED,
    Pair,
    Scenario,
    Served,
    _apply,
    _lift,
    ask,
    pair,
)

KEY = "k" * 40
KEYED = {"auth": {"api_keys": [{"client_id": "shop",
                                "key_sha256": hashlib.sha256(KEY.encode()).hexdigest()}]}}
VARIANTS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "overload held": TUNED,
    "rate limited": {**TUNED, "rate_limit": {"rate_per_s": 100_000, "burst": 100_000}},
    "api keys": {**TUNED, **KEYED},
}
LANGUAGES = ("en", "zh-CN,zh;q=0.9", "zh-TW")
_WINDOW_ID = re.compile(rb'"id":"mw-[0-9a-f]+"')


@dataclass
class Full:
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


class _Collect:
    def __init__(self) -> None:
        self.found: list[Full] = []
        self._now = Full()
        self.parser = httptools.HttpResponseParser(self)

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1").lower()
        if key != "date":
            self._now.headers[key] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self._now.body += body

    def on_message_complete(self) -> None:
        self._now.status = self.parser.get_status_code()
        # Each gateway names its own maintenance windows: the id is the only difference.
        self._now.body = _WINDOW_ID.sub(b'"id":"mw-?"', self._now.body)
        self.found.append(self._now)
        self._now = Full()


async def _ask(gw: Served, head: bytes) -> Full:
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    try:
        answers = _Collect()
        assert await ask(reader, writer, head, answers), "closed without an answer"
        return answers.found[0]
    finally:
        writer.close()


def _request(policy: RoutePolicy, n: int, language: str) -> bytes:
    """A plain request of the route, as a client sends it."""
    target = policy.path.replace("{order_id}", "ord_1").replace("{payment_id}", "pay_1")
    if policy.query_schema is not None:
        target += "?address=Beijing%201&product=fiber-500"
    lines = [f"{policy.method} {target} HTTP/1.1", "Host: gw", f"X-Request-ID: parity-{n}",
             f"Accept-Language: {language}", f"X-API-Key: {KEY}"]
    body = b""
    if policy.body_schema is not None:
        body = b"{}"
        lines += ["Content-Type: application/json", f"Idempotency-Key: parity-key-{n:08d}",
                  f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _scenarios(policy: RoutePolicy) -> Iterator[Scenario]:
    windows = (None, f"{policy.method} {policy.path}", policy.backend)
    for window, breaker, overload in itertools.product(windows, (None, policy.backend),
                                                       (False, True)):
        if window or breaker or overload:
            yield Scenario(window, breaker, overload)


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        yield runner.get_loop()


async def _parity(both: Pair, config_name: str) -> int:
    """Compare every route, state and language; the early answers the fast lane gave."""
    n = 0
    for policy in ROUTES:
        for scenario in _scenarios(policy):
            if scenario.overload and config_name == "defaults":
                continue  # the default limit follows the machine's delay: not held still
            held = [await _apply(gw, scenario, both.http) for gw in (both.fast, both.usual)]
            try:
                for language in LANGUAGES:
                    n += 1
                    head = _request(policy, n, language)
                    before = _early_answers(both.fast)
                    fast, usual = await _ask(both.fast, head), await _ask(both.usual, head)
                    where = (config_name, policy.route_key, scenario, language)
                    assert fast == usual, where
                    early = _early_answers(both.fast) - before == 1
                    assert early == _answered_early(policy, scenario, config_name), where
            finally:
                for gw, slots in zip((both.fast, both.usual), held, strict=True):
                    await _lift(gw, scenario, slots, both.http)
    return _early_answers(both.fast)


def _answered_early(policy: RoutePolicy, scenario: Scenario, variant: str) -> bool:
    """Where the fast lane answers: overload for every plain GET; a window or an open
    breaker where `refuses_early` says nothing before them could answer otherwise."""
    if policy.method != "GET":
        return False
    if scenario.overload:
        return True
    return refuses_early(policy, limited=variant == "rate limited", keyed=variant == "api keys",
                         stale=policy.cacheable)


def _early_answers(gw: Served) -> int:
    server = gw.runner.server
    assert server is not None
    return int(getattr(server, "early_answers"))  # noqa: B009 (an EdgeServer's counter)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_early_answer_is_the_pipelines_answer(loop: asyncio.AbstractEventLoop,
                                                    variant: str) -> None:
    async def main() -> int:
        async with pair(VARIANTS[variant]) as both:
            return await _parity(both, variant)

    early = loop.run_until_complete(main())
    # The fast lane answered: maintenance and breakers for the GETs by id by default,
    # overload for every plain GET when it is held; with limits or keys, overload only.
    assert early >= 20, early
