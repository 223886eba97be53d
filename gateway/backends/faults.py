"""Fault injection for game days: rules that fail or slow backend calls on live traffic.

A rule (added through `PUT /admin/faults`, docs/api.md "Fault injection") covers a
scope (as for maintenance), optionally only requests carrying one header value,
and, for its `ttl_s`, aborts a share of the covered backend calls (as if the
backend had answered a 5xx, or the connection broke before sending) and/or
delays a share of them. It acts in `upstream.py` after the breaker let the call
through and before anything is sent, so the backend receives nothing and
everything downstream (breaker, retries, stale answers, idempotency) reacts as
to a real failure.

Rules live in the store (a Redis hash with Redis), so each process follows
them on the sync timer; a rule's end is its `expires_at`, checked on every
roll, so it ends everywhere on time. With no rule in force a backend call pays
one attribute read (`Faults.active`).
"""

from __future__ import annotations

import random
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Protocol

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gateway.contract import scopes
from gateway.contract.clock import Clock, iso_utc
from gateway.contract.json_types import ACCEPT_WHOLE_FLOATS
from gateway.contract.routes import RoutePolicy
from gateway.state.fault_store import FaultStore

MAX_RULES = 20
RESET = "reset"
_HEADER_NAME = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}$"


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AbortSpec(_Input):
    percent: float = Field(ge=0, le=100)
    # A 5xx the backend answers, or "reset": the connection breaks before sending.
    status: Annotated[int, Field(ge=500, le=599), ACCEPT_WHOLE_FLOATS] | Literal["reset"]


class DelaySpec(_Input):
    percent: float = Field(ge=0, le=100)
    ms: Annotated[int, Field(ge=1, le=60_000), ACCEPT_WHOLE_FLOATS]


class HeaderMatch(_Input):
    name: str = Field(pattern=_HEADER_NAME)
    value: str = Field(min_length=1, max_length=256)


class FaultRuleSettings(_Input):
    """A rule as `PUT /admin/faults` takes it: at least one of `abort` and `delay`."""

    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra={"anyOf": [
        {"required": ["abort"], "properties": {"abort": {"type": "object"}}},
        {"required": ["delay"], "properties": {"delay": {"type": "object"}}}]})

    scope: str = Field(min_length=1, max_length=200, json_schema_extra=scopes.publish_choices)
    abort: AbortSpec | None = None
    delay: DelaySpec | None = None
    match_header: HeaderMatch | None = None
    ttl_s: Annotated[int, Field(ge=1, le=3600), ACCEPT_WHOLE_FLOATS]

    @field_validator("scope")
    @classmethod
    def _known_scope(cls, value: str) -> str:
        return scopes.check(value)

    @model_validator(mode="after")
    def _does_something(self) -> FaultRuleSettings:
        if self.abort is None and self.delay is None:
            raise ValueError("abort: give abort, delay or both")
        return self


@dataclass(slots=True)
class Rule:
    id: str
    given: FaultRuleSettings
    created_at: float  # wall clock
    expires_at: float
    injected: dict[str, int] = field(default_factory=lambda: {"abort": 0, "delay": 0})

    def covers(self, backend: str, route: RoutePolicy | None) -> bool:
        scope = self.given.scope
        if scope in (scopes.ALL, backend):
            return True
        return route is not None and scopes.covers(scope, route)

    def matches(self, headers: Mapping[str, str] | None) -> bool:
        wanted = self.given.match_header
        if wanted is None:
            return True
        return headers is not None and headers.get(wanted.name) == wanted.value

    def public(self) -> dict[str, Any]:
        return {"id": self.id, **self.given.model_dump(exclude_none=True),
                "created_at": iso_utc(self.created_at), "expires_at": iso_utc(self.expires_at),
                "injected": dict(self.injected)}

    def dumps(self) -> bytes:
        return orjson.dumps({"id": self.id, "given": self.given.model_dump(exclude_none=True),
                             "created_at": self.created_at, "expires_at": self.expires_at})

    @classmethod
    def loads(cls, data: bytes) -> Rule:
        fields = orjson.loads(data)
        return cls(fields["id"], FaultRuleSettings.model_validate(fields["given"]),
                   fields["created_at"], fields["expires_at"])


@dataclass(frozen=True, slots=True)
class Injection:
    """What the rules do to one backend call: wait `delay_s`, then fail as `abort` (a 5xx,
    or RESET), or send as usual (abort None)."""

    delay_s: float
    abort: int | str | None


class FaultFigures(Protocol):
    """What the injector reports (the metrics implement it)."""

    def fault_injected(self, backend: str, kind: str) -> None: ...


class Faults:
    """The rules in force on this process, and the dice each backend call rolls."""

    def __init__(self, store: FaultStore, clock: Clock, metrics: FaultFigures) -> None:
        self._store = store
        self._clock = clock
        self._metrics = metrics
        self._rules: tuple[Rule, ...] = ()  # oldest first
        self._seen: dict[str, bytes] = {}
        self.active = False
        self._random = random.Random()

    # -- the backend call ------------------------------------------------------------------

    def roll(self, backend: str, route: RoutePolicy | None,
             headers: Mapping[str, str] | None) -> Injection | None:
        """The dice of one backend call (only called while `active`)."""
        now = self._clock.wall()
        delay_ms = 0
        abort: int | str | None = None
        for rule in self._rules:
            if now >= rule.expires_at or not rule.covers(backend, route):
                continue
            if not rule.matches(headers):
                continue
            given = rule.given
            if given.delay is not None and self._random.random() * 100 < given.delay.percent:
                delay_ms += given.delay.ms
                rule.injected["delay"] += 1
                self._metrics.fault_injected(backend, "delay")
            if (abort is None and given.abort is not None
                    and self._random.random() * 100 < given.abort.percent):
                abort = given.abort.status  # the oldest firing abort applies
                rule.injected["abort"] += 1
                self._metrics.fault_injected(backend, "abort")
        if not delay_ms and abort is None:
            return None
        return Injection(delay_ms / 1000, abort)

    # -- following the store ---------------------------------------------------------------

    async def sync(self) -> None:
        stored = await self._store.rules()
        if stored != self._seen:
            self._rebuild(stored)
        self.active = any(self._clock.wall() < rule.expires_at for rule in self._rules)

    def _rebuild(self, stored: dict[str, bytes]) -> None:
        known = {rule.id: rule for rule in self._rules}
        rules = []
        for rule_id, data in stored.items():
            rule = known.get(rule_id)
            if rule is None:
                rule = Rule.loads(data)
            rules.append(rule)
        self._rules = tuple(sorted(rules, key=lambda r: (r.created_at, r.id)))
        self._seen = stored

    # -- admin actions -----------------------------------------------------------------------

    def rules(self) -> list[Rule]:
        now = self._clock.wall()
        return [rule for rule in self._rules if now < rule.expires_at]

    async def add(self, given: FaultRuleSettings) -> Rule | None:
        """The rule added, in force here at once; None when MAX_RULES are in force."""
        await self._forget_expired()
        now = self._clock.wall()
        rule = Rule(f"flt-{secrets.token_hex(4)}", given, now, now + given.ttl_s)
        if not await self._store.add(rule.id, rule.dumps(), MAX_RULES):
            return None
        await self.sync()
        return rule

    async def end(self, rule_id: str) -> Rule | None:
        await self.sync()  # a rule added through another process a moment ago
        rule = next((r for r in self.rules() if r.id == rule_id), None)
        if rule is None or not await self._store.delete(rule_id):
            return None
        await self.sync()
        return rule

    async def end_all(self) -> list[Rule]:
        """The kill switch."""
        await self.sync()
        ending = self.rules()
        await self._store.delete_all()
        await self.sync()
        return ending

    async def _forget_expired(self) -> None:
        await self.sync()
        now = self._clock.wall()
        for rule in self._rules:
            if now >= rule.expires_at:
                await self._store.delete(rule.id)


