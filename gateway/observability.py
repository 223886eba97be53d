"""Metrics, the access log and the process log: what operators see.

Hot-path costs are kept to a dictionary lookup and a cached metric child per
request, and one JSON line written to a buffered stream (flushed on a timer,
not per line). No bodies, query strings or personal data are logged.

With several worker processes (`serve --workers N`) metrics are aggregated
across them through prometheus-client's multiprocess mode, so any worker's
`/metrics` answers for the whole server.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import IO, Any

import orjson
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as prom_multiprocess

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
METRICS_CONTENT_TYPE = CONTENT_TYPE_LATEST
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


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
            "gateway_requests_in_flight", "Requests being handled", registry=reg,
            multiprocess_mode="livesum")
        self._request_children: dict[tuple[str, int, str], Any] = {}
        self._latency_children: dict[str, Any] = {}
        self._upstream_children: dict[tuple[str, str], Any] = {}

    def observe_request(self, route: str, status: int, code: str, seconds: float) -> None:
        key = (route, status, code)
        child = self._request_children.get(key)
        if child is None:
            child = self._request_children[key] = self.requests.labels(route, str(status), code)
        child.inc()
        latency = self._latency_children.get(route)
        if latency is None:
            latency = self._latency_children[route] = self.request_seconds.labels(route)
        latency.observe(seconds)

    def observe_upstream(self, backend: str, seconds: float, outcome: str) -> None:
        key = (backend, outcome)
        child = self._upstream_children.get(key)
        if child is None:
            child = self._upstream_children[key] = self.upstream_seconds.labels(backend, outcome)
        child.observe(seconds)

    def exposition(self) -> bytes:
        if os.environ.get(MULTIPROC_ENV):
            merged = CollectorRegistry()
            prom_multiprocess.MultiProcessCollector(merged)
            return generate_latest(merged)
        return generate_latest(self.registry)


class AccessLog:
    """One JSON line per request on stdout, buffered; `flush()` runs on a timer."""

    def __init__(self, enabled: bool, stream: IO[bytes] | None = None) -> None:
        self.enabled = enabled
        self._stream = stream if stream is not None else sys.stdout.buffer

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            self._stream.write(orjson.dumps(record) + b"\n")

    def flush(self) -> None:
        # A closed or broken stdout must not take the gateway down.
        with contextlib.suppress(OSError, ValueError):
            self._stream.flush()


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        line.update(getattr(record, "fields", {}))
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(line).decode()


def configure_logging(level: str) -> None:
    """Process logs as JSON lines on stderr (the access log has stdout to itself)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's own access logger would duplicate ours.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
