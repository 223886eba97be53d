"""The short CI profile of the `peak-with-outage` load scenario, and its judge.

The scenario run is the real thing (redis-server, simulators, a two-worker
gateway, locust customers, the payment backend hanging then failing mid-peak);
it fails the build when any of its thresholds is broken. The judge's own
tests feed it hand-made records, so a verdict that could not fail is caught.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from loadtest import scenarios

PROFILE = scenarios.PROFILES["ci"]


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_peak_with_outage_ci_profile_passes_every_threshold(log_dir: Path) -> None:
    verdict = scenarios.run("peak-with-outage", "ci", log_dir / "report", workers=2)
    failed = "\n".join(f"{c.name}: {c.detail}" for c in verdict.checks if not c.passed)
    assert verdict.passed, f"thresholds broken:\n{failed}"
    assert {c.name for c in verdict.checks} >= {
        "contract answers", "no connection errors", "no duplicate charges",
        "every payment lands exactly once", "reads succeed during the payment outage",
        "the outage was felt"}
    assert (log_dir / "report" / "locust.html").exists()
    assert (log_dir / "report" / "locust_stats.csv").exists()


def _record(route: str, status: int, code: str | None = None, **extra: Any) -> dict[str, Any]:
    content_type = ("application/problem+json" if code else "application/json") if status else ""
    return {"t": 100.0, "ms": 10.0, "route": route, "status": status, "code": code,
            "expect": None, "content_type": content_type, "client_timeout": False,
            "impatient": False, **extra}


def _judge(requests: list[dict[str, Any]], charges: dict[str, int] | None = None,
           payments: list[dict[str, Any]] | None = None,
           scenario: str = "peak") -> dict[str, bool]:
    data = {"requests": requests, "payments": payments or [], "t0": 100.0 - 20}
    verdict = scenarios.judge(scenario, data, {}, {"charges_by_key": charges or {}}, PROFILE)
    return {c.name: c.passed for c in verdict.checks}


def test_a_clean_run_passes() -> None:
    checks = _judge([_record("GET /v1/availability", 200),
                     _record("POST /v1/payments", 503, "CIRCUIT_OPEN")])
    assert all(checks.values()), checks


@pytest.mark.parametrize("record", [
    _record("POST /v1/orders", 500, None, content_type="text/html"),  # a raw 5xx
    _record("POST /v1/orders", 502, "CIRCUIT_OPEN"),  # code with the wrong status
    _record("POST /v1/orders", 422, "INVENTED_CODE"),  # not in the catalog
    _record("GET /v1/orders/{id}", 404, "ORDER_NOT_FOUND", content_type="application/json"),
])
def test_answers_outside_the_contract_fail(record: dict[str, Any]) -> None:
    assert not _judge([record])["contract answers"]


def test_an_expected_business_answer_is_allowed() -> None:
    record = _record("GET /v1/orders/{id}", 404, "ORDER_NOT_FOUND",
                     content_type="application/json", expect="ORDER_NOT_FOUND")
    assert _judge([record])["contract answers"]


def test_connection_errors_fail_but_impatient_give_ups_do_not() -> None:
    assert not _judge([_record("GET /v1/availability", 0)])["no connection errors"]
    give_up = _record("POST /v1/payments", 0, impatient=True, client_timeout=True)
    assert _judge([give_up])["no connection errors"]


def test_slow_routes_break_their_p99_bound() -> None:
    slow = [_record("GET /v1/availability", 200, ms=5000.0) for _ in range(5)]
    assert not _judge(slow)["p99 GET /v1/availability"]


def test_double_and_missing_charges_fail() -> None:
    payments = [{"key": "a", "final": {}}, {"key": "b", "final": {}}]
    checks = _judge([], charges={"a": 2, "b": 1}, payments=payments)
    assert not checks["no duplicate charges"]
    checks = _judge([], charges={"a": 1}, payments=payments)
    assert checks["no duplicate charges"]
    assert not checks["every payment lands exactly once"]


def test_failed_reads_during_an_outage_fail() -> None:
    start = 80.0 + PROFILE.incident[0] + 2
    reads = [_record("GET /v1/availability", 200, t=start) for _ in range(50)]
    reads.append(_record("GET /v1/availability", 502, "UPSTREAM_UNAVAILABLE", t=start))
    refused = _record("POST /v1/payments", 503, "CIRCUIT_OPEN", t=start)
    checks = _judge([*reads, refused], scenario="peak-with-outage")
    assert not checks["reads succeed during the payment outage"]
    assert checks["the outage was felt"]


def test_maintenance_must_refuse_inside_and_only_inside() -> None:
    inside = 80.0 + sum(PROFILE.incident) / 2
    outside = 80.0 + PROFILE.incident[1] + 5
    ok = [_record("POST /v1/orders", 503, "MAINTENANCE", t=inside),
          _record("POST /v1/orders", 201, t=outside), _record("GET /v1/orders/{id}", 200, t=inside)]
    assert all(_judge(ok, scenario="maintenance-during-peak").values())
    leak = [_record("POST /v1/orders", 201, t=inside), *ok]
    assert not _judge(leak, scenario="maintenance-during-peak")[
        "order submissions refused inside the window"]
    late = [*ok, _record("POST /v1/orders", 503, "MAINTENANCE", t=outside)]
    assert not _judge(late, scenario="maintenance-during-peak")[
        "no maintenance answers outside the window"]
