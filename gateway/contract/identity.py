"""Who is calling: the request id to quote to support, the client scope, the address.

The client scope keys idempotency records and rate limits. Without API keys it
is the `X-Client-ID` header; clients that send none share one anonymous scope.
The client's address is the peer's, or, when the peer is a trusted proxy
(`server.trusted_proxies`), the rightmost address in `X-Forwarded-For` that is not
one of those proxies: the one the last trusted hop saw. Addresses to its left were
written by whoever sent the request and prove nothing.
"""

from __future__ import annotations

import ipaddress
import random
import re
from collections.abc import Sequence

from gateway.contract import privacy
from gateway.contract.field_errors import invalid_field

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

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


def client_address(peer: str | None, forwarded_for: str | None,
                   trusted: Sequence[Network]) -> str:
    """The address of the client behind the trusted proxies (the peer's without them)."""
    if not trusted or peer is None or not _within(peer, trusted):
        return peer or "unknown"
    for hop in reversed((forwarded_for or "").split(",")):
        hop = hop.strip()
        if not _within(hop, trusted):
            return hop if _an_address(hop) else peer
    return peer  # every hop a proxy of ours: the request started at one


def _within(address: str, networks: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)


def _an_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def client_scope(sent: str | None) -> str:
    if sent is None or sent == "":
        return ANONYMOUS
    if not _SANE_ID.fullmatch(sent):
        raise invalid_field("X-Client-ID", "must be 1-128 characters of A-Z a-z 0-9 . _ : -")
    return sent
