"""The virtual waiting room of promotional peaks (docs/api.md, "Waiting room").

A new customer on a covered route (one without a valid pass) goes straight
through while nobody waits and fewer than `admit_per_s` customers were let in
during the last second, and gets a pass; otherwise a ticket and
`429 QUEUED` with its place and an ETA. The line lives in the store
(`ticket_store.TicketQueue`): with Redis, tickets are numbered fleet-wide and every
process runs the admission step on its own timer (`TICK_S`) as one script.
The step is safe to run from many processes at once, so no leader is elected.
It drops tickets idle longer than `ticket_idle_s` and admits the lowest live
numbers that fit the last second.

Admissions pause while a covered backend's breaker holds calls back on any
process: forced open, or tripped and within its `open_seconds`. Half-open does
not pause, so probes reach the backend and recovery never stalls behind the
room. A pausing process renews a short flag in the store (`PAUSE_HOLD_S`).

Covered submissions (orders, payments) are paced on their way to the backend at
the room's rate, fleet-wide (`WaitingRoom.paced`): admission bounds new
customers, but customers who order together would otherwise reach the backend
in a lump.

Tickets and passes are signed and bound to the client (`queue_tokens.py`), so a
pass is checked with nothing but the clock: with Redis down, pass holders carry
on while new customers get `503 STATE_UNAVAILABLE`. Settings changed through the
admin API are stored with a version. Each process applies a newer version on its
sync timer, and never an older one over a newer, so a sync read that began
before a local change cannot undo it.
"""

from __future__ import annotations

import logging
import math
import random
import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson
from pydantic import ValidationError

from gateway.backends.breaker import Breaker
from gateway.contract import errors, field_errors, scopes
from gateway.contract.clock import Clock, iso_utc, seconds_left
from gateway.contract.errors import GatewayError
from gateway.contract.routes import RoutePolicy
from gateway.contract.settings import ROOM_NEEDS_REDIS, WaitingRoomSettings
from gateway.pipeline.queue_tokens import QueueTokens
from gateway.state.bucket_store import TokenBuckets
from gateway.state.common import StoreUnavailable
from gateway.state.room_store import RoomControl
from gateway.state.ticket_store import Sale, TicketQueue, TicketState

log = logging.getLogger("gateway.waiting_room")

PASS_HEADER = "X-Queue-Pass"
TICKET_HEADER = "X-Queue-Ticket"
# The admission step's timer: a ticket is admitted within this long of there being room.
TICK_S = 0.05
# A pause set by one process lasts this long unless renewed: every process sees it within
# a second, and it ends within a second of the breaker letting probes through.
PAUSE_HOLD_S = 1.0
# A poll may ask (`?wait_s=`) to be held open until its admission, this long at most, when
# the admission is due within a second: twice the time it should take.
HOLD_POLL_S = 2.0
WAIT_PARAM = "wait_s"
# ... and, once the admission is due, looks again this often: the customer learns of it within
# this long, so admitted customers reach the backend as evenly as they were admitted.
HOLD_CHECK_S = 0.02
# Polls come at most this far apart, so a customer learns of the admission soon enough.
MAX_POLL_S = 10
# A sale's pre-queue polls again within this long after the draw (see `pre_queue_poll_s`).
DRAW_SPREAD_S = 2
# Covered submissions on their way to the backend: a token bucket per route (rate
# `admit_per_s`, this burst), so the backend sees at most admit_per_s + 1 in any second.
PACE_SCOPE = "room-pace:{route}"
TICKETS_SCOPE = "room-tickets:{address}"  # the bucket of new tickets of one address
PACE_BURST = 1
_SECRET_BYTES = 32

Answered = Callable[[], Awaitable[bool]]


class RoomFigures(Protocol):
    """What the room reports of each admission step (the metrics implement it)."""

    def room_tick(self, expired: int, waits: Sequence[float], waiting: int) -> None: ...


# Told once for the fleet when a sale's pre-queue is drawn: how many tickets it held, and
# the sale's start (the timeline implements it).
SaleDrawn = Callable[[int, datetime], None]


@dataclass(slots=True)
class RouteGate:
    """Whether the room covers one route: read per request, rebuilt when settings change."""

    covered: bool = False


@dataclass(frozen=True, slots=True)
class RoomView:
    """What this process saw at its last admission step."""

    waiting: int = 0
    queueing: bool = False
    paused: bool = False
    starts_in_s: float = 0.0  # > 0: a sale's pre-queue, its draw this far off


def poll_after_s(eta: int | None, idle_s: float) -> int:
    """A fifth of the expected wait, between 1 s and MAX_POLL_S, and never more than a
    third of `idle_s`, so one lost poll never costs a customer their place."""
    ceiling = max(1, min(MAX_POLL_S, int(idle_s // 3)))
    if eta is None:
        return ceiling
    return max(1, min(ceiling, math.ceil(eta / 5)))


def pre_queue_poll_s(starts_in_s: int, idle_s: float) -> int:
    """A pre-queue ticket's next poll: as usual, but no later than just after the draw, so
    that the first customers let in learn of it at once (ordering a few seconds late, they
    would reach the backend in a lump). A random 0 to DRAW_SPREAD_S seconds after the start
    spreads the crowd's first polls; it depends on nothing of the ticket's place, so it
    tells nothing of it."""
    return min(poll_after_s(None, idle_s), starts_in_s + random.randint(0, DRAW_SPREAD_S))


def pass_expiry(admitted_at: float, settings: WaitingRoomSettings) -> int:
    """A pass's expiry in whole Unix seconds, rounded up."""
    return math.ceil(admitted_at + settings.pass_ttl_s)


def expected_wait_s(position: int, admit_per_s: int, due_s: float = 0.0) -> float:
    """The wait of the customer at `position`: until the next admission is due (its pace),
    then one every 1/admit_per_s."""
    return due_s + (position - 1) / admit_per_s


def eta_s(position: int, admit_per_s: int, due_s: float = 0.0) -> int:
    """The expected wait in whole seconds, to the nearest (rounding up would overstate every
    short wait by up to a second); at least 1, as someone in line is not in yet."""
    return max(1, math.floor(expected_wait_s(position, admit_per_s, due_s) + 0.5))


class WaitingRoom:
    def __init__(self, settings: WaitingRoomSettings, queue: TicketQueue, control: RoomControl,
                 breakers: Mapping[str, Breaker], clock: Clock, metrics: RoomFigures, *,
                 shared: bool, workers: int, buckets: TokenBuckets,
                 drawn: SaleDrawn | None = None) -> None:
        self._base = settings
        self._queue = queue
        self._buckets = buckets
        self._control = control
        self._breakers = breakers
        self._clock = clock
        self._metrics = metrics
        self._drawn = drawn
        self._shared = shared
        self._workers = workers
        self._gates: list[tuple[RoutePolicy, RouteGate]] = []
        self._version = 0
        self._overrides: dict[str, Any] = {}
        self._held_by: tuple[Breaker, ...] = ()
        self.settings = settings
        self.view = RoomView()
        self._tokens: QueueTokens | None = None
        if settings.secret is not None:
            self._tokens = QueueTokens(settings.secret.encode())
        elif not shared:
            self._tokens = QueueTokens(secrets.token_bytes(_SECRET_BYTES))

    # -- set-up and settings ---------------------------------------------------

    def gate(self, policy: RoutePolicy) -> RouteGate:
        gate = RouteGate()
        self._gates.append((policy, gate))
        self._apply(self.settings)
        return gate

    def _apply(self, settings: WaitingRoomSettings) -> None:
        self.settings = settings
        backends = set()
        for policy, gate in self._gates:
            gate.covered = settings.enabled and any(
                scopes.covers(scope, policy) for scope in settings.routes)
            if gate.covered:
                backends.add(policy.backend)
        self._held_by = tuple(self._breakers[name] for name in sorted(backends))

    async def sync(self) -> None:
        """Apply settings changed through another process, and fetch the shared secret."""
        if self._tokens is None:
            candidate = secrets.token_bytes(_SECRET_BYTES)
            self._tokens = QueueTokens(await self._control.shared_secret(candidate))
        version, data = await self._control.overrides()
        if version <= self._version:
            return
        overrides = orjson.loads(data)
        try:
            settings = self._merged(overrides)
        except ValidationError:
            log.error("ignoring invalid waiting-room settings from the store")
            return
        self._version, self._overrides = version, overrides
        self._apply(settings)

    def _merged(self, overrides: dict[str, Any]) -> WaitingRoomSettings:
        # Strict: the admin API takes JSON numbers for numbers and booleans for booleans.
        return WaitingRoomSettings.model_validate(self._base.model_dump() | overrides,
                                                  strict=True)

    def validate(self, changes: dict[str, Any]) -> WaitingRoomSettings:
        """The settings with `changes` applied, or VALIDATION_FAILED with field errors."""
        if "secret" in changes:
            raise field_errors.invalid_field("secret", "is set in the config file or "
                                             "GATEWAY_QUEUE_SECRET only, never here",
                                             "set_elsewhere")
        try:
            settings = self._merged(self._overrides | changes)
        except ValidationError as exc:
            raise field_errors.failed(field_errors.from_pydantic(exc)) from None
        if settings.enabled and self._workers > 1 and not self._shared:
            raise field_errors.invalid_field("enabled", ROOM_NEEDS_REDIS, "redis_required")
        return settings

    async def change(self, changes: dict[str, Any]) -> WaitingRoomSettings:
        """Validate, store and apply at once; other processes follow within a sync."""
        settings = self.validate(changes)
        overrides = self._overrides | changes
        version = await self._control.set_overrides(orjson.dumps(overrides))
        if version > self._version:
            self._version, self._overrides = version, overrides
            self._apply(settings)
        # A sale scheduled (or moved) is in the line before the answer: from then on no
        # process lets anyone in before its start, whatever settings it holds yet.
        await self.step()
        return self.settings

    def public_settings(self) -> dict[str, Any]:
        shown = self.settings.model_dump(exclude={"secret"})
        shown["sale_starts_at"] = self._sale_shown()
        return shown

    def _sale_shown(self) -> str | None:
        starts_at = self.settings.sale_starts_at
        return None if starts_at is None else iso_utc(starts_at.timestamp())

    def overridden(self) -> list[str]:
        """Stored settings another one keeps from acting, each with what holds it: said with
        a change, so that an SRE who turns the room off knows what comes back with it."""
        settings = self.settings
        if settings.enabled:
            return []
        held = [name for name, value in (("queue_all", settings.queue_all),
                                         ("sale_starts_at", settings.sale_starts_at))
                if value]
        return [f"{name} (no effect while enabled is false)" for name in held]

    # -- the request path --------------------------------------------------------

    async def let_in(self, scope: str, headers: Mapping[str, str],
                     answered: Answered | None, submission: str | None = None,
                     address: str = "unknown") -> str | None:
        """Let this request through, with the pass its answer carries (None: it needs none),
        or raise QUEUED / QUEUE_TICKET_EXPIRED / STATE_UNAVAILABLE. `submission`: the
        Idempotency-Key of a covered submission, which a pass lets through only so often."""
        tokens = self._tokens
        if tokens is None:
            raise GatewayError(errors.STATE_UNAVAILABLE)
        settings = self.settings
        now = self._clock.wall()
        sent_pass = headers.get(PASS_HEADER)
        expires_at = tokens.pass_expiry(sent_pass, scope, now)
        if expires_at is not None and await self._pass_lets(sent_pass, submission, expires_at):
            return None
        try:
            if answered is not None and await answered():
                return None  # a replay: nothing new reaches a backend
            number = tokens.ticket_number(headers.get(TICKET_HEADER), scope)
            if number is not None:
                ticket = await self._queue.poll(number, settings.ticket_idle_s)
                if ticket.state is TicketState.ADMITTED:
                    return tokens.make_pass(pass_expiry(ticket.admitted_at, settings), scope)
                if ticket.state is TicketState.WAITING:
                    raise self._queued(tokens, number, scope, ticket.position, ticket.paused,
                                       ticket.due_s, ticket.starts_in_s)
                raise GatewayError(errors.QUEUE_TICKET_EXPIRED)
            if self.view.queueing or settings.queue_all or self._before_sale(now):
                await self._ticket_allowed(address)
            entry = await self._queue.enter(settings.admit_per_s, settings.queue_all)
        except StoreUnavailable:
            raise GatewayError(errors.STATE_UNAVAILABLE) from None
        if entry.ticket is None:
            return tokens.make_pass(pass_expiry(now, settings), scope)
        # The status page shows the queue at once, not at the next admission step.
        self.view = RoomView(max(self.view.waiting, entry.position), True, entry.paused,
                             entry.starts_in_s)
        raise self._queued(tokens, entry.ticket, scope, entry.position, entry.paused,
                           entry.due_s, entry.starts_in_s)

    async def _ticket_allowed(self, address: str) -> None:
        """At most `tickets_per_address_per_min` new tickets per client address (a bucket
        of that many, refilled at that rate), fleet-wide with Redis: a script that takes
        tickets by the thousand would push every real customer back in line. Asked only
        while the room queues: a customer let straight through takes no ticket."""
        most = self.settings.tickets_per_address_per_min
        wait = await self._buckets.take(TICKETS_SCOPE.format(address=address), most / 60, most)
        if wait > 0:
            raise GatewayError(errors.RATE_LIMITED, retry_after_s=max(1, math.ceil(wait)))

    async def _pass_lets(self, sent_pass: str | None, submission: str | None,
                         expires_at: float) -> bool:
        """Whether a valid pass lets this request through: always, but a covered submission
        only while the pass has let fewer than `pass_submissions` others through (the same
        submission again, a resubmission, always). Redis out of reach: it does."""
        if submission is None or sent_pass is None:
            return True
        try:
            return await self._queue.use_pass(sent_pass, submission,
                                              self.settings.pass_submissions, expires_at)
        except StoreUnavailable:
            return True

    async def paced(self, route_key: str, deadline: float) -> None:
        """Hold a covered submission until the backend may take one more: at most
        `admit_per_s` a second, and one more, over the whole fleet (a token bucket in the
        store). Customers let in together, or ordering together after a stall on their
        side or ours, still reach the backend at the room's rate; the wait is short,
        since admissions come at that rate too. Past the deadline: 503 OVERLOADED, nothing
        sent. With the store down the submission goes on: passes work without Redis."""
        rate = self.settings.admit_per_s
        while True:
            try:
                wait = await self._buckets.take(PACE_SCOPE.format(route=route_key), rate,
                                                PACE_BURST)
            except StoreUnavailable:
                return
            if wait <= 0:
                return
            if wait > seconds_left(deadline):
                raise GatewayError(errors.OVERLOADED)
            await self._clock.sleep(wait)

    def _queued(self, tokens: QueueTokens, number: int, scope: str, position: int,
                paused: bool, due_s: float, starts_in_s: float) -> GatewayError:
        ticket = tokens.ticket(number, scope)
        queue = self._waiting_body(position, paused, due_s, starts_in_s)
        return GatewayError(errors.QUEUED, extra={"queue": {"ticket": ticket, **queue}},
                            retry_after_s=queue["poll_after_s"],
                            headers={TICKET_HEADER: ticket})

    def _waiting_body(self, position: int, paused: bool, due_s: float,
                      starts_in_s: float) -> dict[str, Any]:
        settings = self.settings
        if starts_in_s > 0:
            starts_in = math.ceil(starts_in_s)
            return {"position": None, "eta_s": None, "starts_in_s": starts_in,
                    "poll_after_s": pre_queue_poll_s(starts_in, settings.ticket_idle_s)}
        eta = None if paused else eta_s(position, settings.admit_per_s, due_s)
        return {"position": position, "eta_s": eta,
                "poll_after_s": poll_after_s(eta, settings.ticket_idle_s)}

    async def poll(self, scope: str, token: str, wait_s: float = 0.0) -> dict[str, Any]:
        """`GET /v1/queue/{ticket}`: the ticket's state, its idle timer started again; from
        the front of the line, held up to `wait_s` for the admission."""
        tokens = self._tokens
        if tokens is None:
            raise GatewayError(errors.STATE_UNAVAILABLE)
        number = tokens.ticket_number(token, scope)
        if number is None:
            raise GatewayError(errors.TICKET_NOT_HELD)
        settings = self.settings
        try:
            ticket = await self._queue.poll(number, settings.ticket_idle_s)
            # Asked to, and next in: hold the poll until the admission (due within a second),
            # so the customer learns of it at once. Such customers reach the backend at the
            # pace they were admitted, not bunched at their poll times.
            held_until = self._clock.monotonic() + wait_s
            while (ticket.state is TicketState.WAITING and not ticket.paused
                   and 0 < ticket.position <= settings.admit_per_s
                   and (left := held_until - self._clock.monotonic()) > 0):
                # Asleep until the admission is due, then a look every HOLD_CHECK_S.
                due = expected_wait_s(ticket.position, settings.admit_per_s, ticket.due_s)
                await self._clock.sleep(min(max(due, HOLD_CHECK_S), left))
                ticket = await self._queue.poll(number, settings.ticket_idle_s)
        except StoreUnavailable:
            raise GatewayError(errors.STATE_UNAVAILABLE) from None
        if ticket.state is TicketState.WAITING:
            return {"state": "waiting", **self._waiting_body(
                ticket.position, ticket.paused, ticket.due_s, ticket.starts_in_s)}
        if ticket.state is TicketState.GONE:
            raise GatewayError(errors.QUEUE_TICKET_EXPIRED)
        # Shown to the millisecond (admission time plus pass_ttl_s); the pass itself lasts
        # to the next whole second, so it is valid until at least the time shown.
        shown = datetime.fromtimestamp(ticket.admitted_at + settings.pass_ttl_s, UTC)
        return {"state": "admitted",
                "pass": tokens.make_pass(pass_expiry(ticket.admitted_at, settings), scope),
                "pass_expires_at": shown.isoformat(timespec="milliseconds")}

    # -- the admission step, on a timer ----------------------------------------------

    async def step(self) -> None:
        settings = self.settings
        if not settings.enabled:
            self.view = RoomView()
            return
        hold = PAUSE_HOLD_S if any(b.holds_back() for b in self._held_by) else 0.0
        tick = await self._queue.tick(settings.admit_per_s, settings.ticket_idle_s, hold,
                                      self._sale())
        self._metrics.room_tick(tick.expired, tick.waits, tick.waiting)
        if tick.drawn is not None and settings.sale_starts_at is not None:
            log.info("sale of %s: %d pre-queue tickets drawn by lot",
                     settings.sale_starts_at.isoformat(), tick.drawn)
            if self._drawn is not None:
                self._drawn(tick.drawn, settings.sale_starts_at)
        queueing = (tick.paused or tick.waiting > 0 or settings.queue_all
                    or tick.recent >= settings.admit_per_s or tick.starts_in_s > 0)
        self.view = RoomView(tick.waiting, queueing, tick.paused, tick.starts_in_s)

    def _sale(self) -> Sale:
        starts_at = self.settings.sale_starts_at
        return Sale(None if starts_at is None else starts_at.timestamp(), self._version)

    def _before_sale(self, now: float) -> bool:
        """Whether this process's settings put `now` (Unix time) before a sale's start."""
        starts_at = self.settings.sale_starts_at
        return starts_at is not None and now < starts_at.timestamp()

    # -- figures -----------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """For `GET /v1/status`: `eta_s` is the wait of a customer arriving now."""
        settings, view = self.settings, self.view
        shown = self._sale_shown()
        if not settings.enabled:
            return {"enabled": False, "queueing": False, "waiting": 0, "eta_s": 0,
                    "sale_starts_at": shown}
        eta: int | None = 0
        before_sale = self._before_sale(self._clock.wall())
        if view.paused or before_sale:
            eta = None  # no place is known before the draw
        elif view.queueing:
            eta = eta_s(view.waiting + 1, settings.admit_per_s)
        return {"enabled": True, "queueing": view.queueing or before_sale,
                "waiting": view.waiting, "eta_s": eta, "sale_starts_at": shown}

    async def figures(self) -> dict[str, Any]:
        """For `GET /admin/waiting-room`: fleet-wide with Redis."""
        waiting, admitted, expired = await self._queue.totals()
        return {"settings": self.public_settings(), "waiting": waiting,
                "admitted_total": admitted, "expired_total": expired}
