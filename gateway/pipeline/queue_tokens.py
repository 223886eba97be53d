"""Waiting-room tickets and passes: signed, bound to the client scope, checked without Redis.

A ticket is `<number>.<signature>`, a pass `<expiry, epoch seconds>.<signature>`.
The signature is HMAC-SHA256 (truncated to 128 bits, base64url) over the kind,
the number and the client scope, so a ticket or pass works only for the client
it was issued to, and one altered in any byte is no ticket or pass at all. A
pass carries its own expiry, so every replica sharing the secret can check it
with nothing but the clock, even with Redis down.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

_MAX_CHARS = 64  # 15 digits, a dot and 22 signature characters fit well within
_SIGNATURE_BYTES = 16


class QueueTokens:
    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def ticket(self, number: int, scope: str) -> str:
        return f"{number}.{self._sign('ticket', number, scope)}"

    def ticket_number(self, token: str | None, scope: str) -> int | None:
        """The ticket's number, or None when it is not one of ours for this client."""
        return self._read("ticket", token, scope)

    def make_pass(self, expires_at: int, scope: str) -> str:
        return f"{expires_at}.{self._sign('pass', expires_at, scope)}"

    def pass_valid(self, token: str | None, scope: str, now: float) -> bool:
        return self.pass_expiry(token, scope, now) is not None

    def pass_expiry(self, token: str | None, scope: str, now: float) -> int | None:
        """When a valid pass of this client's expires (Unix seconds); None: no pass."""
        expires_at = self._read("pass", token, scope)
        return expires_at if expires_at is not None and now < expires_at else None

    def _sign(self, kind: str, number: int, scope: str) -> str:
        digest = hmac.digest(self._secret, f"{kind}|{number}|{scope}".encode(), hashlib.sha256)
        return base64.urlsafe_b64encode(digest[:_SIGNATURE_BYTES]).rstrip(b"=").decode()

    def _read(self, kind: str, token: str | None, scope: str) -> int | None:
        # ASCII only, before any comparison: compare_digest refuses other text (a raise,
        # so a 500), and no ticket or pass of ours has any.
        if token is None or len(token) > _MAX_CHARS or not token.isascii():
            return None
        digits, dot, signature = token.partition(".")
        # ASCII digits only: int() would also take "+1", " 1" or Arabic-Indic digits.
        if not dot or not digits.isascii() or not digits.isdigit() or len(digits) > 15:
            return None
        number = int(digits)
        if not hmac.compare_digest(signature, self._sign(kind, number, scope)):
            return None
        return number
