"""Idempotent resubmission of orders and payments: nothing created or charged twice.

Each (client scope, route, Idempotency-Key) has one record in the store. A
request walks it like this (`Idempotency.run`):

    claim the record (one atomic store step)
      completed        -> the stored answer, byte for byte, marked as a replay
      different body   -> 422 IDEMPOTENCY_KEY_REUSED
      held by another  -> 409 IDEMPOTENCY_IN_PROGRESS, or wait for it when configured
      new              -> forward once
      outcome unknown  -> ask the backend what it did with the key first, then
                          return what it found, or forward if it certainly has nothing
    forward, and after a failure that may have landed (reset, 5xx) never send
    again blindly: look the key up first, within the retry budget and deadline
      found            -> that answer
      certainly absent -> send again
      cannot say       -> stop here
    settle the record
      backend answered (2xx, 4xx)          -> store the answer
      backend certainly not reached        -> forget the record: the client may retry
      request may have reached the backend -> outcome unknown: the next claim reconciles

A request that may have reached the backend is therefore sent again only after
the backend said it has no record of the key, whatever the backend's own
deduplication: that is a second line of defence, never the reason to resend.

A claim carries a lease: if the process holding it dies, the record is taken
over once the lease has run out, and the taker reconciles first, exactly as for
an unknown outcome. With the shared store down, payments are refused (503
STATE_UNAVAILABLE) rather than forwarded without a record; orders too unless
configured to fail open.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from gateway.contract import errors
from gateway.contract.clock import Clock, SystemClock
from gateway.contract.errors import ErrorSpec, GatewayError
from gateway.contract.field_errors import invalid_field
from gateway.contract.reply import Reply
from gateway.contract.settings import IdempotencySettings
from gateway.state.bucket_store import TokenBuckets
from gateway.state.common import StoreUnavailable
from gateway.state.record_store import Claim, ClaimStatus, IdempotencyRecords

log = logging.getLogger("gateway.idempotency")

MAX_KEY_LENGTH = 255
# Polling a record held by another request while waiting for it: starts fast
# (most writes finish within tens of milliseconds), backs off to bound the load.
FIRST_POLL_S = 0.01
MAX_POLL_S = 0.1

EVENTS = ("claimed", "replayed", "in_progress", "reused", "released", "outcome_unknown",
          "taken_over", "reconciled_found", "reconciled_absent", "reconcile_failed",
          "store_unavailable", "lease_lost", "resent_after_lookup")

Send = Callable[[], Awaitable[Reply]]
Count = Callable[[str], None]
# A shared-state round trip and how long it took (the claim, for the request's trace).
Timed = Callable[[str, float], None]


@dataclass(frozen=True, slots=True)
class Submission:
    """The backend calls of one keyed submission, bound to its request."""

    forward: Send  # sends the submission; only attempts that surely were not sent are repeated
    lookup: Send  # asks the backend what it did with the key (GET ...?idempotency_key=K)
    # After failed forward attempt N (from 0) that may have landed: may another follow
    # (retry budget, deadline)? Sleeps the backoff before saying yes.
    may_resend: Callable[[GatewayError, int], Awaitable[bool]]


# Visible ASCII: what a UUID or any sane token is made of; no spaces, no control codes.
KEY_PATTERN = f"^[\\x21-\\x7e]{{1,{MAX_KEY_LENGTH}}}$"
_KEY = re.compile(KEY_PATTERN)


def require_key(sent: str | None) -> str:
    if sent is None:
        raise GatewayError(errors.IDEMPOTENCY_KEY_MISSING)
    if not _KEY.fullmatch(sent):
        raise invalid_field("Idempotency-Key",
                            f"must be 1-{MAX_KEY_LENGTH} visible ASCII characters (a UUID)")
    return sent


def record_id(scope: str, route: str, key: str) -> str:
    """A fixed-size store key: no client text reaches the store's key space as such."""
    raw = f"{scope}\x00{route}\x00{key}".encode()
    return hashlib.blake2b(raw, digest_size=16).hexdigest()


def fingerprint(route: str, body: bytes) -> str:
    """Of the normalised body, so full-width and half-width digits are the same request."""
    return hashlib.blake2b(route.encode() + b"\n" + body, digest_size=16).hexdigest()


class RefusedRecords:
    """The bound on records of refused (4xx) answers, per client scope and per address.

    Each stored 4xx answer takes from a bucket of its scope and of its address (the
    store's, so fleet-wide with Redis), refilled at the bound per `ttl_4xx_s`. A bucket
    found empty holds that scope or address in this process until it has room again, and
    every keyed POST asks only that: one dict lookup on the hot path, and a refused
    answer costs the store only when it happens. Each process thus lets at most one
    more record through once a bucket is empty. Honest traffic, whose answers made
    something, never spends from it.
    """

    def __init__(self, settings: IdempotencySettings, buckets: TokenBuckets,
                 clock: Clock) -> None:
        window_s = min(settings.ttl_4xx_s, settings.ttl_s)
        self._limits = {"scope": settings.max_4xx_per_scope,
                        "address": settings.max_4xx_per_address}
        self._window_s = window_s
        self._buckets = buckets
        self._clock = clock
        self._held: dict[tuple[str, str], float] = {}  # (kind, who) -> held until

    def check(self, scope: str, address: str) -> None:
        """429 RATE_LIMITED while this scope or address is held."""
        if not self._held:
            return
        now = self._clock.monotonic()
        for who in (("scope", scope), ("address", address)):
            until = self._held.get(who)
            if until is not None:
                if until > now:
                    raise GatewayError(errors.RATE_LIMITED,
                                       retry_after_s=max(1, math.ceil(until - now)))
                del self._held[who]

    async def spend(self, scope: str, address: str) -> None:
        """A refused answer was stored for this scope and address."""
        for kind, who in (("scope", scope), ("address", address)):
            limit = self._limits[kind]
            try:
                wait = await self._buckets.take(f"refused:{kind}:{who}",
                                                limit / self._window_s, limit)
            except StoreUnavailable:
                return  # the bound is a guard against floods, not worth failing an answer
            if wait > 0:
                self._held[kind, who] = self._clock.monotonic() + wait


class Idempotency:
    """The idempotency guard of one route, built once at start-up."""

    def __init__(self, route: str, store: IdempotencyRecords, settings: IdempotencySettings,
                 count: Count, *, success_status: int, unknown_outcome: ErrorSpec | None,
                 fail_open: bool, refused: RefusedRecords | None = None,
                 clock: Clock | None = None, timed: Timed | None = None) -> None:
        self._route = route
        self._timed = timed
        self._clock = clock or SystemClock()
        self._refused = refused
        self._store = store
        self._count = count
        self._lease_s = settings.lease_s
        self._ttl_s = settings.ttl_s
        self._ttl_4xx_s = min(settings.ttl_4xx_s, settings.ttl_s)
        self._wait_s = settings.wait_for_in_flight_ms / 1000
        self._success_status = success_status
        self._unknown_outcome = unknown_outcome
        self._fail_open = fail_open

    async def answered(self, scope: str, key: str) -> bool:
        """Whether this key already has a final answer to replay (claims nothing; a store
        out of reach says no, and the claim that follows decides what that means)."""
        try:
            return await self._store.answered(record_id(scope, self._route, key))
        except StoreUnavailable:
            return False

    async def run(self, scope: str, key: str, body: bytes, submission: Submission,
                  address: str = "unknown") -> tuple[Reply, bool]:
        """The answer for this submission, and whether it is a replay (not forwarded)."""
        refused = self._refused
        if refused is not None:
            refused.check(scope, address)
        record = record_id(scope, self._route, key)
        owner = secrets.token_hex(8)
        started = self._clock.monotonic()
        try:
            claim = await self._claim(record, fingerprint(self._route, body), owner)
        except StoreUnavailable as exc:
            self._count("store_unavailable")
            if self._fail_open:
                log.warning("idempotency store unavailable, forwarding without a record",
                            extra={"fields": {"route": self._route, "error": str(exc)}})
                return await submission.forward(), False
            raise GatewayError(errors.STATE_UNAVAILABLE) from None
        if self._timed is not None:
            self._timed("idempotency.claim", self._clock.monotonic() - started)
        if claim.status is ClaimStatus.COMPLETED:
            assert claim.reply is not None
            self._count("replayed")
            return claim.reply, True
        reconcile = claim.status is ClaimStatus.RECONCILE
        self._count("taken_over" if reconcile else "claimed")
        reply, replayed = await self._settle(record, owner, reconcile, submission)
        if refused is not None and not replayed and 400 <= reply.status < 500:
            await refused.spend(scope, address)
        return reply, replayed

    async def _claim(self, record: str, fp: str, owner: str) -> Claim:
        """Claim the record; while another holds it, wait up to the configured time."""
        clock = self._clock
        deadline = clock.monotonic() + self._wait_s
        pause = FIRST_POLL_S
        while True:
            claim = await self._store.claim(record, fp, owner, self._lease_s, self._ttl_s)
            if claim.status is ClaimStatus.REUSED:
                self._count("reused")
                raise GatewayError(errors.IDEMPOTENCY_KEY_REUSED)
            if claim.status is not ClaimStatus.IN_FLIGHT:
                return claim
            left = deadline - clock.monotonic()
            if left <= 0:
                self._count("in_progress")
                raise GatewayError(errors.IDEMPOTENCY_IN_PROGRESS)
            await clock.sleep(min(pause, left))
            pause = min(pause * 2, MAX_POLL_S)

    async def _settle(self, record: str, owner: str, reconcile: bool,
                      submission: Submission) -> tuple[Reply, bool]:
        # True once nothing done earlier with this key can have had an effect.
        clean = not reconcile
        try:
            if reconcile:
                found = await self._reconcile(submission.lookup)
                if found is not None:
                    await self._complete(record, owner, found)
                    return found, True
                clean = True
            reply = await self._forward(submission)
        except GatewayError as err:
            if err.reached_backend or not clean:
                await self._abandon(record, owner)
            else:
                await self._release(record, owner)
            raise
        except asyncio.CancelledError:
            # The client went away or the gateway is stopping, perhaps mid-request.
            await self._abandon(record, owner)
            raise
        await self._complete(record, owner, reply)
        return reply, False

    async def _forward(self, submission: Submission) -> Reply:
        """Forward; after a failure that may have landed, resend only once a lookup says absent.

        A reset after the request was written usually means the backend acted and
        the answer was lost: the lookup then finds it, and the client gets its
        answer now instead of an unknown outcome. Timeouts are not worth another
        try (`may_resend` says no), so they end in an unknown outcome at once.
        """
        attempt = 0
        while True:
            try:
                return await submission.forward()
            except GatewayError as err:
                if not err.reached_backend or not await submission.may_resend(err, attempt):
                    raise
                failure = err
            attempt += 1
            try:
                found = await self._reconcile(submission.lookup)
            except GatewayError:
                raise failure from None  # the lookup could not say: the failure stands
            if found is not None:
                return found
            self._count("resent_after_lookup")

    async def _reconcile(self, lookup: Send) -> Reply | None:
        """What the backend did with this key: its answer, None if nothing, else raise."""
        try:
            answer = await lookup()
        except GatewayError as err:
            self._count("reconcile_failed")
            raise self._still_unknown(err) from None
        if answer.status == 200:
            self._count("reconciled_found")
            # The lookup returns the body the original request was answered with.
            return Reply(self._success_status, answer.body, answer.content_type)
        if answer.status == 404:
            self._count("reconciled_absent")
            return None
        self._count("reconcile_failed")
        raise self._still_unknown(None)

    def _still_unknown(self, cause: GatewayError | None) -> GatewayError:
        """The error of a lookup that could not say: the earlier request may have landed."""
        if self._unknown_outcome is not None:
            return GatewayError(self._unknown_outcome, reached_backend=True)
        if cause is None:
            return GatewayError(errors.UPSTREAM_UNAVAILABLE, reached_backend=True)
        # The lookup itself may not have reached the backend; the request before it may.
        cause.reached_backend = True
        return cause

    async def _complete(self, record: str, owner: str, reply: Reply) -> None:
        # A refusal (4xx) made nothing: kept long enough to replay, not a day.
        keep_s = self._ttl_4xx_s if 400 <= reply.status < 500 else None
        try:
            stored = await self._store.complete(record, owner, reply, keep_s)
        except StoreUnavailable as exc:
            # The client still gets the answer; the record stays claimed until its
            # lease runs out, and the next submission then finds it by reconciling.
            self._store_failed("complete", exc)
            return
        if not stored:
            self._count("lease_lost")
            log.warning("idempotency claim was taken over before completion; "
                        "idempotency.lease_s is too short", extra={"fields": {
                            "route": self._route}})

    async def _release(self, record: str, owner: str) -> None:
        self._count("released")
        await self._quietly("release", self._store.release(record, owner))

    async def _abandon(self, record: str, owner: str) -> None:
        self._count("outcome_unknown")
        await self._quietly("abandon", self._store.abandon(record, owner))

    async def _quietly(self, step: str, done: Awaitable[None]) -> None:
        """A settling step the client's answer does not wait on: a store failure is logged,
        and the claim's lease then lets the next submission reconcile."""
        try:
            await done
        except StoreUnavailable as exc:
            self._store_failed(step, exc)

    def _store_failed(self, step: str, exc: StoreUnavailable) -> None:
        self._count("store_unavailable")
        log.warning("idempotency store unavailable", extra={"fields": {
            "route": self._route, "step": step, "error": str(exc)}})
