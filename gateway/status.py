"""The public status page: maintenance windows and each backend's health.

Health comes from what the gateway itself saw of each backend: `up` while its
calls succeed, `degraded` after a failure, `down` after a run of failures.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from gateway.upstream import Upstream

CACHE_SECONDS = 2
# A run of failed calls this long means nothing gets through: `down`, not `degraded`.
DOWN_AFTER_CONSECUTIVE_FAILURES = 5


def backend_health(upstream: Upstream) -> str:
    failures = upstream.stats.consecutive_failures
    if failures == 0:
        return "up"
    return "down" if failures >= DOWN_AFTER_CONSECUTIVE_FAILURES else "degraded"


def snapshot(upstreams: Mapping[str, Upstream]) -> dict[str, Any]:
    backends = {name: {"health": backend_health(up)} for name, up in upstreams.items()}
    overall = "ok" if all(b["health"] == "up" for b in backends.values()) else "degraded"
    return {
        "status": overall,
        "maintenance": {"current": [], "scheduled": []},
        "backends": backends,
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
