"""Calls to the backends: the only module that makes outgoing HTTP requests.

One pool of keep-alive connections per backend (`http_wire.py`). Every way a
call can fail is translated here, at exactly one boundary, into a catalog error:

- connection refused or connect timeout: the backend certainly did nothing,
  `UPSTREAM_UNAVAILABLE`;
- reset, 5xx, or an answer that is not JSON: `UPSTREAM_UNAVAILABLE`;
- no answer within `timeout_s` (kept by the process's timer wheel): `UPSTREAM_TIMEOUT`;
- for a call that may have had an effect and whose outcome is unknown (sent,
  then timed out or reset), the route's own error (`PAYMENT_OUTCOME_UNKNOWN`).

A call is sent again by the gateway itself only when that cannot do harm: a read
after any failure worth retrying, a call that changes state (a keyed POST) only
when the failed attempt certainly never reached the backend (no connection).
Whether a keyed POST that may have landed is sent again is decided above this
module, after a lookup (`gateway/pipeline/idempotency.py`), never here.

A fault-injection rule (`faults.py`) acts after the breaker let a call through and
before anything is sent: a delay, then the failure it names, or the real send.

A backend's 2xx and 4xx JSON answers pass through untouched. Every call first
takes a slot of the backend's bulkhead (waiting at most until the request's
deadline), then goes through the backend's circuit breaker: an open breaker answers `CIRCUIT_OPEN`
without touching the pool; the failures above count against the backend,
business answers and cancellations do not.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Protocol
from urllib.parse import quote

import orjson

from gateway.backends.breaker import Breaker, Outcome
from gateway.backends.faults import RESET, Faults, Injection
from gateway.backends.http_wire import Answer, ConnectFailed, HttpWire, HttpWireError, TimedOut
from gateway.backends.retry import Backoff, RetryBudget
from gateway.backends.timer_wheel import TimerWheel
from gateway.contract import errors
from gateway.contract.clock import Clock, SystemClock, loop_now, seconds_left
from gateway.contract.errors import ErrorSpec, GatewayError
from gateway.contract.overload import Bulkhead, Unlimited
from gateway.contract.reply import Reply
from gateway.contract.routes import RoutePolicy
from gateway.contract.settings import UpstreamSettings

# Response headers of a backend that mean something to the client; all others
# (hop-by-hop, server internals) stay behind the gateway.
PASSTHROUGH_RESPONSE_HEADERS = ("Location", "ETag", "Last-Modified", "Cache-Control",
                                "Content-Language", "Retry-After")
_PASSTHROUGH = tuple((name, name.lower()) for name in PASSTHROUGH_RESPONSE_HEADERS)
MAX_RESPONSE_BYTES = 1024 * 1024


# Backend statuses that say "not now" rather than "broken": worth another try.
RETRY_STATUSES = frozenset({502, 503, 504})


class Repeat(Enum):
    """Which failed attempts of a call the gateway itself may send again."""

    ALWAYS = "always"  # a read: repeating it changes nothing at the backend
    IF_UNSENT = "if_unsent"  # changes state: only an attempt that certainly was not sent


@dataclass(frozen=True, slots=True)
class Call:
    """One request to a backend, with what the route says about repeating it.

    Built once per request by the route pipeline and handed down unchanged
    through the bulkhead, the retries, the breaker and the send.
    """

    method: str
    path: str
    headers: Mapping[str, str]
    # Loop time bounding the wait for a bulkhead slot, every attempt and every backoff;
    # None: the backend's own timeout from now.
    deadline: float | None = None
    query: Mapping[str, str] | None = None
    body: bytes | None = None
    repeat: Repeat = Repeat.IF_UNSENT
    # The error for a call that may have changed state but whose answer was lost (a
    # payment's PAYMENT_OUTCOME_UNKNOWN); None: a lost answer is a plain timeout or
    # unavailability.
    unknown_outcome: ErrorSpec | None = None
    # The route being served and the client's headers: what fault rules match on.
    route: RoutePolicy | None = None
    client_headers: Mapping[str, str] | None = None
    # A reconciling lookup of the idempotency guard (so marked in its trace span).
    lookup: bool = False


class BackendFigures(Protocol):
    """What a backend's calls report (the metrics implement it): the only way this module
    counts anything, so it needs no metrics library and a test can record the figures."""

    def observe_upstream(self, backend: str, seconds: float, outcome: str) -> None: ...

    def breaker_rejected(self, backend: str, count: int = 1) -> None: ...

    def retried(self, backend: str) -> None: ...

    def retry_budget_exhausted(self, backend: str) -> None: ...

    def bulkhead_queued(self, backend: str) -> None: ...

    def bulkhead_rejected(self, backend: str) -> None: ...


class AttemptSpan(Protocol):
    """One attempt as its trace sees it: the `traceparent` it carries, what came back."""

    @property
    def traceparent(self) -> str: ...

    def answered(self, status: int) -> None: ...

    def fault(self, kind: str) -> None: ...

    def end(self, error: str | None) -> None: ...


class CallTracing(Protocol):
    """Tracing as a backend's calls see it (`ops/tracing.py` implements it)."""

    def attempt(self, method: str, lookup: bool) -> AttemptSpan | None: ...

    def refused(self, reason: str) -> None: ...


@dataclass
class UpstreamError(GatewayError):
    """A failed call, and whether the same call might succeed if tried again."""

    worth_retrying: bool = False
    timed_out: bool = False


@dataclass(frozen=True, slots=True)
class HeadLimits:
    """How large a backend's answer head may be: as large as a client's request head."""

    max_headers: int = 64
    max_header_bytes: int = 8190


class Upstream:
    """One backend: its pool, its timeouts, its failure translation."""

    def __init__(self, name: str, settings: UpstreamSettings, breaker: Breaker,
                 metrics: BackendFigures, clock: Clock | None = None, bulkheads: bool = True,
                 faults: Faults | None = None, wheel: TimerWheel | None = None,
                 head_limits: HeadLimits = HeadLimits(),
                 tracing: CallTracing | None = None) -> None:
        self.name = name
        self._tracing = tracing
        self._faults = faults
        self.breaker = breaker
        self.bulkhead: Bulkhead | Unlimited = (
            Bulkhead(name, settings.max_concurrent, settings.max_queue) if bulkheads
            else Unlimited())
        self._retry = settings.retry
        self._backoff = Backoff(settings.retry)
        self._clock = clock or SystemClock()
        self._budget = RetryBudget(settings.retry, self._clock)
        self._metrics = metrics
        self.settings = settings
        self._wire = HttpWire(settings.url, size=settings.pool_size,
                              keepalive_s=settings.keepalive_s,
                              connect_timeout_s=settings.connect_timeout_s,
                              max_body_bytes=MAX_RESPONSE_BYTES,
                              wheel=wheel or TimerWheel(), ca_file=settings.ca_file,
                              max_headers=head_limits.max_headers,
                              max_header_bytes=head_limits.max_header_bytes)
        self._timeout_error_params = {"backend": name, "timeout_s": settings.timeout_s}
        self._backend_params = {"backend": name}

    async def start(self) -> None:
        """Nothing to open: connections are made as calls need them."""

    async def close(self) -> None:
        await self._wire.close()

    async def call(self, call: Call) -> Reply:
        """Send one request and return a pass-through answer, or raise a GatewayError."""
        deadline = call.deadline
        if deadline is None:
            deadline = loop_now() + self.settings.timeout_s
        try:
            if await self.bulkhead.acquire(deadline):
                self._metrics.bulkhead_queued(self.name)
        except GatewayError:
            self._metrics.bulkhead_rejected(self.name)
            if self._tracing is not None:
                self._tracing.refused("bulkhead_full")
            raise
        try:
            return await self._with_retries(call, deadline)
        finally:
            self.bulkhead.release()

    async def _with_retries(self, call: Call, deadline: float) -> Reply:
        self._budget.called()
        reached = False
        retry = 0
        while True:
            try:
                return await self._through_breaker(call, seconds_left(deadline))
            except UpstreamError as err:
                reached = reached or err.reached_backend
                err.reached_backend = reached
                if reached and call.repeat is Repeat.IF_UNSENT:
                    raise
                if not await self.pause_before_retry(err, retry, deadline):
                    raise
            retry += 1

    async def pause_before_retry(self, err: GatewayError, retry: int, deadline: float) -> bool:
        """Whether failed attempt number `retry` (from 0) may be followed by another.

        Only for failures worth another try, within `max_retries`, with time left
        before `deadline` after the backoff, and within the retry budget; if so,
        the backoff is slept before answering True. Whether a repeat is *safe* is
        the caller's question, not this one's.
        """
        if not (isinstance(err, UpstreamError) and err.worth_retrying):
            return False
        if retry >= self._retry.max_retries:
            return False
        pause = self._backoff.delay(retry)
        left = seconds_left(deadline)
        if left - pause < self._retry.min_time_left_ms / 1000:
            return False
        if not self._budget.try_spend():
            self._metrics.retry_budget_exhausted(self.name)
            return False
        self._metrics.retried(self.name)
        await self._clock.sleep(pause)
        return True

    async def _through_breaker(self, call: Call, left_s: float) -> Reply:
        if left_s <= 0:
            # The deadline passed while queueing: nothing was sent.
            raise GatewayError(errors.UPSTREAM_TIMEOUT, params=self._timeout_error_params)
        try:
            permit = self.breaker.acquire()
        except GatewayError:
            self._metrics.breaker_rejected(self.name)
            if self._tracing is not None:
                self._tracing.refused("breaker_open")
            raise
        timeout_s = min(self.settings.timeout_s, left_s)
        faults = self._faults
        span = None if self._tracing is None else self._tracing.attempt(call.method, call.lookup)
        try:
            if faults is not None and faults.active and (injection := faults.roll(
                    self.name, call.route, call.client_headers)) is not None:
                result = await self._send_faulted(call, timeout_s, injection, span)
            else:
                result = await self._send(call, timeout_s, span)
        except UpstreamError as err:
            # A timeout shorter than the backend's own (the request's deadline, which a
            # client may set) says nothing about the backend: a client asking for 1 ms
            # must not open the breaker for everyone.
            cut_short = err.timed_out and timeout_s < self.settings.timeout_s
            self.breaker.release(permit, Outcome.IGNORED if cut_short else Outcome.FAILURE)
            if span is not None:
                span.end(err.spec.code)
            raise
        except GatewayError as err:
            self.breaker.release(permit, Outcome.FAILURE)
            if span is not None:
                span.end(err.spec.code)
            raise
        except BaseException:
            # Cancelled (the client went away, shutdown): says nothing about the backend.
            self.breaker.release(permit, Outcome.IGNORED)
            if span is not None:
                span.end("cancelled")
            raise
        self.breaker.release(permit, Outcome.SUCCESS)
        if span is not None:
            span.end(None)
        return result

    async def _send(self, call: Call, timeout_s: float, span: AttemptSpan | None) -> Reply:
        started = self._clock.monotonic()
        headers = call.headers
        if span is not None:  # this attempt's own trace context, not the client's
            headers = {**headers, "traceparent": span.traceparent}
        target = call.path
        if call.query:
            target += "?" + "&".join(f"{quote(name, safe='')}={quote(value, safe='')}"
                                     for name, value in call.query.items())
        try:
            answer = await self._wire.request(
                call.method, target, headers, call.body,
                loop_now() + timeout_s,
                repeatable=call.repeat is Repeat.ALWAYS)
        except ConnectFailed:
            # No connection, so the backend certainly never saw the request.
            raise self._failed(errors.UPSTREAM_UNAVAILABLE, started, reached=False,
                               worth_retrying=True) from None
        except TimedOut as err:
            # Timed out before anything was sent (connecting, or waiting for the pool): no
            # effect is possible, so no outcome is unknown.
            spec = (call.unknown_outcome if err.sent else None) or errors.UPSTREAM_TIMEOUT
            failure = self._failed(spec, started,
                                   {"backend": self.name, "timeout_s": round(timeout_s, 3)},
                                   reached=err.sent)
            failure.timed_out = True
            raise failure from None
        except HttpWireError as err:
            # Reset, disconnect or a malformed HTTP answer once the request was sent;
            # a reset before any answer is worth another try, a broken answer is not.
            raise self._failed(call.unknown_outcome or errors.UPSTREAM_UNAVAILABLE, started,
                               worth_retrying=not err.answered) from None
        except ValueError:
            # A header value the request line cannot carry: nothing was sent.
            raise self._failed(errors.UPSTREAM_UNAVAILABLE, started, reached=False) from None
        result = _reply(answer)
        if span is not None:
            span.answered(result.status)
        if result.status >= 500 or not _is_json(result):
            # A 5xx does not promise the backend did nothing: treated as reached.
            raise self._failed(errors.UPSTREAM_UNAVAILABLE, started,
                               worth_retrying=result.status in RETRY_STATUSES)
        self._record(started, "ok")
        return result

    async def _send_faulted(self, call: Call, timeout_s: float, injection: Injection,
                            span: AttemptSpan | None) -> Reply:
        """A call a fault rule acts on: wait, then fail as the rule says, or send. Nothing is
        sent before or instead of the failure, so it never reached the backend."""
        started = self._clock.monotonic()
        if span is not None:
            span.fault("abort" if injection.abort is not None else "delay")
        if injection.delay_s >= timeout_s:
            await self._clock.sleep(timeout_s)
            failure = self._failed(errors.UPSTREAM_TIMEOUT, started,
                                   {"backend": self.name, "timeout_s": round(timeout_s, 3)},
                                   reached=False)
            failure.timed_out = True
            raise failure
        if injection.delay_s:
            await self._clock.sleep(injection.delay_s)
        if injection.abort == RESET:
            raise self._failed(errors.UPSTREAM_UNAVAILABLE, started, reached=False,
                               worth_retrying=True)
        if injection.abort is not None:
            raise self._failed(errors.UPSTREAM_UNAVAILABLE, started, reached=False,
                               worth_retrying=injection.abort in RETRY_STATUSES)
        return await self._send(call, timeout_s - injection.delay_s, span)

    def _failed(self, spec: ErrorSpec, started: float,
                params: dict[str, object] | None = None, *, reached: bool = True,
                worth_retrying: bool = False) -> UpstreamError:
        self._record(started, spec.code)
        return UpstreamError(spec, params=params or self._backend_params,
                             reached_backend=reached, worth_retrying=worth_retrying)

    def _record(self, started: float, outcome: str) -> None:
        self._metrics.observe_upstream(self.name, self._clock.monotonic() - started, outcome)


def _reply(answer: Answer) -> Reply:
    headers = answer.headers
    ctype = headers.get("content-type", "application/octet-stream")
    return Reply(status=answer.status, body=answer.body,
                 content_type=ctype.partition(";")[0].strip().lower(),
                 headers=tuple((name, headers[lower]) for name, lower in _PASSTHROUGH
                               if lower in headers))


def _is_json(result: Reply) -> bool:
    ctype = result.content_type
    if ctype != "application/json" and not ctype.endswith("+json"):
        return False
    try:
        orjson.loads(result.body)
    except orjson.JSONDecodeError:
        return False
    return True
