"""Counts over the last N seconds, kept per second: O(1) per record, totals kept.

Shared by the breaker's call window (calls, failures, slow calls) and the retry
budget (calls, retries). Scanning a list of past events instead fell to a fifth
of the bare proxy's throughput (docs/performance.md), so nothing here ever scans
more than the seconds that expired since the last record.
"""

from __future__ import annotations


class RollingCounts:
    """`kinds` counters, each the sum of its counts over the last `seconds` seconds."""

    def __init__(self, seconds: int, kinds: int) -> None:
        self.seconds = seconds
        self._counts = [[0] * seconds for _ in range(kinds)]  # [kind][second % seconds]
        self.totals = [0] * kinds
        self._head: int | None = None  # the newest second counted

    def clear(self) -> None:
        for counts in self._counts:
            counts[:] = [0] * self.seconds
        self.totals = [0] * len(self._counts)
        self._head = None

    def advance(self, now: float) -> int:
        """Drop the seconds that left the window; the index of `now`'s second."""
        second = int(now)
        if self._head is None:
            self._head = second
        else:
            for expired in range(self._head + 1, min(second, self._head + self.seconds) + 1):
                i = expired % self.seconds
                for kind, counts in enumerate(self._counts):
                    self.totals[kind] -= counts[i]
                    counts[i] = 0
            self._head = max(self._head, second)
        return second % self.seconds

    def add(self, now: float, kind: int) -> None:
        i = self.advance(now)
        self._counts[kind][i] += 1
        self.totals[kind] += 1
