"""The public status page: maintenance windows, each backend's health, the waiting room.

Health comes from the backend's breaker in this process: `down` while open,
`degraded` while half-open or with failures in its recent window, else `up`.
Every client may poll it, so the answer is rebuilt at most once a second,
except at once when the windows or a backend's health change, and carries
`Cache-Control`.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import orjson

from gateway.backends.upstream import Upstream
from gateway.contract.clock import Clock
from gateway.pipeline.maintenance import Maintenance
from gateway.pipeline.waiting_room import WaitingRoom

CACHE_SECONDS = 2  # what clients and shared caches may keep it for
REBUILD_SECONDS = 1.0  # what this process keeps it for


class StatusPage:
    def __init__(self, upstreams: Mapping[str, Upstream], maintenance: Maintenance,
                 room: WaitingRoom, clock: Clock) -> None:
        self._upstreams = upstreams
        self._maintenance = maintenance
        self._room = room
        self._clock = clock
        self._bodies: dict[str, bytes] = {}
        self._built_at = -1e9
        self._key: tuple[int, tuple[str, ...], tuple[Any, ...]] | None = None

    def body(self, lang: str) -> bytes:
        """The page with each window's `announcement` in `lang` (`errors.LANGUAGES`)."""
        now = self._clock.monotonic()
        # Health and the room are cheap to read and must show at once; the rest may be a
        # second old.
        key = (self._maintenance.version, self._health(), tuple(self._room.status().values()))
        if now - self._built_at >= REBUILD_SECONDS or key != self._key:
            self._bodies.clear()
            self._built_at, self._key = now, key
        body = self._bodies.get(lang)
        if body is None:
            body = self._bodies[lang] = orjson.dumps(self.snapshot(lang, key[1]))
        return body

    def _health(self) -> tuple[str, ...]:
        return tuple(upstream.breaker.health() for upstream in self._upstreams.values())

    def snapshot(self, lang: str = "en", health: tuple[str, ...] | None = None) -> dict[str, Any]:
        now = self._clock.wall()
        windows = [w.public(now) | {"announcement": w.message.get(lang)}
                   for w in self._maintenance.windows()]
        current = [w for w in windows if w["state"] == "current"]
        backends: dict[str, dict[str, Any]] = {}
        for name, state in zip(self._upstreams, health or self._health(), strict=True):
            backends[name] = {
                "health": state,
                "maintenance": any(w["scope"] in ("all", name) for w in current),
            }
        if current:
            overall = "maintenance"
        elif all(b["health"] == "up" for b in backends.values()):
            overall = "ok"
        else:
            overall = "degraded"
        return {
            "status": overall,
            "maintenance": {"current": current,
                            "scheduled": [w for w in windows if w["state"] == "scheduled"]},
            "backends": backends,
            "waiting_room": self._room.status(),
            "generated_at": datetime.fromtimestamp(now, UTC).isoformat(timespec="seconds"),
        }
