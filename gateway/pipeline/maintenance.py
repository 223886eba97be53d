"""Maintenance windows: planned downtime that clients are told about instead of finding out.

A window covers a scope (`all`, a backend, or a route with or without its
method), from `starts_at` (now if not given) until `ends_at` (or until
cleared); a read-only window lets reads (GET) through and refuses writes. A
covered request is answered `503 MAINTENANCE` with the announcement in the
client's language and `Retry-After` until the window's end, and never reaches
the backend. Where windows overlap, the one ending last among those that refuse
the request is the answer (an open-ended one counts as ending never).

Windows come from two places: the config file (declared with a deploy, in force
from start-up; ids `cfg-...` derived from their content) and the admin API
(kept in the store; ids `mw-...`). Every process rebuilds its view from the
store on a short timer (`redis.sync_interval_s`) and at once after an admin
action it took itself, so with Redis a window set anywhere is enforced
everywhere within that interval, and survives restarts.

The hot path pays one attribute read per request when no window could cover
its route: each route has a `RouteWindows` holding the windows that may cover it,
recomputed whenever the windows change, not per request.
"""

from __future__ import annotations

import hashlib
import logging
import math
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.contract import chinese_script, errors, scopes
from gateway.contract.clock import Clock, iso_utc
from gateway.contract.errors import GatewayError, Text
from gateway.contract.routes import RoutePolicy
from gateway.contract.settings import MaintenanceWindowSettings
from gateway.edge.auth import AdminTokens
from gateway.state.window_store import WindowStore

log = logging.getLogger("gateway.maintenance")

READ_METHODS = frozenset({"GET", "HEAD"})
DEFAULT_MESSAGE = Text("Planned maintenance is in progress.", "系统正在进行计划内维护。",
                       "系統正在進行預定的維護。")


# An SRE verifying an upgrade sends the admin token in it to pass a window (`bypassed`).
BYPASS_HEADER = "X-Maintenance-Bypass"


@dataclass(frozen=True, slots=True)
class Window:
    id: str
    scope: str
    read_only: bool
    starts_at: float  # Unix seconds
    ends_at: float | None  # None: until cleared
    message: Text
    source: str  # "config" or "admin"

    def active(self, now: float) -> bool:
        return self.starts_at <= now and (self.ends_at is None or now < self.ends_at)

    def ended(self, now: float) -> bool:
        return self.ends_at is not None and now >= self.ends_at

    def covers(self, policy: RoutePolicy) -> bool:
        return scopes.covers(self.scope, policy)

    def refuses(self, method: str) -> bool:
        return not self.read_only or method not in READ_METHODS

    def public(self, now: float) -> dict[str, Any]:
        """As the status page and the admin API show it."""
        return {
            "id": self.id, "scope": self.scope, "read_only": self.read_only,
            "starts_at": _iso(self.starts_at),
            "ends_at": None if self.ends_at is None else _iso(self.ends_at),
            "message": {"en": self.message.en, "zh-CN": self.message.zh,
                        "zh-Hant": self.message.hant},
            "state": "current" if self.active(now) else "scheduled",
            "source": self.source,
        }

    def dumps(self) -> bytes:
        return orjson.dumps({"id": self.id, "scope": self.scope, "read_only": self.read_only,
                             "starts_at": self.starts_at, "ends_at": self.ends_at,
                             "en": self.message.en, "zh": self.message.zh,
                             "hant": self.message.hant})

    @classmethod
    def loads(cls, data: bytes) -> Window:
        raw = orjson.loads(data)
        # A window stored before Traditional text existed has none: converted now, once.
        hant = raw.get("hant") or chinese_script.to_traditional(raw["zh"])
        return cls(raw["id"], raw["scope"], raw["read_only"], raw["starts_at"], raw["ends_at"],
                   Text(raw["en"], raw["zh"], hant), "admin")


def _iso(ts: float) -> str:
    return iso_utc(ts, "seconds")


def _message(given: MaintenanceWindowSettings) -> Text:
    """The announcement in every language: a text given stands as written; a Chinese one
    given in one script only is converted to the other (here, once, as the window is set);
    English alone stands in for both, and either Chinese for English."""
    en, zh, hant = given.message.en, given.message.zh_cn, given.message.zh_hant
    if en is None and zh is None and hant is None:
        return DEFAULT_MESSAGE
    if zh is None and hant is not None:
        zh = chinese_script.to_simplified(hant)
    elif hant is None and zh is not None:
        hant = chinese_script.to_traditional(zh)
    english = en or zh or ""
    return Text(english, zh or english, hant or english)


def build_window(given: MaintenanceWindowSettings, window_id: str, now: float,
                 source: str) -> Window:
    starts_at = given.starts_at.timestamp() if given.starts_at else now
    ends_at = given.ends_at.timestamp() if given.ends_at else None
    return Window(window_id, given.scope, given.read_only, starts_at, ends_at,
                  _message(given), source)


def config_window_id(given: MaintenanceWindowSettings) -> str:
    """Stable across restarts and processes, and new when the declaration changes."""
    digest = hashlib.blake2b(given.model_dump_json().encode(), digest_size=6).hexdigest()
    return f"cfg-{digest}"


class RouteWindows:
    """The windows that may cover one route (current or scheduled)."""

    __slots__ = ("windows",)

    def __init__(self) -> None:
        self.windows: tuple[Window, ...] = ()


class Maintenance:
    def __init__(self, routes: Iterable[RoutePolicy], store: WindowStore, clock: Clock,
                 declared: Iterable[MaintenanceWindowSettings],
                 bypass: AdminTokens | None = None) -> None:
        self._store = store
        self._bypass = bypass
        self._clock = clock
        self._policies = {policy.route_key: policy for policy in routes}
        self._by_route = {key: RouteWindows() for key in self._policies}
        now = clock.wall()
        # A config window's start, when not given, is when this process read it: the
        # same declaration read later by another process must keep one id, so the id
        # comes from the declaration and the start from the first reading.
        self._declared = [build_window(given, config_window_id(given), now, "config")
                          for given in declared]
        self._windows: dict[str, Window] = {}
        self._seen: tuple[dict[str, bytes], set[str]] | None = None
        self.version = 0  # bumped whenever the set of windows changes
        self._rebuild({}, set())

    # -- the hot path ----------------------------------------------------------------------

    def route_windows(self, policy: RoutePolicy) -> RouteWindows:
        return self._by_route[policy.route_key]

    def refusal(self, route_windows: RouteWindows, method: str) -> Window | None:
        """The window that refuses this request now, if any (the one ending last)."""
        now = self._clock.wall()
        chosen: Window | None = None
        for window in route_windows.windows:
            if window.active(now) and window.refuses(method) and (
                    chosen is None or _ends_later(window, chosen)):
                chosen = window
        return chosen

    def bypassed(self, sent: str | None) -> bool:
        """An SRE verifying an upgrade: `X-Maintenance-Bypass: <admin token>` goes through."""
        if self._bypass is None or not sent:
            return False
        return self._bypass.match(sent) is not None

    def error(self, window: Window) -> GatewayError:
        now = self._clock.wall()
        retry_after = None if window.ends_at is None else max(1, math.ceil(window.ends_at - now))
        return GatewayError(errors.MAINTENANCE, retry_after_s=retry_after, extra={
            "announcement": window.message,
            "maintenance": {"id": window.id, "scope": window.scope,
                            "read_only": window.read_only,
                            "ends_at": None if window.ends_at is None else _iso(window.ends_at)},
        })

    # -- what is in force ------------------------------------------------------------------

    def now(self) -> float:
        return self._clock.wall()

    def windows(self) -> list[Window]:
        """Current and scheduled windows, soonest first."""
        now = self._clock.wall()
        live = [w for w in self._windows.values() if not w.ended(now)]
        return sorted(live, key=lambda w: (w.starts_at, w.id))

    def find(self, window_id: str) -> Window | None:
        window = self._windows.get(window_id)
        if window is None or window.ended(self._clock.wall()):
            return None
        return window

    async def sync(self) -> None:
        """Follow the store: windows set or ended through any process."""
        stored, ended = await self._store.windows()
        if self._seen == (stored, ended):
            return
        self._rebuild(stored, ended)

    def _rebuild(self, stored: dict[str, bytes], ended: set[str]) -> None:
        windows = {w.id: w for w in self._declared if w.id not in ended}
        for window_id, data in stored.items():
            try:
                windows[window_id] = Window.loads(data)
            except (orjson.JSONDecodeError, KeyError, TypeError):
                log.error("ignoring an unreadable maintenance window in the store",
                          extra={"fields": {"window": window_id}})
        self._windows = windows
        self._seen = (stored, ended)
        for key, policy in self._policies.items():
            self._by_route[key].windows = tuple(w for w in windows.values() if w.covers(policy))
        self.version += 1

    # -- admin actions ---------------------------------------------------------------------

    async def put(self, given: MaintenanceWindowSettings) -> Window:
        now = self._clock.wall()
        window = build_window(given, f"mw-{secrets.token_hex(4)}", now, "admin")
        await self._store.put(window.id, window.dumps())
        # Windows that have run out are kept only until the next one is set.
        for old in list(self._windows.values()):
            if old.source == "admin" and old.ended(now):
                await self._store.delete(old.id)
        await self.sync()
        return window

    async def delete(self, window_id: str) -> Window | None:
        window = self.find(window_id)
        if window is None:
            return None
        if window.source == "config":
            await self._store.end_config_windows([window_id])
        else:
            await self._store.delete(window_id)
        await self.sync()
        return window

    async def delete_all(self) -> list[Window]:
        ending = self.windows()
        declared = [w.id for w in ending if w.source == "config"]
        if declared:
            await self._store.end_config_windows(declared)
        for window in ending:
            if window.source == "admin":
                await self._store.delete(window.id)
        await self.sync()
        return ending


def _ends_later(window: Window, other: Window) -> bool:
    if window.ends_at is None:
        return other.ends_at is not None
    return other.ends_at is not None and window.ends_at > other.ends_at
