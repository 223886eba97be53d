"""Who is calling: the request id to quote to support, and the client scope.

The client scope keys idempotency records and rate limits. Without API keys it
is the `X-Client-ID` header; clients that send none share one anonymous scope.
"""

from __future__ import annotations

import random
import re

from gateway import privacy
from gateway.field_errors import invalid_field

ANONYMOUS = "anonymous"
_SANE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def request_id(sent: str | None) -> str:
    """The client's request id if it is sane (no injection into logs or headers, nothing
    shaped like personal data, which it would carry into every log line), else a new one."""
    if sent and _SANE_ID.fullmatch(sent) and not privacy.looks_personal(sent):
        return sent
    # Not a secret, only unique enough to find one request in the logs: a draw from the
    # process's generator, not a system call for fresh entropy per request.
    return f"{random.getrandbits(64):016x}"


def is_sane_id(sent: str) -> bool:
    return _SANE_ID.fullmatch(sent) is not None


def client_scope(sent: str | None) -> str:
    if sent is None or sent == "":
        return ANONYMOUS
    if not _SANE_ID.fullmatch(sent):
        raise invalid_field("X-Client-ID", "must be 1-128 characters of A-Z a-z 0-9 . _ : -")
    return sent
