"""The per-request series are tallied in plain Python and added to Prometheus's on a timer
(`Metrics.flush`): what a scrape shows must equal what `observe` and `inc` would give."""

from __future__ import annotations

import random

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from gateway.contract.observability import _LATENCY_BUCKETS, Metrics


def _samples(registry: CollectorRegistry, prefix: str) -> list[str]:
    return sorted(line for line in generate_latest(registry).decode().splitlines()
                  if line.startswith(prefix))


def test_tallied_requests_and_durations_equal_direct_observation() -> None:
    metrics = Metrics()
    direct = CollectorRegistry()
    requests = Counter("gateway_requests", "", ("route", "status", "code"), registry=direct)
    seconds = Histogram("gateway_request_duration_seconds", "", ("route",),
                        buckets=_LATENCY_BUCKETS, registry=direct)
    upstream = Histogram("gateway_upstream_duration_seconds", "", ("backend", "outcome"),
                         buckets=_LATENCY_BUCKETS, registry=direct)
    rng = random.Random(7)
    # Bucket bounds themselves included: a value equal to a bound falls in that bucket.
    values = [*_LATENCY_BUCKETS, 0.0, 11.0, *(rng.expovariate(20) for _ in range(500))]
    for value in values:
        route = rng.choice(["/v1/orders", "/v1/availability"])
        status, code = rng.choice([(200, "none"), (503, "OVERLOADED")])
        metrics.observe_request(route, status, code, value)
        requests.labels(route, str(status), code).inc()
        seconds.labels(route).observe(value)
        metrics.observe_upstream("order", value, "ok")
        upstream.labels("order", "ok").observe(value)
    metrics.flush()
    metrics.observe_request("/v1/orders", 200, "none", 0.002)  # after a flush: adds up
    requests.labels("/v1/orders", "200", "none").inc()
    seconds.labels("/v1/orders").observe(0.002)
    exposed = metrics.exposition()  # flushes what is pending
    for prefix in ("gateway_requests_total", "gateway_request_duration_seconds",
                   "gateway_upstream_duration_seconds"):
        ours = sorted(line for line in exposed.decode().splitlines() if line.startswith(prefix))
        assert ours == _samples(direct, prefix), prefix
        assert ours
