"""Idempotent resubmission of orders and payments.

Today: the `Idempotency-Key` header is required on the routes whose policy says
so, checked for sanity, and forwarded unchanged to the backend, which
deduplicates by (client scope, key). Records, replays and reconciliation of
unknown payment outcomes build on this.
"""

from __future__ import annotations

from gateway import errors
from gateway.errors import GatewayError
from gateway.validation import invalid_field

MAX_KEY_LENGTH = 255


def require_key(sent: str | None) -> str:
    if sent is None:
        raise GatewayError(errors.IDEMPOTENCY_KEY_MISSING)
    if not 0 < len(sent) <= MAX_KEY_LENGTH or not sent.isprintable():
        raise invalid_field("Idempotency-Key", f"must be 1-{MAX_KEY_LENGTH} printable characters")
    return sent
