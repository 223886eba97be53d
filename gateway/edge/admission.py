"""Admission: how many proxied requests a process takes on, set by the queueing delay it measures.

A request waits twice before its handler runs: in the kernel until the event loop
reads its socket, and in the loop behind everything read before it. Counting
requests inside handlers sees neither, so under a crowd a process took on far
more than it could answer in time. Here:

- **Counted from arrival.** A request is counted as soon as the parser has read
  its head (the connection layer and `arrivals.py`) or, failing that, when its
  handler starts, until its answer. At most `limit` are counted at once; each
  priority may fill a share of it (browsing `browse_share`, reads `read_share`,
  submissions all of it), so the cheapest traffic to lose is refused first.
- **Limit set by measured delay.** Every `ADJUST_S` the limit is set again from
  the interval just gone: the mean sojourn (arrival to handler) of the requests
  started, and the event loop's lag (how late the adjusting timer fired). Above
  `queue_delay_target_ms`, the limit shrinks in proportion (target / delay, at
  most halved at once); after an interval in which a backend's bulkhead refused
  a request admitted here, by a tenth; otherwise, while requests are being
  refused, it grows by a tenth. It stays within `min_in_flight`..`max_in_flight`: the idea
  of Envoy's adaptive concurrency, with the queueing delay measured directly.
- **Stale requests.** A browse or read whose sojourn already exceeds
  `queue_delay_max_ms` is refused at its handler (CoDel's drop at dequeue): its
  client has waited long already, and serving it delays everyone behind it.
  Submissions are served however long they waited.

Nothing here touches a metric per request: the gauges sample `in_flight`,
`limit` and `delay_s` on the housekeeping timer.
"""

from __future__ import annotations

from gateway.contract.routes import PRIORITY_BROWSE, PRIORITY_READ, PRIORITY_WRITE
from gateway.contract.settings import OverloadSettings

ADJUST_S = 0.1  # CoDel's interval: long enough to see a standing queue, not a burst
_GROWTH = 0.1  # share of the limit added per quiet interval while refusing
_MAX_CUT = 0.5  # the deepest cut in one interval
_CONGESTION_CUT = 0.9  # the cut after an interval in which a bulkhead refused


class Admission:
    """Requests counted from arrival, against a limit per priority that follows the delay."""

    def __init__(self, settings: OverloadSettings) -> None:
        self._ceiling = float(settings.max_in_flight)
        self._floor = float(settings.floor_in_flight)
        self._shares = {PRIORITY_BROWSE: settings.browse_share,
                        PRIORITY_READ: settings.read_share, PRIORITY_WRITE: 1.0}
        self._target_s = settings.queue_delay_target_ms / 1000
        self.max_wait_s = settings.queue_delay_max_ms / 1000
        self.in_flight = 0
        self.limit = self._ceiling
        self.delay_s = 0.0  # the last interval's measured delay
        self._limits: dict[int, int] = {}
        self._set_limits()
        self._waited_s = 0.0
        self._started = 0
        self._refused = False
        self._congested = False

    def enter(self, priority: int) -> bool:
        """Count one more request of `priority`, if its share has room."""
        if self.in_flight >= self._limits[priority]:
            self._refused = True
            return False
        self.in_flight += 1
        return True

    def leave(self) -> None:
        self.in_flight -= 1

    def started(self, priority: int, waited_s: float) -> bool:
        """A handler starts `waited_s` after its request arrived; False: too late. Order
        and payment submissions are never too late: they are the last thing to shed."""
        self._waited_s += waited_s
        self._started += 1
        if waited_s > self.max_wait_s and priority != PRIORITY_WRITE:
            self._refused = True
            return False
        return True

    def congested(self) -> None:
        """A request admitted here was refused further on (a full bulkhead): taking on
        more would only buy more refusals, at the price of a handler each."""
        self._congested = True

    def adjust(self, lag_s: float) -> None:
        """Set the limit from the interval just gone (called every ADJUST_S)."""
        sojourn = self._waited_s / self._started if self._started else 0.0
        delay = max(sojourn, lag_s)
        if delay > self._target_s:
            cut = max(_MAX_CUT, self._target_s / delay)
            self.limit = max(self._floor, self.limit * cut)
        elif self._congested:
            self.limit = max(self._floor, self.limit * _CONGESTION_CUT)
        elif self._refused:
            self.limit = min(self._ceiling, self.limit * (1 + _GROWTH) + 1)
        self.delay_s = delay
        self._set_limits()
        self._waited_s, self._started = 0.0, 0
        self._refused = self._congested = False

    def _set_limits(self) -> None:
        self._limits = {priority: max(1, int(self.limit * share))
                        for priority, share in self._shares.items()}


class AdmitAll:
    """Admission when overload protection is switched off."""

    in_flight = 0
    limit = 0.0
    delay_s = 0.0

    def enter(self, priority: int) -> bool:
        return True

    def leave(self) -> None:
        return None

    def started(self, priority: int, waited_s: float) -> bool:
        return True

    def congested(self) -> None:
        return None

    def adjust(self, lag_s: float) -> None:
        return None
