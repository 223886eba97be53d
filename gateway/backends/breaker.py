"""One circuit breaker per backend: the only module that touches pybreaker.

pybreaker keeps the state machine (closed, open, half-open), counts
consecutive failures (`fail_max`), counts probe successes (`success_threshold`)
and tells listeners of every transition. Around it, this wrapper adds what
pybreaker lacks or gets wrong for an asyncio gateway:

- a sliding window counted per second (O(1) per call) that trips on
  failure rate and slow-call rate once `minimum_calls` were seen;
- open -> half-open timed by an injected clock, not pybreaker's wall clock;
- at most `half_open_calls` concurrent probes (pybreaker lets every call through);
- outcomes are fed to pybreaker after the awaited call, synchronously, so its
  lock is never held across an await, and cancellation is simply not fed
  (pybreaker would count an excluded exception as a success);
- SRE overrides: settings changed at runtime, forced open / forced closed
  (sticky), reset to automatic with an empty window.

Breaker state is per process by design: each process judges the calls it makes.
"""

from __future__ import annotations

import enum
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import pybreaker

from gateway.backends.rolling import RollingCounts
from gateway.contract import errors
from gateway.contract.clock import Clock
from gateway.contract.errors import GatewayError
from gateway.contract.settings import BreakerSettings

log = logging.getLogger("gateway.breaker")

State = Literal["closed", "open", "half_open"]
Forced = Literal["open", "closed"] | None
_STATE_NAMES: dict[str, State] = {pybreaker.STATE_CLOSED: "closed", pybreaker.STATE_OPEN: "open",
                                  pybreaker.STATE_HALF_OPEN: "half_open"}


class Outcome(enum.Enum):
    SUCCESS = "success"
    FAILURE = "failure"
    # Cancelled, or refused before reaching the backend: says nothing about its health.
    IGNORED = "ignored"


@dataclass(frozen=True, slots=True)
class CallFigures:
    calls: int
    failures: int
    slow_calls: int

    @property
    def failure_rate(self) -> float:
        return self.failures / self.calls if self.calls else 0.0

    @property
    def slow_call_rate(self) -> float:
        return self.slow_calls / self.calls if self.calls else 0.0


class CallWindow:
    """Calls, failures and slow calls of the last `seconds` seconds (see `RollingCounts`)."""

    def __init__(self, seconds: int) -> None:
        self.seconds = seconds
        self._counts = RollingCounts(seconds, 3)

    def clear(self) -> None:
        self._counts.clear()

    def record(self, now: float, *, failed: bool, slow: bool) -> None:
        counts = self._counts
        counts.add(now, 0)
        if failed:
            counts.add(now, 1)
        if slow:
            counts.add(now, 2)

    def figures(self, now: float) -> CallFigures:
        self._counts.advance(now)
        return CallFigures(*self._counts.totals)


def trip_reason(figures: CallFigures, settings: BreakerSettings) -> str | None:
    """Why the window says the breaker should open, or None."""
    if figures.calls < settings.minimum_calls:
        return None
    if figures.failures and figures.failure_rate >= settings.failure_rate_threshold:
        return "failure_rate"
    if figures.slow_calls and figures.slow_call_rate >= settings.slow_call_rate_threshold:
        return "slow_call_rate"
    return None


@dataclass(frozen=True, slots=True)
class Transition:
    breaker: str
    old: State
    new: State
    reason: str
    figures: CallFigures


@dataclass(slots=True)
class Permit:
    """One admitted call; hand it back to `Breaker.release` exactly once."""

    started: float
    generation: int
    probe: bool


class _Failure(Exception):
    """Fed to pybreaker to record a failed call."""


class _Listener(pybreaker.CircuitBreakerListener):
    def __init__(self, owner: Breaker) -> None:
        self._owner = owner

    def state_change(self, cb: pybreaker.CircuitBreaker, old_state: Any, new_state: Any) -> None:
        old = _STATE_NAMES[old_state.name] if old_state is not None else "closed"
        self._owner._changed(old, _STATE_NAMES[new_state.name])


class Breaker:
    def __init__(self, name: str, settings: BreakerSettings, clock: Clock,
                 on_transition: Callable[[Transition], None] | None = None) -> None:
        self.name = name
        self.settings = settings
        self.forced: Forced = None
        self._clock = clock
        self._on_transition = on_transition
        self._window = CallWindow(settings.window_seconds)
        self._cb = pybreaker.CircuitBreaker(
            fail_max=settings.consecutive_failures, reset_timeout=settings.open_seconds,
            success_threshold=settings.half_open_calls, throw_new_error_on_trip=False,
            listeners=[_Listener(self)], name=name)
        self.opened_at: float | None = None  # monotonic
        self.opened_at_wall: float | None = None
        self._probes = 0
        self._generation = 0
        self._reason = ""

    # -- the call path -------------------------------------------------------

    @property
    def state(self) -> State:
        return _STATE_NAMES[self._cb.current_state]

    def acquire(self) -> Permit:
        """Admit a call, or raise CIRCUIT_OPEN with Retry-After until the next probe."""
        now = self._clock.monotonic()
        if self.forced == "open":
            raise self.rejection(self.settings.open_seconds)
        if self.forced is None:
            state = self.state
            if state == "open":
                waited = now - (self.opened_at or now)
                if waited < self.settings.open_seconds:
                    raise self.rejection(self.settings.open_seconds - waited)
                self._transition(self._cb.half_open, "open_period_elapsed")
                state = "half_open"
            if state == "half_open":
                if self._probes >= self.settings.half_open_calls:
                    raise self.rejection(1)
                self._probes += 1
                return Permit(now, self._generation, probe=True)
        return Permit(now, self._generation, probe=False)

    def holds_back(self) -> bool:
        """Whether calls are refused outright: forced open, or tripped and still within
        `open_seconds` (past it, the next call is a probe)."""
        return self.held_back_for() is not None

    def held_back_for(self) -> float | None:
        """Seconds until a call may go ahead (the Retry-After of `acquire`'s refusal) while
        calls are refused outright; None when the next call would go ahead or probe."""
        if self.forced is not None:
            return self.settings.open_seconds if self.forced == "open" else None
        if self.state != "open":
            return None
        left = self.settings.open_seconds - (self._clock.monotonic() - (self.opened_at or 0.0))
        return left if left > 0 else None

    def release(self, permit: Permit, outcome: Outcome) -> None:
        now = self._clock.monotonic()
        if permit.probe and permit.generation == self._generation:
            self._probes -= 1
        if outcome is Outcome.IGNORED:
            return
        failed = outcome is Outcome.FAILURE
        slow = (now - permit.started) * 1000 >= self.settings.slow_call_duration_ms
        self._window.record(now, failed=failed, slow=slow)
        if self.forced is not None or permit.generation != self._generation:
            # Forced states are sticky; a call begun in an earlier state does not
            # get to judge the current one.
            return
        state = self.state
        if state == "open":
            return
        if state == "half_open" and slow and not failed:
            failed = True  # a slow probe means the backend has not recovered
        if failed or state != "closed" or self._cb.fail_counter:
            # pybreaker only counts streaks: a success with no streak to end, in the
            # closed state (the common case), is left out to keep it cheap.
            self._feed(failed)
        if self.state == "closed":
            reason = trip_reason(self._window.figures(now), self.settings)
            if reason is not None:
                self._transition(self._cb.open, reason)

    def _feed(self, failed: bool) -> None:
        self._reason = "consecutive_failures" if self.state == "closed" else "probe_result"
        try:
            with self._cb.calling():
                if failed:
                    raise _Failure
        except (_Failure, pybreaker.CircuitBreakerError):
            pass

    def rejection(self, retry_after_s: float) -> GatewayError:
        """The CIRCUIT_OPEN refusal, telling the client to come back in `retry_after_s`."""
        return GatewayError(errors.CIRCUIT_OPEN, params={"backend": self.name},
                            retry_after_s=max(1, math.ceil(retry_after_s)))

    # -- transitions ---------------------------------------------------------

    def _transition(self, action: Callable[[], object], reason: str) -> None:
        self._reason = reason
        action()

    def _changed(self, old: State, new: State) -> None:
        """pybreaker's listener: every transition passes here."""
        now = self._clock.monotonic()
        figures = self._window.figures(now)
        self._generation += 1
        self._probes = 0
        if new == "open":
            self.opened_at, self.opened_at_wall = now, self._clock.wall()
        elif new == "closed":
            self.opened_at = self.opened_at_wall = None
            self._window.clear()
        reason = self._reason
        if reason == "probe_result":
            reason = "probes_succeeded" if new == "closed" else "probe_failed"
        transition = Transition(self.name, old, new, reason, figures)
        log.warning("breaker %s: %s -> %s", self.name, old, new, extra={"fields": {
            "breaker": self.name, "from": old, "to": new, "reason": reason,
            "calls": figures.calls, "failure_rate": round(figures.failure_rate, 3),
            "slow_call_rate": round(figures.slow_call_rate, 3)}})
        if self._on_transition is not None:
            self._on_transition(transition)

    # -- SRE control ---------------------------------------------------------

    def force(self, forced: Forced) -> None:
        """Force open or closed (sticky), or None: back to automatic, from a clean slate."""
        self.forced = forced
        if forced == "open":
            if self.state != "open":
                self._transition(self._cb.open, "forced_open")
        elif self.state != "closed":
            self._transition(self._cb.close, "forced_closed" if forced else "reset")
        if forced is None:
            self._window.clear()
            # pybreaker resets its consecutive count only on a transition to closed.
            self._cb._state_storage.reset_counter()

    def update(self, settings: BreakerSettings) -> None:
        if settings == self.settings:
            return
        self.settings = settings
        self._cb.fail_max = settings.consecutive_failures
        self._cb.reset_timeout = settings.open_seconds
        self._cb.success_threshold = settings.half_open_calls
        if settings.window_seconds != self._window.seconds:
            self._window = CallWindow(settings.window_seconds)

    def snapshot(self) -> dict[str, Any]:
        now = self._clock.monotonic()
        figures = self._window.figures(now)
        next_probe = None
        if self.state == "open" and self.forced is None and self.opened_at is not None:
            next_probe = max(0.0, round(self.opened_at + self.settings.open_seconds - now, 3))
        return {
            "name": self.name,
            "state": self.state,
            "forced": self.forced,
            "settings": self.settings.model_dump(),
            "window": {
                "calls": figures.calls, "failures": figures.failures,
                "slow_calls": figures.slow_calls,
                "failure_rate": round(figures.failure_rate, 4),
                "slow_call_rate": round(figures.slow_call_rate, 4),
                "consecutive_failures": self._cb.fail_counter,
                "opened_at": self.opened_at_wall,
                "next_probe_in_s": next_probe,
                "half_open_probes_in_flight": self._probes,
            },
        }

    def health(self) -> Literal["up", "degraded", "down"]:
        """For the public status page: open is down; half-open or recent failures, degraded."""
        state = self.state
        if state == "open":
            return "down"
        if state == "half_open" or self._window.figures(self._clock.monotonic()).failures:
            return "degraded"
        return "up"
