"""What every store shares: the one error a store raises when its backing store cannot
answer (`StoreUnavailable`; each concern decides what that means for it), and `follow`,
which keeps a process's view of shared state fresh on a timer.

Shared state is one small async interface per concern, each in a module of its own with
its in-memory implementation (the demo: one process) and its Redis one (every process and
replica sharing the Redis), which pass the same behaviour suite (tests/system/test_store.py).
Each operation is one atomic step of the backing store (a hash field set, a counter
increment, one script), never read-then-write across round trips, so two gateway
processes acting at once cannot undo each other's change. `stores.Stores` bundles one of
each.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger("gateway.store")


class StoreUnavailable(Exception):
    """The shared store could not be reached in time."""


async def follow(what: str, sync: Callable[[], Awaitable[None]], interval_s: float) -> None:
    """Run `sync` every `interval_s` for ever; a store outage keeps the last state seen."""
    failing = False
    while True:
        try:
            await sync()
            if failing:
                log.info("store reachable again", extra={"fields": {"following": what}})
            failing = False
        except StoreUnavailable as exc:
            if not failing:
                log.warning("store unreachable, keeping the last state seen",
                            extra={"fields": {"following": what, "error": str(exc)}})
            failing = True
        await asyncio.sleep(interval_s)
