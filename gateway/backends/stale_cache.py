"""Stale availability on failure: a recent answer instead of an error.

Successful answers of cacheable routes (availability) are kept, per route and
query, for at most `stale_cache.max_age_s`. Every request still goes to the
backend: the cache is only read when the backend fails or its breaker is open,
and then a kept answer no older than the limit is returned with
`X-Gateway-Stale: true` and `Age` (whole seconds) instead of the error. Whether
a product can be delivered to an address changes slowly, so a minute-old
answer serves a customer better than a 502; orders and payments are never
cached.

Bounded: at most `stale_cache.max_entries` answers, the least recently stored
dropped first. One per process; nothing is shared through the store.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable

from gateway.contract.clock import Clock
from gateway.contract.reply import Reply

STALE_HEADER = "X-Gateway-Stale"


class StaleCache:
    def __init__(self, clock: Clock, max_age_s: float, max_entries: int,
                 served: Callable[[], None] = lambda: None) -> None:
        self._clock = clock
        self._max_age_s = max_age_s
        self._max_entries = max_entries
        self._served = served  # counts each answer served stale
        self._answers: OrderedDict[Hashable, tuple[float, Reply]] = OrderedDict()

    def keep(self, key: Hashable, reply: Reply) -> None:
        if not 200 <= reply.status < 300:
            return
        answers = self._answers
        answers[key] = (self._clock.monotonic(), reply)
        answers.move_to_end(key)
        if len(answers) > self._max_entries:
            answers.popitem(last=False)

    def stale(self, key: Hashable) -> Reply | None:
        """The kept answer with the stale headers added, if it is young enough."""
        found = self._answers.get(key)
        if found is None:
            return None
        stored_at, reply = found
        age = self._clock.monotonic() - stored_at
        if age > self._max_age_s:
            del self._answers[key]
            return None
        headers = (*reply.headers, (STALE_HEADER, "true"), ("Age", str(int(age))))
        self._served()
        return Reply(reply.status, reply.body, reply.content_type, headers)

    def __len__(self) -> int:
        return len(self._answers)
