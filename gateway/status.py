"""The public status page: maintenance windows and each backend's health.

Health comes from the backend's breaker in this process: `down` while open,
`degraded` while half-open or with failures in its window, else `up`.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from gateway.upstream import Upstream

CACHE_SECONDS = 2


def snapshot(upstreams: Mapping[str, Upstream]) -> dict[str, Any]:
    backends = {name: {"health": up.breaker.health()} for name, up in upstreams.items()}
    overall = "ok" if all(b["health"] == "up" for b in backends.values()) else "degraded"
    return {
        "status": overall,
        "maintenance": {"current": [], "scheduled": []},
        "backends": backends,
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
