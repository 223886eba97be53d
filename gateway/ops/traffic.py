"""Backend traffic over the last 10 s, for the console: calls/s, failure rate, p99.

Read from what the gateway already measures, off the hot path: the housekeeping
timer samples the cumulative backend-call histogram (`Metrics.upstream_seconds`)
twice a second, and the figures are the difference between the newest sample
and the one about `WINDOW_S` before it. The p99 is the upper bound of the
histogram bucket it falls in. Figures are this process's.

It also keeps calls/s second by second for the last `RECENT` seconds, so that a console
opened now draws the last minute at once rather than a line that starts empty.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from gateway.contract.clock import Clock
from gateway.contract.observability import Metrics
from gateway.contract.routes import BACKENDS

WINDOW_S = 10.0
RECENT = 60  # seconds of calls/s kept for the console's sparklines
_RECENT_STEP_S = 1.0


@dataclass(slots=True)
class _Counts:
    calls: float = 0.0
    failures: float = 0.0
    buckets: dict[float, float] = field(default_factory=dict)  # upper bound -> cumulative


class Traffic:
    def __init__(self, metrics: Metrics, clock: Clock) -> None:
        self._metrics = metrics
        self._clock = clock
        # Nothing was called before the process started: its first sample.
        self._samples: deque[tuple[float, dict[str, _Counts]]] = deque(
            [(clock.monotonic(), {})])
        self._recent: dict[str, deque[float]] = {
            backend: deque([0.0] * RECENT, maxlen=RECENT) for backend in BACKENDS}
        self._stepped: tuple[float, dict[str, _Counts]] = self._samples[0]

    def sample(self) -> None:
        now = self._clock.monotonic()
        counts = self._read()
        self._samples.append((now, counts))
        self._step_recent(now, counts)
        # Keep the newest sample at least WINDOW_S old, and everything after it.
        while len(self._samples) > 2 and self._samples[1][0] <= now - WINDOW_S:
            self._samples.popleft()

    def _step_recent(self, now: float, counts: dict[str, _Counts]) -> None:
        then, before = self._stepped
        if now - then < _RECENT_STEP_S:
            return
        for backend, recent in self._recent.items():
            calls = counts.get(backend, _Counts()).calls - before.get(backend, _Counts()).calls
            recent.append(round(max(calls, 0.0) / (now - then), 2))
        self._stepped = (now, counts)

    def figures(self) -> dict[str, dict[str, Any]]:
        return {backend: {**figures, "recent_calls_per_s": list(self._recent[backend])}
                for backend, figures in self._window().items()}

    def _window(self) -> dict[str, dict[str, Any]]:
        zero = {"calls_per_s": 0.0, "failure_rate": 0.0, "p99_ms": 0.0}
        if len(self._samples) < 2:
            return {backend: dict(zero) for backend in BACKENDS}
        (start, old), (end, new) = self._samples[0], self._samples[-1]
        seconds = max(end - start, 1e-9)
        out: dict[str, dict[str, Any]] = {}
        for backend in BACKENDS:
            before, after = old.get(backend, _Counts()), new.get(backend, _Counts())
            calls = after.calls - before.calls
            if calls <= 0:
                out[backend] = dict(zero)
                continue
            out[backend] = {
                "calls_per_s": round(calls / seconds, 2),
                "failure_rate": round((after.failures - before.failures) / calls, 4),
                "p99_ms": _p99_ms(before, after, calls),
            }
        return out

    def _read(self) -> dict[str, _Counts]:
        counts: dict[str, _Counts] = {}
        for family in self._metrics.upstream_seconds.collect():
            for sample in family.samples:
                backend = sample.labels.get("backend", "")
                mine = counts.setdefault(backend, _Counts())
                if sample.name.endswith("_count"):
                    mine.calls += sample.value
                    if sample.labels.get("outcome") != "ok":
                        mine.failures += sample.value
                elif sample.name.endswith("_bucket"):
                    bound = float(sample.labels["le"])
                    mine.buckets[bound] = mine.buckets.get(bound, 0.0) + sample.value
        return counts


def _p99_ms(before: _Counts, after: _Counts, calls: float) -> float:
    wanted = 0.99 * calls
    finite = [b for b in sorted(after.buckets) if not math.isinf(b)]
    for bound in finite:
        if after.buckets[bound] - before.buckets.get(bound, 0.0) >= wanted:
            return bound * 1000
    return finite[-1] * 1000 if finite else 0.0
