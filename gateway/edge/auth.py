"""Client authentication: API keys for the web and mobile clients.

Off until keys are configured (`auth.api_keys`) or required (`auth.required`):
then every public API route needs `X-API-Key`, else `401 UNAUTHORIZED`. A key
names a client id (the idempotency scope and rate-limit bucket, forwarded to
the backends as X-Client-ID; a client-sent X-Client-ID is ignored), a role
(`client`: every public route; `reader`: GET routes only, else
`403 FORBIDDEN`) and a rate-limit tier.

Only the SHA-256 of a key is ever configured or stored. A key sent is hashed
and looked up by its hash in a dict. That lookup is not constant-time, and
need not be: what its timing could reveal is how much of a stored *digest*
the digest of a guess matches, and a caller cannot aim a guess's digest at
chosen bytes, nor turn a learnt digest back into the key (keys are 256 random
bits). What it protects against is therefore recovering a key byte by byte
through timing, the attack a plain string comparison of keys would allow. Keys
added through the admin API live in the shared store and reach every process
on the sync timer, so keys rotate without a restart: add the new key, move
the clients over, revoke the old one. A key is never logged; its `key_id`
(the first 12 hex digits of its hash) names it in logs and the admin API.

Every failed check of a secret (an API key here, the admin token, the maintenance
bypass) goes through one `FailedChecks`: an audit line, and a token bucket per
remote address, past which the answer is `429 RATE_LIMITED`, so no secret can be
guessed at speed. A check that succeeds never spends from it: a valid credential
is never refused for what others sent from the same address.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import secrets
from dataclasses import dataclass

import orjson

from gateway.contract import errors
from gateway.contract.clock import Clock
from gateway.contract.errors import GatewayError
from gateway.contract.settings import ApiKeySettings, AuthSettings
from gateway.state.bucket_store import MemoryTokenBuckets
from gateway.state.key_store import KeyStore

log = logging.getLogger("gateway.auth")

API_KEY_HEADER = "X-API-Key"
_MAX_KEY_CHARS = 256  # longer is not a key of ours; not worth hashing
KEY_ID_CHARS = 12
_CHALLENGE = {"WWW-Authenticate": 'ApiKey realm="order-gateway", header="X-API-Key"'}


def key_sha256(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return "ogk_" + secrets.token_urlsafe(32)


@dataclass(frozen=True, slots=True)
class Client:
    id: str
    role: str
    tier: str
    key_id: str
    source: str  # "config" or "admin"

    @property
    def reads_only(self) -> bool:
        return self.role == "reader"

    def public(self) -> dict[str, str]:
        return {"client_id": self.id, "role": self.role, "tier": self.tier,
                "key_id": self.key_id, "source": self.source}


def unauthorized() -> GatewayError:
    return GatewayError(errors.UNAUTHORIZED, headers=dict(_CHALLENGE))


class ClientKeys:
    def __init__(self, settings: AuthSettings, store: KeyStore) -> None:
        self.enabled = settings.enabled
        self._store = store
        self._config = {bytes.fromhex(k.key_sha256): self._client(k, "config")
                        for k in settings.api_keys}
        self._by_digest: dict[bytes, Client] = dict(self._config)

    @staticmethod
    def _client(key: ApiKeySettings, source: str) -> Client:
        return Client(key.client_id, key.role, key.tier, key.key_sha256[:KEY_ID_CHARS], source)

    def identify(self, sent: str | None) -> Client:
        # ASCII only: a key is, and raw header bytes (as surrogates) could not be hashed.
        if not sent or len(sent) > _MAX_KEY_CHARS or not sent.isascii():
            raise unauthorized()
        found = self._by_digest.get(hashlib.sha256(sent.encode()).digest())
        if found is None:
            raise unauthorized()
        return found

    async def checked(self, sent: str | None, failed: FailedChecks, *, remote: str | None,
                      request_id: str, route: str) -> Client:
        """`identify`, with a failure audited and throttled (`FailedChecks`)."""
        try:
            return self.identify(sent)
        except GatewayError as err:
            raise await failed.refusal("api_key", err, remote=remote, request_id=request_id,
                                       route=route) from None

    def clients(self) -> list[Client]:
        return sorted(self._by_digest.values(), key=lambda c: (c.id, c.key_id))

    async def sync(self) -> None:
        """Config keys plus the keys added through the admin API (any process)."""
        merged = dict(self._config)
        for hex_digest, data in (await self._store.keys()).items():
            try:
                key = ApiKeySettings.model_validate({**orjson.loads(data),
                                                     "key_sha256": hex_digest})
            except ValueError:
                log.error("ignoring an unreadable API key in the store",
                          extra={"fields": {"key_id": hex_digest[:KEY_ID_CHARS]}})
                continue
            merged.setdefault(bytes.fromhex(hex_digest), self._client(key, "admin"))
        self._by_digest = merged

    async def add(self, key: ApiKeySettings) -> Client:
        digest = bytes.fromhex(key.key_sha256)
        if digest in self._by_digest:
            raise GatewayError(errors.VALIDATION_FAILED, params={"count": 1}, extra={"errors": [{
                "field": "key_sha256", "message": "this key is already configured",
                "type": "value_error", "_ctx": {}}]})
        data = {"client_id": key.client_id, "role": key.role, "tier": key.tier}
        await self._store.put(key.key_sha256, orjson.dumps(data))
        await self.sync()
        return self._by_digest[digest]

    async def revoke(self, key_id: str) -> Client | None:
        """Revoke an admin-added key by its id; config keys go with a config change."""
        await self.sync()
        for digest, client in self._by_digest.items():
            if client.key_id == key_id and client.source == "admin":
                await self._store.delete(digest.hex())
                await self.sync()
                return client
        return None


# Addresses whose failures are counted at once; beyond, the least recently seen go first.
MAX_ADDRESSES = 10_000


class FailedChecks:
    """The one place a failed secret check is audited and throttled, per remote address."""

    def __init__(self, rate_per_s: float, burst: int, clock: Clock | None = None) -> None:
        self._buckets = MemoryTokenBuckets(clock, max_buckets=MAX_ADDRESSES)
        self._rate, self._burst = rate_per_s, burst

    async def refusal(self, secret: str, refusal: GatewayError, *, remote: str | None,
                      request_id: str, route: str) -> GatewayError:
        """The answer to a failed check of `secret`: `refusal`, audited, while the address
        has failures to spare; past them `429 RATE_LIMITED` (not logged again: a flood of
        guesses must not become a flood of lines)."""
        wait = await self._buckets.take(remote or "unknown", self._rate, self._burst)
        if wait > 0:
            return GatewayError(errors.RATE_LIMITED, retry_after_s=max(1, math.ceil(wait)))
        log.warning("credential refused", extra={"fields": {
            "audit": True, "action": f"{secret}.denied", "request_id": request_id,
            "remote": remote, "route": route}})
        return refusal


class AdminTokens:
    """The admin token, and during a rotation the one it replaces; both compared in
    constant time, every time, so timing tells nothing of which matched."""

    def __init__(self, current: str, previous: str | None = None) -> None:
        self._tokens = [("current", current.encode())]
        if previous is not None:
            self._tokens.append(("previous", previous.encode()))

    def match(self, sent: str | None) -> str | None:
        """`current`, `previous`, or None for no match."""
        given = (sent or "").encode()
        matched = None
        for label, token in self._tokens:
            if hmac.compare_digest(given, token) and matched is None:
                matched = label
        return matched

    def match_bearer(self, authorization: str | None) -> str | None:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer":
            token = ""
        return self.match(token.strip())
