"""Time, injected: production reads the system clocks and sleeps on the event loop, tests
move a fake clock (and its sleeps move it: a wait bounded by a deadline ends in no time).

Two clocks, each for one purpose. Every *deadline* (a request's, a backend call's, a
connect's) is on the event loop's clock, the one its timers fire on (`call_at`, the timer
wheel): `loop_now` and `seconds_left` are the only readers of it. *Durations* measured for
people and metrics use `Clock.monotonic`, which is finer (uvloop's loop clock counts whole
milliseconds and stands still within one loop iteration)."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Literal, Protocol


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds on a clock that never goes back: for durations and deadlines."""

    def wall(self) -> float:
        """Unix time: for timestamps shown to people."""

    async def sleep(self, seconds: float) -> None:
        """Wait this long on the monotonic clock."""


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, start: float = 1_000.0) -> None:
        self._now = start

    def monotonic(self) -> float:
        return self._now

    def wall(self) -> float:
        return 1_800_000_000.0 + self._now

    def advance(self, seconds: float) -> None:
        self._now += seconds

    async def sleep(self, seconds: float) -> None:
        self.advance(max(0.0, seconds))
        await asyncio.sleep(0)  # others run, as they would meanwhile


def loop_now() -> float:
    """Now on the deadlines' clock (the running event loop's)."""
    return asyncio.get_running_loop().time()


def seconds_left(deadline: float) -> float:
    """Seconds until `deadline` (loop time); at or below 0 once it has passed."""
    return deadline - asyncio.get_running_loop().time()


def iso_utc(wall: float, timespec: Literal["seconds", "milliseconds"] = "milliseconds") -> str:
    """Unix time as ISO-8601 UTC with a `Z`, as every admin answer and event shows it."""
    return datetime.fromtimestamp(wall, UTC).isoformat(timespec=timespec).replace("+00:00", "Z")
