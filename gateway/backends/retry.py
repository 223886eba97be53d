"""Safe retries of backend calls: only what may be repeated, only what is worth it, bounded.

A call is retried only when repeating it can do no harm (a GET, or a POST
carrying an idempotency key to a backend that deduplicates by key), only after
a failure worth retrying (no connection, a connection reset before any answer,
or a 502/503/504 from the backend), after an exponential backoff with full
jitter, never when what is left of the request's deadline after the backoff
is too short for another attempt, and only while the backend's retry budget
allows: retries may add at most `budget_ratio` of the calls of the last ten
seconds (plus `min_retries_per_s`, so a quiet backend can still be retried).
Under an outage that caps the extra load retries add at that share, instead of
multiplying it.
"""

from __future__ import annotations

import random

from gateway.backends.rolling import RollingCounts
from gateway.contract.clock import Clock
from gateway.contract.settings import RetrySettings

BUDGET_WINDOW_S = 10
_CALLS, _RETRIES = 0, 1


class RetryBudget:
    """Calls and retries to one backend over the last ten seconds."""

    def __init__(self, settings: RetrySettings, clock: Clock) -> None:
        self._ratio = settings.budget_ratio
        self._floor = settings.min_retries_per_s * BUDGET_WINDOW_S
        self._clock = clock
        self._counts = RollingCounts(BUDGET_WINDOW_S, 2)  # calls, retries

    def called(self) -> None:
        self._counts.add(self._clock.monotonic(), _CALLS)

    def try_spend(self) -> bool:
        """Take one retry from the budget, if there is one left."""
        now = self._clock.monotonic()
        counts = self._counts
        counts.advance(now)
        if counts.totals[_RETRIES] >= max(self._floor, self._ratio * counts.totals[_CALLS]):
            return False
        counts.add(now, _RETRIES)
        return True


class Backoff:
    def __init__(self, settings: RetrySettings, rng: random.Random | None = None) -> None:
        self._base_s = settings.base_backoff_ms / 1000
        self._cap_s = settings.max_backoff_ms / 1000
        self._rng = rng or random.Random()

    def delay(self, retry: int) -> float:
        """Full jitter: uniform between 0 and the exponential step (AWS's recipe)."""
        return self._rng.uniform(0, min(self._cap_s, self._base_s * 2 ** retry))
