"""Metrics, the access log and the process log: what operators see.

Hot-path costs are kept to a few dictionary and list updates per request, and
one JSON line written to a buffered stream (flushed on a timer, not per line).
No bodies, query strings or personal data are logged.

The per-request series (requests by route, status and code; request and
backend-call durations) are tallied in plain Python and added to
prometheus-client's series on the housekeeping timer and before every
exposition: an update through prometheus-client takes a lock (and, with
several workers, writes a memory-mapped file) per value, which cost as much as
several pipeline steps. A scrape of this process is always current; with
several worker processes (`serve --workers N`, aggregated through
prometheus-client's multiprocess mode) another worker's last half second may
not be in it yet.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from bisect import bisect_left
from collections.abc import Callable, Sequence
from typing import IO, Any

import orjson
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client import multiprocess as prom_multiprocess

from gateway.contract import privacy

# `_created` samples double the series count and no dashboard of ours reads them.
# (unannotated in prometheus-client)
disable_created_metrics()  # type: ignore[no-untyped-call]


MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
METRICS_CONTENT_TYPE = CONTENT_TYPE_LATEST
_STATE_VALUES = {"closed": 0, "half_open": 1, "open": 2}
_WAIT_BUCKETS = (1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_LATENCY_BOUNDS = (*_LATENCY_BUCKETS, float("inf"))


# Access log lines gathered before a write (about 350 lines); see AccessLog.
ACCESS_LOG_BUFFER_BYTES = 64 * 1024


ACK_WRITES = ("claim", "answer", "admin")  # what replicas are asked to hold


class Metrics:
    """The gateway's Prometheus series, with label children cached after first use."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        self.requests = Counter(
            "gateway_requests", "Requests answered, by route, status and error code",
            ("route", "status", "code"), registry=reg)
        self.request_seconds = Histogram(
            "gateway_request_duration_seconds", "Time to answer a request, by route",
            ("route",), buckets=_LATENCY_BUCKETS, registry=reg)
        self.upstream_seconds = Histogram(
            "gateway_upstream_duration_seconds", "Backend call time, by backend and outcome",
            ("backend", "outcome"), buckets=_LATENCY_BUCKETS, registry=reg)
        self.in_flight = Gauge(
            "gateway_requests_in_flight", "Proxied requests taken on, from their arrival to "
            "their answer", registry=reg, multiprocess_mode="livesum")
        self.admission_limit = Gauge(
            "gateway_admission_limit", "Proxied requests admission takes on at once, as set "
            "by the measured queueing delay", registry=reg, multiprocess_mode="livesum")
        self.queue_delay = Gauge(
            "gateway_queue_delay_seconds", "Queueing delay measured over the last interval: "
            "the mean wait from arrival to handler, or the event loop's lag if longer",
            registry=reg, multiprocess_mode="livemax")
        self.breaker_state = Gauge(
            "gateway_breaker_state", "Breaker state per backend: 0 closed, 1 half-open, 2 open",
            ("backend",), registry=reg, multiprocess_mode="liveall")
        self.breaker_forced, self.fault_rules = _sre_gauges(reg)
        self.breaker_transitions = Counter(
            "gateway_breaker_transitions", "Breaker state changes, by backend, states and reason",
            ("backend", "from_state", "to_state", "reason"), registry=reg)
        self.breaker_rejections = Counter(
            "gateway_breaker_rejected_calls", "Calls refused at once by an open breaker",
            ("backend",), registry=reg)
        self.idempotency = Counter(
            "gateway_idempotency_events", "Idempotency decisions, by route and event "
            "(claimed, replayed, in_progress, reused, released, outcome_unknown, taken_over, "
            "reconciled_found, reconciled_absent, reconcile_failed, store_unavailable, "
            "lease_lost)", ("route", "event"), registry=reg)
        self.shed = Counter(
            "gateway_shed_requests", "Requests refused by admission control (503 OVERLOADED) "
            "before being read, by route (at arrival, or for waiting too long)", ("route",),
            registry=reg)
        self.bulkhead_queued_calls = Counter(
            "gateway_bulkhead_queued_calls", "Backend calls that waited for a bulkhead slot",
            ("backend",), registry=reg)
        self.bulkhead_rejected_calls = Counter(
            "gateway_bulkhead_rejected_calls", "Backend calls refused by a full bulkhead or a "
            "deadline passed while queued (503 OVERLOADED)", ("backend",), registry=reg)
        self.faults_injected = Counter(
            "gateway_faults_injected", "Backend calls faulted by a fault-injection rule, by "
            "backend and kind (abort, delay)", ("backend", "kind"), registry=reg)
        self.retries = Counter(
            "gateway_upstream_retries", "Backend calls retried, by backend", ("backend",),
            registry=reg)
        self.retry_budget_exhausted_calls = Counter(
            "gateway_retry_budget_exhausted", "Retries not made because the backend's retry "
            "budget was spent, by backend", ("backend",), registry=reg)
        self.rate_limit = Counter(
            "gateway_rate_limit_events", "Rate-limit decisions: limited (429), store_unavailable "
            "(let through because Redis could not be reached)", ("event",), registry=reg)
        self.stale_served = Counter(
            "gateway_stale_served", "Answers served from the stale cache because the backend "
            "failed or its breaker was open, by route", ("route",), registry=reg)
        self.waiting_room_waiting = Gauge(
            "gateway_waiting_room_waiting", "Customers waiting in the waiting room (fleet-wide "
            "with Redis)", registry=reg, multiprocess_mode="livemax")
        self.waiting_room_admitted = Counter(
            "gateway_waiting_room_admitted", "Waiting-room tickets admitted (by this process's "
            "admission steps; summed over processes, the fleet's)", registry=reg)
        self.waiting_room_expired = Counter(
            "gateway_waiting_room_expired", "Waiting-room tickets that lost their place, not "
            "polled in time", registry=reg)
        self.waiting_room_wait_seconds = Histogram(
            "gateway_waiting_room_wait_seconds", "Waiting-room time from ticket to admission",
            buckets=_WAIT_BUCKETS, registry=reg)
        self.replica_acks = _replica_acks(reg)
        # Gathered since the last `flush`: requests by (route, status, code), and duration
        # tallies (see `_tally`) by route and by (backend, outcome).
        self._requests_due: dict[tuple[str, int, str], int] = {}
        self._latency_due: dict[str, list[float]] = {}
        self._upstream_due: dict[tuple[str, str], list[float]] = {}

    def observe_request(self, route: str, status: int, code: str, seconds: float) -> None:
        key = (route, status, code)
        due = self._requests_due
        due[key] = due.get(key, 0) + 1
        tally = self._latency_due.get(route)
        if tally is None:
            tally = self._latency_due[route] = _tally()
        tally[bisect_left(_LATENCY_BOUNDS, seconds)] += 1
        tally[-1] += seconds

    def fault_injected(self, backend: str, kind: str) -> None:
        self.faults_injected.labels(backend, kind).inc()

    def count_requests(self, route: str, status: int, code: str, count: int) -> None:
        """Requests answered without a duration worth observing (refusals at arrival)."""
        self.requests.labels(route, str(status), code).inc(count)

    def observe_upstream(self, backend: str, seconds: float, outcome: str) -> None:
        key = (backend, outcome)
        tally = self._upstream_due.get(key)
        if tally is None:
            tally = self._upstream_due[key] = _tally()
        tally[bisect_left(_LATENCY_BOUNDS, seconds)] += 1
        tally[-1] += seconds

    def flush(self) -> None:
        """Add what the hot path tallied to the Prometheus series."""
        requests, self._requests_due = self._requests_due, {}
        for (route, status, code), count in requests.items():
            self.requests.labels(route, str(status), code).inc(count)
        latency, self._latency_due = self._latency_due, {}
        for route, tally in latency.items():
            _add_tally(self.request_seconds.labels(route), tally)
        upstream, self._upstream_due = self._upstream_due, {}
        for labels, tally in upstream.items():
            _add_tally(self.upstream_seconds.labels(*labels), tally)

    @staticmethod
    def counter_of(counter: Counter, events: tuple[str, ...],
                   *labels: str) -> Callable[[str], None]:
        """A function counting `counter{labels..., event}`; children made now, not per request."""
        children = {event: counter.labels(*labels, event) for event in events}

        def count(event: str) -> None:
            children[event].inc()

        return count

    def ack_counter(self) -> Callable[[str, bool], None]:
        """A function counting one replica acknowledgement; children made now."""
        children = {(write, held): self.replica_acks.labels(write, "held" if held else "missing")
                    for write in ACK_WRITES for held in (True, False)}

        def count(write: str, held: bool) -> None:
            children[write, held].inc()

        return count

    def breaker_transition(self, breaker: str, old: str, new: str, reason: str) -> None:
        """Off the hot path: transitions are rare, so labels are looked up each time."""
        self.breaker_state.labels(breaker).set(_STATE_VALUES[new])
        self.breaker_transitions.labels(breaker, old, new, reason).inc()

    def breaker_rejected(self, backend: str, count: int = 1) -> None:
        self.breaker_rejections.labels(backend).inc(count)

    def shed_requests(self, route: str, count: int) -> None:
        self.shed.labels(route).inc(count)

    def room_tick(self, expired: int, waits: Sequence[float], waiting: int) -> None:
        """One admission step of the waiting room: tickets expired, the waits of those let
        in, and how many wait now."""
        if expired:
            self.waiting_room_expired.inc(expired)
        if waits:
            self.waiting_room_admitted.inc(len(waits))
            for wait in waits:
                self.waiting_room_wait_seconds.observe(wait)
        self.waiting_room_waiting.set(waiting)

    def retried(self, backend: str) -> None:
        self.retries.labels(backend).inc()

    def retry_budget_exhausted(self, backend: str) -> None:
        self.retry_budget_exhausted_calls.labels(backend).inc()

    def bulkhead_queued(self, backend: str) -> None:
        self.bulkhead_queued_calls.labels(backend).inc()

    def bulkhead_rejected(self, backend: str) -> None:
        self.bulkhead_rejected_calls.labels(backend).inc()

    def exposition(self) -> bytes:
        self.flush()
        if os.environ.get(MULTIPROC_ENV):
            merged = CollectorRegistry()
            # unannotated in prometheus-client
            prom_multiprocess.MultiProcessCollector(merged)  # type: ignore[no-untyped-call]
            return generate_latest(merged)
        return generate_latest(self.registry)


def _sre_gauges(reg: CollectorRegistry) -> tuple[Gauge, Gauge]:
    """What SREs hold in force, so that alerts can tell planned trouble from real."""
    forced = Gauge("gateway_breaker_forced", "1 while an SRE holds the backend's breaker "
                   "(forced open or closed, a game day or an incident), else 0", ("backend",),
                   registry=reg, multiprocess_mode="livemax")
    rules = Gauge("gateway_fault_rules_in_force", "Fault rules (game days) in force now",
                  registry=reg, multiprocess_mode="livemax")
    return forced, rules


def _replica_acks(registry: CollectorRegistry) -> Counter:
    return Counter(
        "gateway_replica_acks", "Writes that replicas were asked to hold (Redis WAIT), by "
        "write (claim, answer, admin) and outcome (held; missing: not held in time, so a "
        "claim was withdrawn and answered 503, an answer was given late, an admin change "
        "answered 503)", ("write", "outcome"), registry=registry)


def _tally() -> list[float]:
    """Observations per bucket of `_LATENCY_BOUNDS`, then their sum."""
    return [0] * len(_LATENCY_BOUNDS) + [0.0]


def _add_tally(histogram: Histogram, tally: list[float]) -> None:
    """Add a tally to a histogram's series, as that many `observe` calls would.

    prometheus-client has no call to add many observations at once, so this
    writes the child's bucket and sum values directly (the names `_buckets` and
    `_sum` of its Histogram; tests/unit/test_metrics.py checks the result against
    `observe`, so an upgrade that renames them fails there)."""
    buckets = histogram._buckets
    for index, count in enumerate(tally[:-1]):
        if count:
            buckets[index].inc(count)
    histogram._sum.inc(tally[-1])


class AccessLog:
    """One JSON line per request on stdout, gathered in memory and written in blocks.

    Its own buffer, not the stream's: with PYTHONUNBUFFERED (common in containers)
    stdout writes straight through, and one write per request was the largest
    single cost of the gateway's own code in the profile (docs/performance.md).
    A block goes out when `ACCESS_LOG_BUFFER_BYTES` are pending and on the
    housekeeping timer, so a line is at most one timer tick late.
    """

    def __init__(self, enabled: bool, stream: IO[bytes] | None = None) -> None:
        self.enabled = enabled
        self._stream = stream if stream is not None else sys.stdout.buffer
        self._pending = bytearray()

    def write(self, record: dict[str, Any]) -> None:
        self._pending += orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)
        if len(self._pending) >= ACCESS_LOG_BUFFER_BYTES:
            self.flush()

    def flush(self) -> None:
        block = bytes(self._pending)
        self._pending.clear()
        # A closed or broken stdout must not take the gateway down.
        with contextlib.suppress(OSError, ValueError):
            if block:
                self._stream.write(block)
            self._stream.flush()


# Log fields whose text may come from a client (see gateway/contract/privacy.py).
_CLIENT_TEXT = frozenset(("path", "route", "error", "detail", "reason"))


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": privacy.scrub(record.getMessage()),
        }
        # Fields that may quote what a client sent are masked; ids and figures are not.
        for name, value in getattr(record, "fields", {}).items():
            line[name] = privacy.scrub(value) if name in _CLIENT_TEXT else value
        if record.exc_info:
            line["exc"] = privacy.scrub_exception_text(self.formatException(record.exc_info))
        return orjson.dumps(line, default=str).decode()


def configure_logging(level: str) -> None:
    """Process logs as JSON lines on stderr (the access log has stdout to itself)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's own access logger would duplicate ours.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
