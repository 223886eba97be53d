"""Distributed tracing on the OpenTelemetry SDK: a SERVER span per public request, a
CLIENT span per backend attempt, W3C trace context in and out (docs/operations.md,
"Tracing").

What it costs decides the shape (docs/performance.md, "Tracing"):

- The sampling decision comes first, before the SDK is asked for anything. The trace id
  is the incoming `traceparent`'s or one drawn here, and the spec's samplers are decided
  here on it (`Decision`, held to the SDK's own samplers by the unit tests). An
  unrecorded request costs a header parse, two random numbers and one `traceparent` per
  backend call; only a recorded one builds spans (about 20 us each in the SDK).
- For a new trace the SDK is handed the id the decision was taken on (`_DrawnIds`), so
  that the recorded trace is the one the sampler chose.
- Spans leave through the SDK's batch processor, in its thread; the exporter's HTTP
  client never runs on the event loop. A collector that is down or slow loses spans, not
  requests, and the SDK's complaints about it reach the log at most once a minute.
- The request's trace lives in a contextvar set by the edge when the request starts and
  reset when its answer is finished: aiohttp serves the keep-alive requests of one
  connection in one task, so a trace must not outlive its request.

Domain code never imports this module: the edge, the upstreams and the idempotency guard
call the hooks they declare (`RequestTracing`, `CallTracing`, the guard's callables), and
`app.py` hands this in.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
import time
from collections.abc import Mapping
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

# The API (light) is imported here; the SDK and its exporters (heavy) only when tracing is
# on, so that a process without tracing never loads them.
from opentelemetry.trace import (
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    Tracer,
    TraceState,
    set_span_in_context,
)

from gateway.contract.forwarded import trace_parent
from gateway.contract.settings import TracingSettings

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

log = logging.getLogger("gateway")

_LOW_64 = (1 << 64) - 1
# Names of idempotency events as the span says them: the outcome, not the counter.
_OUTCOMES = {"reconciled_found": "reconciled", "reconciled_absent": "reconciled"}
_ERROR = Status(StatusCode.ERROR)
_CLIENT_GONE = 499  # the status a span ends with when the client left before the answer
LOG_EVERY_S = 60.0


@dataclass(frozen=True, slots=True)
class Decision:
    """The spec's samplers (`OTEL_TRACES_SAMPLER`), decided on a trace id and the remote
    parent's sampled flag: exactly what the SDK's samplers answer, without building the
    context objects they are asked with."""

    parent_based: bool
    root: str  # "on", "off" or "ratio"
    bound: int  # trace ids whose low 64 bits are below it are sampled, for "ratio"

    @classmethod
    def of(cls, settings: TracingSettings) -> Decision:
        name = settings.sampler
        parent_based = name.startswith("parentbased_")
        root = {"always_on": "on", "always_off": "off"}.get(
            name.removeprefix("parentbased_"), "ratio")
        return cls(parent_based, root, round(settings.sampler_arg * (_LOW_64 + 1)))

    def sampled(self, trace_id: int, parent_flags: int | None) -> bool:
        if parent_flags is not None and self.parent_based:
            return bool(parent_flags & 1)
        if self.root == "ratio":
            return (trace_id & _LOW_64) < self.bound
        return self.root == "on"


class _Unrecorded:
    """A backend call of an unrecorded request: the same trace id, the sampled flag off,
    one parent id for the whole request (no span has it, as none is recorded)."""

    __slots__ = ("traceparent",)

    def __init__(self, trace_id: int) -> None:
        self.traceparent = f"00-{trace_id:032x}-{random.getrandbits(64) or 1:016x}-00"

    def answered(self, status: int) -> None:
        pass

    def fault(self, kind: str) -> None:
        pass

    def end(self, error: str | None) -> None:
        pass


class _Attempt:
    """One recorded backend attempt: its CLIENT span and the `traceparent` naming it."""

    __slots__ = ("_span", "traceparent")

    def __init__(self, span: Span) -> None:
        self._span = span
        context = span.get_span_context()
        self.traceparent = f"00-{context.trace_id:032x}-{context.span_id:016x}-01"

    def answered(self, status: int) -> None:
        self._span.set_attribute("http.response.status_code", status)

    def fault(self, kind: str) -> None:
        self._span.set_attribute("gateway.fault", kind)

    def end(self, error: str | None) -> None:
        if error is not None:
            self._span.set_attribute("error.type", error)
            self._span.set_status(_ERROR)
        self._span.end()


@dataclass(slots=True)
class _Trace:
    """One request's place in its trace, for as long as the request is served."""

    trace_id: int
    span: Span | None  # the SERVER span, when recorded
    context: Context | None  # the parent of its CLIENT spans, when recorded
    unrecorded: _Unrecorded | None
    token: Token[_Trace | None] | None = field(default=None)
    sent: int = 0  # backend attempts so far, lookups aside: the next one's resend count

    @property
    def recorded_ids(self) -> tuple[str, str] | None:
        """The trace and span ids an access-log line carries, when recorded."""
        if self.span is None:
            return None
        return f"{self.trace_id:032x}", f"{self.span.get_span_context().span_id:016x}"

    def end(self, status: int, code: str) -> None:
        if self.token is not None:
            _CURRENT.reset(self.token)
            self.token = None
        span = self.span
        if span is None:
            return
        span.set_attribute("http.response.status_code", status)
        if code != "none":
            span.set_attribute("gateway.error.code", code)
        if status >= 500:
            span.set_status(_ERROR)
        span.end()

    def client_gone(self) -> None:
        self.end(_CLIENT_GONE, "CLIENT_GONE")


_CURRENT: ContextVar[_Trace | None] = ContextVar("gateway_trace", default=None)


class BackendTracing:
    """The CLIENT spans of one backend, its address fixed at start-up."""

    def __init__(self, tracer: Tracer, backend: str, host: str, port: int) -> None:
        self._tracer = tracer
        self._backend = backend
        self._address = {"gateway.backend": backend, "server.address": host,
                         "server.port": port}

    def attempt(self, method: str, lookup: bool) -> _Attempt | _Unrecorded | None:
        """The attempt's span (or the unrecorded request's trace context), or None outside
        any traced request (its `traceparent`, if any, then passes as it came)."""
        trace = _CURRENT.get()
        if trace is None:
            return None
        if trace.unrecorded is not None:
            return trace.unrecorded
        attributes: dict[str, Any] = {"http.request.method": method, **self._address}
        if lookup:
            attributes["gateway.lookup"] = True
        else:
            # Counted per request, so that a payment resent by the idempotency guard after
            # its lookup counts as a resend as much as a read retried by the upstream.
            if trace.sent:
                attributes["http.request.resend_count"] = trace.sent
            trace.sent += 1
        span = self._tracer.start_span(f"{method} {self._backend}", trace.context,
                                       SpanKind.CLIENT, attributes)
        return _Attempt(span)

    def refused(self, reason: str) -> None:
        """A call refused before it left (`breaker_open`, `bulkhead_full`): an event on the
        request's span, as no attempt was made."""
        trace = _CURRENT.get()
        if trace is not None and trace.span is not None:
            trace.span.add_event("gateway.call_refused",
                                 {"gateway.backend": self._backend, "gateway.reason": reason})


class _DrawnIds:
    """The SDK's id source, given the trace id the gateway drew for a new trace."""

    def __init__(self) -> None:
        self.next_trace_id = 0

    def generate_span_id(self) -> int:
        return random.getrandbits(64) or 1

    def generate_trace_id(self) -> int:
        return self.next_trace_id or random.getrandbits(128) or 1

    def is_trace_id_random(self) -> bool:
        return True  # drawn here or by the client's tracer: random either way, as W3C asks


class Tracing:
    """The process's tracer provider, exporter and batch processor."""

    def __init__(self, settings: TracingSettings) -> None:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.id_generator import IdGenerator
        from opentelemetry.sdk.trace.sampling import ALWAYS_ON

        self.decision = Decision.of(settings)
        self._ids = _DrawnIds()
        IdGenerator.register(_DrawnIds)
        # The decision is taken here, so the SDK records whatever it is asked to start.
        self._provider: TracerProvider = TracerProvider(
            sampler=ALWAYS_ON, id_generator=self._ids,  # type: ignore[arg-type]
            resource=Resource.create({"service.name": settings.service_name}),
            # Not at exit: `close` drains within the drain timeout, and a second shutdown
            # at exit would wait up to 30 s more for a collector that does not answer.
            shutdown_on_exit=False)
        self._provider.add_span_processor(BatchSpanProcessor(
            _exporter(settings), schedule_delay_millis=settings.schedule_delay_ms))
        self._tracer = self._provider.get_tracer("order-gateway")
        _limit_sdk_logs()

    def for_backend(self, backend: str, host: str, port: int) -> BackendTracing:
        return BackendTracing(self._tracer, backend, host, port)

    def begin(self, method: str, route: str, headers: Mapping[str, str], rid: str) -> _Trace:
        """The request's trace, current until `end`: continued from its `traceparent`,
        or new."""
        sent = headers.get("traceparent")
        parent = trace_parent(sent) if sent is not None else None
        trace_id = parent[0] if parent is not None else random.getrandbits(128) or 1
        if not self.decision.sampled(trace_id, None if parent is None else parent[2]):
            trace = _Trace(trace_id, None, None, _Unrecorded(trace_id))
        else:
            trace = self._recorded(method, route, rid, trace_id, parent,
                                   headers.get("tracestate"))
        trace.token = _CURRENT.set(trace)
        return trace

    def _recorded(self, method: str, route: str, rid: str, trace_id: int,
                  parent: tuple[int, int, int] | None, tracestate: str | None) -> _Trace:
        context = None
        if parent is not None:
            state = TraceState.from_header([tracestate]) if tracestate else None
            context = set_span_in_context(NonRecordingSpan(SpanContext(
                trace_id, parent[1], is_remote=True, trace_flags=TraceFlags(parent[2] & 1),
                trace_state=state)))
        self._ids.next_trace_id = trace_id
        try:
            span = self._tracer.start_span(
                f"{method} {route}", context, SpanKind.SERVER,
                {"http.request.method": method, "http.route": route,
                 "gateway.request_id": rid})
        finally:
            self._ids.next_trace_id = 0
        return _Trace(trace_id, span, set_span_in_context(span), None)

    def idempotency(self, event: str) -> None:
        """The idempotency guard's event, as the request's outcome (`claimed`, `replayed`,
        `in_progress`, `reconciled`, ...)."""
        trace = _CURRENT.get()
        if trace is not None and trace.span is not None:
            trace.span.set_attribute("gateway.idempotency", _OUTCOMES.get(event, event))

    def timed(self, step: str, seconds: float) -> None:
        """A shared-state round trip of the request (the idempotency claim, with its
        replica acknowledgement wait), as an event with its duration."""
        trace = _CURRENT.get()
        if trace is not None and trace.span is not None:
            trace.span.add_event(f"gateway.{step}", {"duration_ms": round(seconds * 1000, 3)})

    async def close(self, timeout_s: float) -> None:
        """Export what is batched and stop the exporter, within `timeout_s`. The SDK blocks
        while it exports, so this runs in a daemon thread of its own (not the loop's
        executor, whose threads the process waits for at exit): past the bound, the spans
        still batched are lost and the process goes on stopping."""
        loop = asyncio.get_running_loop()
        done = asyncio.Event()

        def flush_and_stop() -> None:
            try:
                self._provider.force_flush()
                self._provider.shutdown()
            finally:
                with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                    loop.call_soon_threadsafe(done.set)

        threading.Thread(target=flush_and_stop, name="tracing-shutdown", daemon=True).start()
        try:
            await asyncio.wait_for(done.wait(), timeout_s)
        except TimeoutError:
            log.warning("tracing: spans still batched at shutdown were not exported",
                        extra={"fields": {"timeout_s": timeout_s}})

def _exporter(settings: TracingSettings) -> SpanExporter:
    if settings.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcExporter,
        )

        return GrpcExporter(endpoint=settings.traces_endpoint or settings.endpoint)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    endpoint = settings.traces_endpoint
    if endpoint is None and settings.endpoint is not None:
        endpoint = settings.endpoint.rstrip("/") + "/v1/traces"
    return OTLPSpanExporter(endpoint=endpoint)


class _OncePerMinute(logging.Filter):
    """The SDK's complaints (a collector down, a full queue) at most once a minute, with
    how many were left out meanwhile: one per failed batch would flood the log."""

    def __init__(self, every_s: float = LOG_EVERY_S) -> None:
        super().__init__()
        self._every_s = every_s
        self._last = -every_s
        self._held = 0

    def filter(self, record: logging.LogRecord) -> bool:
        now = time.monotonic()
        if now - self._last < self._every_s:
            self._held += 1
            return False
        self._last = now
        if self._held:
            record.msg = f"{record.msg} ({self._held} more such messages in the last minute)"
            self._held = 0
        return True


def _limit_sdk_logs() -> None:
    """Every record of the SDK and its exporters passes one shared limit, then goes on to
    the process log as any other record would."""
    sdk = logging.getLogger("opentelemetry")
    if any(isinstance(h, _Forward) for h in sdk.handlers):
        return
    sdk.propagate = False
    handler = _Forward()
    handler.addFilter(_OncePerMinute())
    sdk.addHandler(handler)


class _Forward(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        for handler in logging.getLogger().handlers:
            if record.levelno >= handler.level:
                handler.handle(record)

