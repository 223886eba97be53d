"""The benchmark's load generators send what the benchmark says they send.

Against the real order simulator: a new Idempotency-Key per request (the
simulator counts POSTs per key), answers counted, and a paced round near its
rate. Both generators: wrk (installed by scripts/test.sh) and the Python
fallback.
"""

from __future__ import annotations

import json
import os

import pytest

from loadtest.harness import Upstreams
from loadtest.loadgen import Generator, Load, Wrk
from tests.conftest import GOOD_ORDER

CPUS = os.sched_getaffinity(0)


@pytest.fixture(params=["wrk", "python"])
def gen(request: pytest.FixtureRequest) -> Generator:
    return Wrk(4, CPUS) if request.param == "wrk" else Generator(4, CPUS)


def test_keyed_posts_carry_a_new_key_each(gen: Generator, upstreams: Upstreams) -> None:
    before = upstreams.stats("order")["requests_by_key"]
    load = Load(upstreams.urls["order"] + "/orders", method="POST", keyed=True,
                body=json.dumps(GOOD_ORDER, ensure_ascii=False))
    tally = gen.run(load, 1.0)
    keyed = {k: n for k, n in upstreams.stats("order")["requests_by_key"].items()
             if k not in before}
    assert tally.requests > 10 and tally.non_2xx == 0 and tally.errors == 0
    # Every key was new; requests still in flight when the round ended also arrived.
    assert set(keyed.values()) == {1}
    assert tally.requests <= len(keyed) <= tally.requests + gen.connections
    assert 0 < tally.p50_ms <= tally.p99_ms


def test_non_2xx_answers_are_counted(gen: Generator, upstreams: Upstreams) -> None:
    tally = gen.run(Load(upstreams.urls["order"] + "/orders/no-such-order"), 1.0)
    assert tally.requests > 0 and tally.non_2xx == tally.requests


def test_a_paced_round_keeps_near_its_rate(gen: Generator, upstreams: Upstreams) -> None:
    url = upstreams.urls["availability"] + "/availability?address=Beijing%201&product=fiber"
    tally = gen.run(Load(url, rate=100), 2.0)
    # Random gaps and the answer time make it a little under, never far over.
    assert 50 <= tally.rate <= 130, tally
