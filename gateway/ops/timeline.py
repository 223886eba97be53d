"""The shared timeline of an incident: what changed, when, why, and who did it.

Breaker transitions (with their reason and window figures), maintenance windows,
fault rules, waiting-room changes and every other admin action (with the actor
from `X-Admin-Actor`) are noted here. Noting is synchronous and costs an append
(breaker transitions fire in synchronous callbacks); the notes reach the store
on a timer (`FLUSH_S`), so every process sees every event within a second, in
Redis a list capped at `KEEP` events, newest first. Each event names the process
that recorded it: a breaker forced through the admin API changes on every
replica, so its transition appears once per process.
"""

from __future__ import annotations

import os
import socket
from typing import Any, Literal

import orjson

from gateway.contract.clock import Clock, iso_utc
from gateway.state.timeline_store import TimelineStore

Kind = Literal["breaker", "maintenance", "fault", "waiting_room", "admin"]
KEEP = 1000  # events kept, the newest
DEFAULT_LIMIT = 100
FLUSH_S = 0.2  # how often notes reach the store: well within the second the contract allows
PROCESS = f"{socket.gethostname()}:{os.getpid()}"


class Timeline:
    def __init__(self, store: TimelineStore, clock: Clock) -> None:
        self._store = store
        self._clock = clock
        self._pending: list[bytes] = []
        self._process = PROCESS

    def note(self, kind: Kind, summary: str, **fields: Any) -> None:
        """Record an event; it reaches the store on the next flush."""
        self._pending.append(orjson.dumps({
            "at": iso_utc(self._clock.wall()), "kind": kind, "summary": summary,
            "process": self._process, **fields}))

    async def flush(self) -> None:
        if not self._pending:
            return
        events, self._pending = self._pending, []
        try:
            await self._store.append(events, KEEP)
        except BaseException:
            self._pending[:0] = events  # kept for the next flush
            raise

    async def recent(self, limit: int) -> list[dict[str, Any]]:
        """The newest `limit` events, newest first (this process's unflushed ones too)."""
        await self.flush()
        return [orjson.loads(event) for event in await self._store.recent(limit)]
