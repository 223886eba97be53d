"""The stale cache as logic: answers kept, marked with their age, bounded; a fake clock."""

from __future__ import annotations

from gateway.backends.stale_cache import StaleCache
from gateway.contract.clock import FakeClock
from gateway.contract.reply import Reply

OK = Reply(200, b'{"available":true}', "application/json", (("Cache-Control", "no-cache"),))


def test_kept_answers_come_back_marked_with_their_age_until_too_old() -> None:
    clock = FakeClock()
    cache = StaleCache(clock, max_age_s=30, max_entries=10)
    cache.keep("a", OK)
    clock.advance(12.7)
    stale = cache.stale("a")
    assert stale is not None
    assert (stale.status, stale.body) == (OK.status, OK.body)
    assert dict(stale.headers) == {"Cache-Control": "no-cache", "X-Gateway-Stale": "true",
                                   "Age": "12"}
    clock.advance(20)
    assert cache.stale("a") is None
    assert len(cache) == 0


def test_only_successes_are_kept_and_the_cache_is_bounded() -> None:
    cache = StaleCache(FakeClock(), max_age_s=30, max_entries=3)
    cache.keep("refused", Reply(404, b"{}", "application/json"))
    assert cache.stale("refused") is None
    for key in "abcd":
        cache.keep(key, OK)
    assert len(cache) == 3
    assert cache.stale("a") is None and cache.stale("d") is not None
