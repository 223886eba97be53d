"""A backend's answer as a plain value: what the proxy returns and idempotency stores."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: bytes
    content_type: str
    # Only the response headers a client needs (see upstream.PASSTHROUGH_RESPONSE_HEADERS).
    headers: tuple[tuple[str, str], ...] = ()
