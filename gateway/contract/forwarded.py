"""Which client headers reach a backend, and only when valid and within their limits.

A backend trusts what the gateway sends it, so a client's header is passed on only in
a shape its standard allows, never as raw bytes of any length:

- `traceparent` (W3C Trace Context): `00-<32 hex>-<16 hex>-<2 hex>` in lower case, the
  trace and parent ids not all zeros, version `ff` refused; any later version is read
  by its first four fields, as the specification asks.
- `tracestate`: only beside a valid `traceparent`, at most 512 bytes of printable ASCII.
- `Accept-Language`: at most 256 bytes of language ranges, q-values and list syntax.

A header that fails is dropped, never refused: the request goes on without it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

MAX_TRACESTATE_BYTES = 512
MAX_ACCEPT_LANGUAGE_BYTES = 256

_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_TRACESTATE = re.compile(r"[\x20-\x7e]*")
_ACCEPT_LANGUAGE = re.compile(r"[A-Za-z0-9*\-_.,;= \t]*")


def valid_traceparent(value: str) -> bool:
    return trace_parent(value) is not None


def trace_parent(value: str) -> tuple[int, int, int] | None:
    """A valid `traceparent`'s trace id, parent id and flags; None for any other value."""
    found = _TRACEPARENT.fullmatch(value)
    if found is None:
        return None
    version, trace_id, parent_id, flags, rest = found.groups()
    if version == "ff" or (version == "00" and rest is not None):
        return None
    if trace_id == "0" * 32 or parent_id == "0" * 16:
        return None
    return int(trace_id, 16), int(parent_id, 16), int(flags, 16)


def forwarded(sent: Mapping[str, str]) -> dict[str, str]:
    """The client's trace context and language, where valid, to send on to a backend."""
    headers: dict[str, str] = {}
    traceparent = sent.get("traceparent")
    if traceparent is not None and valid_traceparent(traceparent):
        headers["traceparent"] = traceparent
        tracestate = sent.get("tracestate")
        if (tracestate is not None and len(tracestate) <= MAX_TRACESTATE_BYTES
                and _TRACESTATE.fullmatch(tracestate)):
            headers["tracestate"] = tracestate
    language = sent.get("Accept-Language")
    if (language is not None and len(language) <= MAX_ACCEPT_LANGUAGE_BYTES
            and _ACCEPT_LANGUAGE.fullmatch(language)):
        headers["Accept-Language"] = language
    return headers
