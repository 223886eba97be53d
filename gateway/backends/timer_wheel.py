"""Deadlines without a timer each: one coarse timer wheel per process.

Every backend call has a deadline. With `asyncio.timeout` each call set a timer
in the event loop and cancelled it again: two loop operations and a handful of
objects per request, for a timer that almost never fires. Here a deadline is
an entry in a slot of `TICK_S`; one loop timer runs while any entry waits, and
at each tick expires the slots that are due. Adding and removing an entry are a
set operation each.

The price is precision: an entry expires up to one tick (plus the loop's lag)
after its deadline, never before. Backend timeouts are seconds, so a tick of
10 ms is noise; a client asking for a 1 ms deadline gets about 10 ms.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

TICK_S = 0.01


class Expiring(Protocol):
    """What an entry does when its deadline passes."""

    def expire(self) -> None: ...


class TimerWheel:
    """Entries by the tick their deadline falls in; one loop timer while any is waiting."""

    __slots__ = ("_count", "_handle", "_loop", "_next", "_per_s", "_slots", "_tick_s")

    def __init__(self, tick_s: float = TICK_S) -> None:
        self._tick_s = tick_s
        self._per_s = 1 / tick_s
        self._slots: dict[int, set[Expiring]] = {}
        self._count = 0  # entries waiting
        self._next = 0  # the first slot not yet expired
        self._handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def add(self, when: float, entry: Expiring) -> int:
        """Expire `entry` once loop time `when` has passed; returns its slot, for `remove`."""
        slot = int(when * self._per_s) + 1  # the first tick at or after `when`
        if self._handle is None:
            self._start(slot)
        elif slot < self._next:
            slot = self._next  # already due: the next tick
        entries = self._slots.get(slot)
        if entries is None:
            self._slots[slot] = {entry}
        else:
            entries.add(entry)
        self._count += 1
        return slot

    def remove(self, slot: int, entry: Expiring) -> None:
        entries = self._slots.get(slot)
        if entries is not None and entry in entries:
            entries.remove(entry)
            self._count -= 1

    def __len__(self) -> int:
        return self._count

    def _start(self, slot: int) -> None:
        loop = self._loop = asyncio.get_running_loop()
        now_slot = int(loop.time() * self._per_s)
        self._next = min(slot, now_slot + 1)
        self._handle = loop.call_at(self._next * self._tick_s, self._tick)

    def _tick(self) -> None:
        assert self._loop is not None
        now_slot = int(self._loop.time() * self._per_s)
        slots = self._slots
        due: list[Expiring] = []
        for slot in range(self._next, now_slot + 1):
            entries = slots.pop(slot, None)
            if entries:
                due.extend(entries)
        # Before expiring: an entry added by an `expire` goes to a slot still to come.
        self._next = now_slot + 1
        self._count -= len(due)
        for entry in due:
            entry.expire()
        # Empty slots left by removals are dropped as their tick passes; stop when none wait.
        if self._count:
            self._handle = self._loop.call_at(self._next * self._tick_s, self._tick)
        else:
            slots.clear()
            self._handle = None

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._slots.clear()
        self._count = 0
