"""The SRE's hand on the breakers: runtime settings and forced states, on every process.

An admin action is written to the store as one atomic field update; every
process (the one that took the action included) applies the store's control
records to its own breakers, at once after a local action and otherwise on a
short timer. With Redis that reaches every process and replica within
`sync_interval_s`; with the memory store it is this process only.

A control record holds `setting:<name>` overrides (JSON values), `forced`
(`open`, `closed` or empty) and `reset_seq` (bumped by each reset).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, cast

import orjson
from pydantic import ValidationError

from gateway.backends.breaker import Breaker, Forced
from gateway.contract.settings import BreakerSettings
from gateway.state.intent_store import BreakerIntents

log = logging.getLogger("gateway.breaker_control")
_SETTING = "setting:"


class BreakerBoard:
    def __init__(self, breakers: Mapping[str, Breaker], store: BreakerIntents) -> None:
        self.breakers = dict(breakers)
        self._base = {name: b.settings for name, b in breakers.items()}
        self._store = store
        self._applied: dict[str, dict[str, str]] = {}

    # -- reading the store ---------------------------------------------------

    async def sync(self, names: list[str] | None = None) -> None:
        records = await self._store.controls(names or list(self.breakers))
        for name, record in records.items():
            self._apply(name, record)

    def _apply(self, name: str, record: dict[str, str]) -> None:
        previous = self._applied.get(name, {})
        if record == previous:
            return
        breaker = self.breakers[name]
        overrides = {key.removeprefix(_SETTING): orjson.loads(value)
                     for key, value in record.items() if key.startswith(_SETTING)}
        try:
            breaker.update(BreakerSettings.model_validate(
                self._base[name].model_dump() | overrides))
        except ValidationError:
            log.error("ignoring invalid breaker settings from the store",
                      extra={"fields": {"breaker": name}})
        if record.get("reset_seq") != previous.get("reset_seq"):
            breaker.force(None)
        # The store holds what an admin call validated: "open", "closed" or nothing.
        forced = cast(Forced, record.get("forced") or None)
        if forced != breaker.forced:
            breaker.force(forced)
        self._applied[name] = record

    # -- admin actions -------------------------------------------------------

    def validate_changes(self, name: str, changes: dict[str, Any]) -> BreakerSettings:
        """The breaker's settings with `changes` applied; ValidationError if they do not fit."""
        # Strict: the admin API takes JSON numbers for numbers, not `false` for 0.
        return BreakerSettings.model_validate(self.breakers[name].settings.model_dump() | changes,
                                              strict=True)

    async def change_settings(self, name: str, changes: dict[str, Any]) -> None:
        self.validate_changes(name, changes)
        await self._store.set_fields(
            name, {_SETTING + key: orjson.dumps(value).decode() for key, value in changes.items()})
        await self.sync([name])

    async def force(self, name: str, forced: Forced) -> None:
        await self._store.set_fields(name, {"forced": forced or ""})
        await self.sync([name])

    async def reset(self, name: str) -> None:
        await self._store.reset(name)
        await self.sync([name])
