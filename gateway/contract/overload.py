"""Overload protection past admission (`admission.py`): a bulkhead per backend, and deadlines.

- **Bulkheads.** Each backend may have `max_concurrent` calls in flight and
  `max_queue` more waiting for a slot; beyond that, `503 OVERLOADED` at once. A hung
  backend can hold only its own slots, so the other backends' routes keep serving.
- **Deadlines.** Every request has an overall budget (`overload.request_deadline_s`),
  which a client may shorten, never lengthen, with `X-Request-Timeout-Ms`. Time
  spent queueing for a bulkhead slot counts against it, and each backend call
  gets at most what is left of it.
"""

from __future__ import annotations

import asyncio
from collections import deque

from gateway.contract import errors
from gateway.contract.errors import GatewayError
from gateway.contract.field_errors import invalid_field

DEADLINE_HEADER = "X-Request-Timeout-Ms"


class Unlimited:
    """A bulkhead that never refuses, when overload protection is switched off."""

    active = 0
    queued = 0

    async def acquire(self, deadline: float) -> bool:
        return False

    def release(self) -> None:
        return None


class Bulkhead:
    """At most `limit` calls to one backend at once, and at most `queue` waiting, in order."""

    def __init__(self, name: str, limit: int, queue: int) -> None:
        self.name = name
        self._limit = limit
        self._queue = queue
        self.active = 0
        self._waiting: deque[asyncio.Future[None]] = deque()

    @property
    def queued(self) -> int:
        return len(self._waiting)

    async def acquire(self, deadline: float) -> bool:
        """Take a slot, waiting at most until `deadline` (loop time); True if it had to queue.

        Raises OVERLOADED when the queue is full or the deadline passes in it.
        """
        if self.active < self._limit and not self._waiting:
            self.active += 1
            return False
        if len(self._waiting) >= self._queue:
            raise GatewayError(errors.OVERLOADED, params={"backend": self.name})
        loop = asyncio.get_running_loop()
        slot: asyncio.Future[None] = loop.create_future()
        self._waiting.append(slot)
        try:
            async with asyncio.timeout_at(deadline):
                await slot
        except TimeoutError:
            self._forget(slot)
            raise GatewayError(errors.OVERLOADED, params={"backend": self.name}) from None
        except asyncio.CancelledError:
            self._forget(slot)
            raise
        return True

    def _forget(self, slot: asyncio.Future[None]) -> None:
        if slot.done() and not slot.cancelled():
            self.release()  # the slot was handed over just as we gave up: pass it on
        else:
            slot.cancel()
            if slot in self._waiting:
                self._waiting.remove(slot)

    def release(self) -> None:
        """Hand the slot to the first waiter still waiting, or give it back."""
        while self._waiting:
            slot = self._waiting.popleft()
            if not slot.done():
                slot.set_result(None)
                return
        self.active -= 1


def deadline_of(started: float, default_s: float, sent: str | None) -> float:
    """The request's deadline in loop time: the default, or sooner if the client asks."""
    if sent is None:
        return started + default_s
    try:
        asked_ms = int(sent)
    except ValueError:
        asked_ms = 0
    if asked_ms <= 0:
        raise invalid_field(DEADLINE_HEADER, "must be a whole number of milliseconds above 0")
    return started + min(default_s, asked_ms / 1000)
