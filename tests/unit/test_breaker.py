"""The breaker's window arithmetic and state machine, driven by a fake clock: no sockets."""

from __future__ import annotations

import pytest

from gateway.backends.breaker import (
    Breaker,
    CallFigures,
    CallWindow,
    Outcome,
    Transition,
    trip_reason,
)
from gateway.contract.clock import FakeClock
from gateway.contract.errors import GatewayError
from gateway.contract.settings import BreakerSettings

S, F, X = Outcome.SUCCESS, Outcome.FAILURE, Outcome.IGNORED


def make(**settings: object) -> tuple[Breaker, FakeClock, list[Transition]]:
    clock = FakeClock()
    seen: list[Transition] = []
    base = {"minimum_calls": 10, "window_seconds": 10, "consecutive_failures": 100,
            "open_seconds": 5.0, "half_open_calls": 2, "failure_rate_threshold": 0.5,
            "slow_call_duration_ms": 1000, "slow_call_rate_threshold": 0.8}
    breaker = Breaker("payment", BreakerSettings(**(base | settings)), clock, seen.append)
    return breaker, clock, seen


def call(breaker: Breaker, clock: FakeClock, outcome: Outcome, seconds: float = 0.01) -> None:
    permit = breaker.acquire()
    clock.advance(seconds)
    breaker.release(permit, outcome)


def test_window_counts_and_expires() -> None:
    window = CallWindow(3)
    window.record(10.0, failed=True, slow=False)
    window.record(11.5, failed=False, slow=True)
    window.record(12.2, failed=False, slow=False)
    assert window.figures(12.9) == CallFigures(3, 1, 1)
    assert window.figures(13.0) == CallFigures(2, 0, 1)  # second 10 has left the window
    assert window.figures(100.0) == CallFigures(0, 0, 0)
    window.record(100.5, failed=True, slow=False)
    assert window.figures(100.5) == CallFigures(1, 1, 0)


def test_trip_reason_needs_minimum_calls() -> None:
    settings = BreakerSettings(minimum_calls=10, failure_rate_threshold=0.5)
    assert trip_reason(CallFigures(9, 9, 0), settings) is None
    assert trip_reason(CallFigures(10, 5, 0), settings) == "failure_rate"
    assert trip_reason(CallFigures(10, 4, 0), settings) is None
    assert trip_reason(CallFigures(10, 0, 8), settings) == "slow_call_rate"


def test_failure_rate_trips_after_minimum_calls() -> None:
    breaker, clock, seen = make()
    for _ in range(9):
        call(breaker, clock, F)
    assert breaker.state == "closed"
    call(breaker, clock, F)
    assert breaker.state == "open"
    assert seen[-1].reason == "failure_rate" and seen[-1].figures.calls == 10


def test_forty_percent_trips_on_rate_where_consecutive_counting_would_not() -> None:
    breaker, clock, _ = make(failure_rate_threshold=0.3, consecutive_failures=3,
                             minimum_calls=20)
    pattern = [F, S, F, S, S] * 4  # 40 % failures, never two in a row
    for outcome in pattern[:-1]:
        call(breaker, clock, outcome)
        assert breaker.state == "closed"
    call(breaker, clock, pattern[-1])
    assert breaker.state == "open"


def test_consecutive_failures_trip_before_minimum_calls() -> None:
    breaker, clock, seen = make(consecutive_failures=3)
    call(breaker, clock, F)
    call(breaker, clock, F)
    call(breaker, clock, S)  # resets the run
    call(breaker, clock, F)
    call(breaker, clock, F)
    assert breaker.state == "closed"
    call(breaker, clock, F)
    assert breaker.state == "open"
    assert seen[-1].reason == "consecutive_failures"


def test_slow_calls_trip() -> None:
    breaker, clock, seen = make(window_seconds=30)
    for _ in range(10):
        call(breaker, clock, S, seconds=1.5)
    assert breaker.state == "open"
    assert seen[-1].reason == "slow_call_rate"


def test_business_answers_and_cancellations_are_not_failures() -> None:
    breaker, clock, _ = make(consecutive_failures=2)
    for _ in range(30):
        call(breaker, clock, S)  # a backend 4xx is a success for the breaker
        call(breaker, clock, X)  # cancelled or refused before sending
    assert breaker.state == "closed"
    assert breaker.snapshot()["window"]["calls"] == 30


def test_open_rejects_with_retry_after_until_the_next_probe() -> None:
    breaker, clock, _ = make()
    for _ in range(10):
        call(breaker, clock, F)
    clock.advance(1.2)
    with pytest.raises(GatewayError) as caught:
        breaker.acquire()
    assert caught.value.spec.code == "CIRCUIT_OPEN"
    assert caught.value.retry_after == 4  # 5 s open, 1.2 s gone: ceil(3.8)
    assert breaker.snapshot()["window"]["next_probe_in_s"] == pytest.approx(3.8)


def trip(breaker: Breaker, clock: FakeClock) -> None:
    for _ in range(10):
        call(breaker, clock, F)
    assert breaker.state == "open"


def test_half_open_admits_a_bounded_number_of_concurrent_probes() -> None:
    breaker, clock, _ = make(half_open_calls=3)
    trip(breaker, clock)
    clock.advance(5)
    admitted, rejected = [], 0
    for _ in range(50):
        try:
            admitted.append(breaker.acquire())
        except GatewayError as err:
            assert err.spec.code == "CIRCUIT_OPEN"
            rejected += 1
    assert breaker.state == "half_open"
    assert len(admitted) == 3 and rejected == 47
    breaker.release(admitted[0], S)
    breaker.acquire()  # a finished probe frees its slot
    with pytest.raises(GatewayError):
        breaker.acquire()


def test_probe_failure_reopens() -> None:
    breaker, clock, seen = make()
    trip(breaker, clock)
    clock.advance(5)
    call(breaker, clock, F)
    assert breaker.state == "open"
    assert seen[-1].reason == "probe_failed"
    with pytest.raises(GatewayError):
        breaker.acquire()


def test_probe_successes_close_with_a_fresh_window() -> None:
    breaker, clock, seen = make(half_open_calls=2)
    trip(breaker, clock)
    clock.advance(5)
    call(breaker, clock, S)
    assert breaker.state == "half_open"
    call(breaker, clock, S)
    assert breaker.state == "closed"
    assert seen[-1].reason == "probes_succeeded"
    assert breaker.snapshot()["window"]["calls"] == 0
    assert [t.new for t in seen] == ["open", "half_open", "closed"]


def test_a_slow_probe_counts_as_failed() -> None:
    breaker, clock, _ = make()
    trip(breaker, clock)
    clock.advance(5)
    call(breaker, clock, S, seconds=2.0)
    assert breaker.state == "open"


def test_calls_started_before_a_transition_do_not_judge_the_new_state() -> None:
    breaker, clock, _ = make(consecutive_failures=1)
    old = breaker.acquire()
    call(breaker, clock, F)
    assert breaker.state == "open"
    clock.advance(5)
    probe = breaker.acquire()
    breaker.release(old, F)  # began while closed: must not reopen the half-open breaker
    assert breaker.state == "half_open"
    breaker.release(probe, S)


def test_forced_states_are_sticky_until_reset() -> None:
    breaker, clock, seen = make(consecutive_failures=1)
    breaker.force("open")
    clock.advance(60)
    with pytest.raises(GatewayError):
        breaker.acquire()
    assert breaker.state == "open"
    breaker.force("closed")
    for _ in range(20):
        call(breaker, clock, F)
    assert breaker.state == "closed"
    breaker.force(None)
    assert breaker.snapshot()["window"]["calls"] == 0
    call(breaker, clock, F)
    assert breaker.state == "open"
    assert {t.reason for t in seen} >= {"forced_open", "forced_closed"}


def test_settings_change_takes_effect_on_the_next_call() -> None:
    breaker, clock, _ = make()
    for _ in range(3):
        call(breaker, clock, F)
    breaker.update(breaker.settings.model_copy(update={"consecutive_failures": 4}))
    call(breaker, clock, F)
    assert breaker.state == "open"


class TestPybreakerTrapsTheWrapperAvoids:
    """pybreaker 1.4 behaviours that shaped gateway/backends/breaker.py; if one changes,
    revisit it."""

    async def test_decorating_an_async_function_records_success_before_it_runs(self) -> None:
        import pybreaker

        cb = pybreaker.CircuitBreaker(fail_max=1)

        @cb
        async def failing() -> None:
            raise RuntimeError

        coro = failing()  # the breaker saw a successful call returning a coroutine
        assert cb.current_state == "closed"
        with pytest.raises(RuntimeError):
            await coro
        assert cb.current_state == "closed" and cb.fail_counter == 0

    def test_call_async_needs_tornado(self) -> None:
        import pybreaker

        with pytest.raises(NameError):
            pybreaker.CircuitBreaker().call_async(lambda: None)

    async def test_calling_around_an_await_records_the_awaited_outcome(self) -> None:
        import asyncio

        import pybreaker

        cb = pybreaker.CircuitBreaker(fail_max=1, throw_new_error_on_trip=False)
        with pytest.raises(RuntimeError), cb.calling():
            await asyncio.sleep(0)
            raise RuntimeError
        assert cb.current_state == "open"

    def test_an_excluded_exception_counts_as_a_success(self) -> None:
        import pybreaker

        cb = pybreaker.CircuitBreaker(fail_max=2, exclude=[KeyError])
        with pytest.raises(ValueError), cb.calling():
            raise ValueError
        assert cb.fail_counter == 1
        with pytest.raises(KeyError), cb.calling():
            raise KeyError
        assert cb.fail_counter == 0  # the run of failures was reset by an "ignored" error

    def test_half_open_lets_every_concurrent_call_through(self) -> None:
        import pybreaker

        cb = pybreaker.CircuitBreaker(success_threshold=5)
        cb.half_open()
        entered = []
        with cb.calling():
            entered.append(1)
            with cb.calling():  # a second caller while the first probe is in flight
                entered.append(2)
        assert entered == [1, 2]


def test_held_back_for_says_what_acquire_would_refuse_with() -> None:
    """The refusal at arrival (gateway/pipeline/arrivals.py) asks this instead of acquiring."""
    breaker, clock, _ = make()
    assert breaker.held_back_for() is None  # closed: calls go ahead
    trip(breaker, clock)
    clock.advance(1.2)
    assert breaker.held_back_for() == pytest.approx(3.8)
    with pytest.raises(GatewayError) as caught:
        breaker.acquire()
    assert caught.value.retry_after == 4
    clock.advance(3.8)
    assert breaker.held_back_for() is None  # the next call is a probe: the usual way
    assert breaker.state == "open"  # asking changed nothing
    breaker.force("open")
    assert breaker.held_back_for() == 5.0
    breaker.force("closed")
    assert breaker.held_back_for() is None
