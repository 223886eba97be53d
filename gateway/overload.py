"""Overload protection: admission control by priority, a bulkhead per backend, and deadlines.

- **Admission.** A global limit on proxied requests in flight (`overload.max_in_flight`).
  Each priority of the route table may fill only its share of it, so under
  overload the cheapest traffic to lose is refused first: availability browsing
  at `browse_share`, order and payment reads at `read_share`, order and payment
  submissions up to the whole limit. A refusal is `503 OVERLOADED` decided by one
  comparison, before the request is read: microseconds, not a backend round trip.
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

from gateway import errors
from gateway.errors import GatewayError
from gateway.field_errors import invalid_field
from gateway.routes import PRIORITY_BROWSE, PRIORITY_READ, PRIORITY_WRITE
from gateway.settings import OverloadSettings

DEADLINE_HEADER = "X-Request-Timeout-Ms"


class Admission:
    """How many proxied requests are in flight, and whether one more of a priority fits."""

    # No metric is touched per request: the in-flight gauge samples `in_flight`
    # (see app.py's housekeeping), which keeps shedding as cheap as it can be.
    def __init__(self, settings: OverloadSettings) -> None:
        total = settings.max_in_flight
        self._limits = {
            PRIORITY_BROWSE: max(1, int(total * settings.browse_share)),
            PRIORITY_READ: max(1, int(total * settings.read_share)),
            PRIORITY_WRITE: total,
        }
        self.in_flight = 0

    def limit(self, priority: int) -> int:
        return self._limits[priority]

    def enter(self, limit: int) -> bool:
        if self.in_flight >= limit:
            return False
        self.in_flight += 1
        return True

    def leave(self) -> None:
        self.in_flight -= 1


class Unlimited:
    """Admission and bulkhead both, when overload protection is switched off."""

    in_flight = 0
    active = 0
    queued = 0

    def limit(self, priority: int) -> int:
        return 0

    def enter(self, limit: int) -> bool:
        return True

    def leave(self) -> None:
        return None

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
