"""The shipped alerts and dashboard, checked by Prometheus's own tools.

- `promtool test rules` runs every alert over synthetic series: for each, a case that
  must fire and cases that must not. Planned work pages nobody: a maintenance window,
  a waiting-room queue, a game day (a forced breaker, fault rules in force), a drain.
- A real Prometheus scrapes a gateway that serves traffic, and every dashboard and
  alert expression is evaluated through its HTTP API.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from loadtest.harness import Gateway, Proc, Upstreams, free_port, wait_until
from tests.conftest import ADMIN_TOKEN, GOOD_ORDER, GOOD_PAYMENT, admin_gateway

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "k8s" / "monitoring" / "prometheusrule.yaml"
# scripts/test.sh installs both (Debian's prometheus package); a missing one fails loudly.
PROMTOOL = shutil.which("promtool") or "promtool"


@dataclass(frozen=True)
class Case:
    """Series for `minutes` minutes, and who the alert pages at the end (none: nobody)."""

    alert: str
    why: str
    series: dict[str, str]
    minutes: int
    fires: list[dict[str, str]] = field(default_factory=list)


def _requests(route: str, status: int, code: str, per_minute: int, minutes: int) -> tuple[
        str, str]:
    labels = f'route="{route}",status="{status}",code="{code}"'
    return f"gateway_requests_total{{{labels}}}", f"0+{per_minute}x{minutes}"


def _traffic(minutes: int, *answers: tuple[str, int, str, int]) -> dict[str, str]:
    return dict(_requests(route, status, code, rate, minutes)
                for route, status, code, rate in answers)


OK = ("/v1/availability", 200, "none", 600)
PAID = ("/v1/payments", 201, "none", 6000)
CASES = [
    Case("OrderGatewayBreakerOpen", "a backend keeps failing",
         {'gateway_breaker_state{backend="payment"}': "2x10",
          'gateway_breaker_forced{backend="payment"}': "0x10"}, 10, [{"backend": "payment"}]),
    Case("OrderGatewayBreakerOpen", "a game day: the SRE forced it open",
         {'gateway_breaker_state{backend="payment"}': "2x10",
          'gateway_breaker_forced{backend="payment"}': "1x10"}, 10),
    Case("OrderGatewayBreakerOpen", "open for three minutes only",
         {'gateway_breaker_state{backend="order"}': "0 0 0 0 0 0 0 2 2 2 2"}, 10),
    Case("OrderGatewayBackendErrors", "half the reads fail at the backend",
         _traffic(20, OK, ("/v1/availability", 502, "UPSTREAM_UNAVAILABLE", 600)), 20, [{}]),
    Case("OrderGatewayBackendErrors", "planned maintenance answers 503 MAINTENANCE",
         _traffic(20, OK, ("/v1/orders", 503, "MAINTENANCE", 6000)), 20),
    Case("OrderGatewayBackendErrors", "a waiting-room queue answers 429 QUEUED",
         _traffic(20, OK, ("/v1/orders", 429, "QUEUED", 6000)), 20),
    Case("OrderGatewayBackendErrors", "a forced breaker answers 503 CIRCUIT_OPEN",
         _traffic(20, OK, ("/v1/payments", 503, "CIRCUIT_OPEN", 6000)), 20),
    Case("OrderGatewayBackendErrors", "a game day's fault rules inject the failures",
         {**_traffic(20, OK, ("/v1/availability", 502, "UPSTREAM_UNAVAILABLE", 600)),
          "gateway_fault_rules_in_force": "1x20"}, 20),
    Case("OrderGatewayBackendErrors", "a drain: traffic stops",
         {'gateway_requests_total{route="/v1/availability",status="200",code="none"}':
          "0+600x5 3000x15"}, 20),
    Case("OrderGatewayBackendErrors", "failing admin calls are not the public's",
         _traffic(20, OK, ("/admin/maintenance", 503, "STATE_UNAVAILABLE", 6000)), 20),
    Case("OrderGatewayPaymentOutcomeUnknown", "1 % of payments lost their answer",
         _traffic(30, PAID, ("/v1/payments", 502, "PAYMENT_OUTCOME_UNKNOWN", 60)), 30, [{}]),
    Case("OrderGatewayPaymentOutcomeUnknown", "0.1 %: within what a network loses",
         _traffic(30, PAID, ("/v1/payments", 502, "PAYMENT_OUTCOME_UNKNOWN", 6)), 30),
    Case("OrderGatewayShedding", "10 % shed",
         {**_traffic(20, ("/v1/availability", 200, "none", 6000)),
          'gateway_shed_requests_total{route="/v1/availability"}': "0+600x20"}, 20, [{}]),
    Case("OrderGatewayShedding", "a drain: nothing shed, traffic gone",
         {'gateway_requests_total{route="/v1/availability",status="200",code="none"}':
          "0+600x5 3000x15", 'gateway_shed_requests_total{route="/v1/availability"}': "0x20"},
         20),
    Case("OrderGatewayRedisUnavailable", "claims cannot reach Redis",
         {'gateway_idempotency_events_total{route="/v1/payments",event="store_unavailable"}':
          "0+60x10"}, 10, [{}]),
    Case("OrderGatewayRedisUnavailable", "claims go through",
         {'gateway_idempotency_events_total{route="/v1/payments",event="claimed"}':
          "0+60x10"}, 10),
    Case("OrderGatewayReplicaAcksMissing", "no replica acknowledges the claims",
         {'gateway_replica_acks_total{write="claim",outcome="missing"}': "0+60x10"}, 10,
         [{"write": "claim"}]),
    Case("OrderGatewayReplicaAcksMissing", "every claim held by a replica",
         {'gateway_replica_acks_total{write="claim",outcome="held"}': "0+60x10"}, 10),
    Case("OrderGatewayWaitingRoomStalled", "people wait, nobody let in",
         {"gateway_waiting_room_waiting": "500x20",
          "gateway_waiting_room_admitted_total": "0x20"}, 20, [{}]),
    Case("OrderGatewayWaitingRoomStalled", "a queue that moves pages nobody",
         {"gateway_waiting_room_waiting": "500x20",
          "gateway_waiting_room_admitted_total": "0+3000x20"}, 20),
    Case("OrderGatewayWaitingRoomStalled", "a game day holds the breaker open",
         {"gateway_waiting_room_waiting": "500x20",
          "gateway_waiting_room_admitted_total": "0x20",
          'gateway_breaker_forced{backend="order"}': "1x20"}, 20),
    Case("OrderGatewayWaitingRoomStalled", "nobody waits",
         {"gateway_waiting_room_waiting": "0x20",
          "gateway_waiting_room_admitted_total": "0x20"}, 20),
    Case("OrderGatewayLatencyP99", "reads take seconds",
         {'gateway_request_duration_seconds_bucket{route="/v1/availability",le="1"}': "0x30",
          'gateway_request_duration_seconds_bucket{route="/v1/availability",le="5"}':
          "0+600x30",
          'gateway_request_duration_seconds_bucket{route="/v1/availability",le="+Inf"}':
          "0+600x30"}, 30, [{"route": "/v1/availability"}]),
    Case("OrderGatewayLatencyP99", "the console's event stream is long by design",
         {'gateway_request_duration_seconds_bucket{route="/admin/events",le="1"}': "0x30",
          'gateway_request_duration_seconds_bucket{route="/admin/events",le="+Inf"}':
          "0+60x30"}, 30),
    Case("OrderGatewayRetryBudgetExhausted", "two calls a second find the budget spent",
         {'gateway_retry_budget_exhausted_total{backend="availability"}': "0+120x20"}, 20,
         [{"backend": "availability"}]),
    Case("OrderGatewayRetryBudgetExhausted", "a retry now and then",
         {'gateway_retry_budget_exhausted_total{backend="availability"}': "0+30x20"}, 20),
]


def alert_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULES.read_text())
    return [rule for group in document["spec"]["groups"] for rule in group["rules"]]


def _rendered(template: str, labels: dict[str, str]) -> str:
    return re.sub(r"\{\{\s*\$labels\.(\w+)\s*\}\}", lambda m: labels[m.group(1)], template)


def _promtool_case(case: Case, rules: dict[str, dict[str, Any]]) -> dict[str, Any]:
    rule = rules[case.alert]
    expected = [{"exp_labels": {**rule["labels"], **labels},
                 "exp_annotations": {name: _rendered(text, labels)
                                     for name, text in rule["annotations"].items()}}
                for labels in case.fires]
    return {"interval": "1m", "name": f"{case.alert}: {case.why}",
            "input_series": [{"series": name, "values": values}
                             for name, values in case.series.items()],
            "alert_rule_test": [{"eval_time": f"{case.minutes}m", "alertname": case.alert,
                                 "exp_alerts": expected}]}


def test_every_alert_has_a_case_that_fires_and_one_that_does_not() -> None:
    names = {rule["alert"] for rule in alert_rules()}
    assert {c.alert for c in CASES if c.fires} == names
    assert {c.alert for c in CASES if not c.fires} == names


def test_promtool_runs_every_case_over_the_shipped_rules(tmp_path: Path) -> None:
    # promtool reads plain rule groups: the PrometheusRule's spec is exactly that.
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(yaml.safe_dump(yaml.safe_load(RULES.read_text())["spec"]))
    by_name = {rule["alert"]: rule for rule in alert_rules()}
    tests_file = tmp_path / "tests.yaml"
    tests_file.write_text(yaml.safe_dump({
        "rule_files": [str(rules_file)], "evaluation_interval": "1m",
        "tests": [_promtool_case(case, by_name) for case in CASES]}))
    promtool = PROMTOOL
    checked = subprocess.run([promtool, "check", "rules", str(rules_file)],
                             capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run([promtool, "test", "rules", str(tests_file)],
                            capture_output=True, text=True, timeout=120)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_promtool_would_catch_a_rule_that_pages_for_maintenance(tmp_path: Path) -> None:
    """The cases can fail: the old error-rate rule (every 5xx, MAINTENANCE included)."""
    careless = {"groups": [{"name": "careless", "rules": [{
        "alert": "OrderGatewayBackendErrors",
        "expr": 'sum(rate(gateway_requests_total{status=~"5.."}[5m]))'
                " / sum(rate(gateway_requests_total[5m])) > 0.05",
        "for": "5m", "labels": {"severity": "page"}}]}]}
    rules_file = tmp_path / "careless.yaml"
    rules_file.write_text(yaml.safe_dump(careless))
    maintenance = next(c for c in CASES if "MAINTENANCE" in c.why)
    tests_file = tmp_path / "tests.yaml"
    tests_file.write_text(yaml.safe_dump({
        "rule_files": [str(rules_file)], "evaluation_interval": "1m",
        "tests": [_promtool_case(maintenance, {"OrderGatewayBackendErrors": {
            "labels": {"severity": "page"}, "annotations": {}}})]}))
    tested = subprocess.run([PROMTOOL, "test", "rules", str(tests_file)],
                            capture_output=True, text=True, timeout=120)
    assert tested.returncode != 0 and "OrderGatewayBackendErrors" in tested.stdout + tested.stderr


# --- a real Prometheus over a gateway that served traffic -----------------------------------

DASHBOARD = ROOT / "k8s" / "monitoring" / "grafana-dashboard.json"
# Dashboard queries that stay empty after this test's traffic, and why: each is a panel
# for something the traffic below does not do.
EMPTY_BECAUSE = {
    "gateway_waiting_room_wait_seconds": "nobody waited in a queue (test_waiting_room.py)",
    "gateway_bulkhead_rejected_calls_total": "no bulkhead was full (test_overload.py)",
    "gateway_replica_acks_total": "no Redis replica to acknowledge (test_replica_acks.py)",
}
AVAILABILITY = "/v1/availability?address=Beijing&product=fiber-500"


def dashboard_queries() -> list[tuple[str, str]]:
    document = json.loads(DASHBOARD.read_text())
    return [(panel["title"], target["expr"]) for panel in document["panels"]
            for target in panel["targets"]]


def test_every_panel_has_a_legend_and_reads_public_routes_only() -> None:
    document = json.loads(DASHBOARD.read_text())
    for panel in document["panels"]:
        for target in panel["targets"]:
            assert target.get("legendFormat"), panel["title"]
            expr = target["expr"]
            per_route = "gateway_requests_total" in expr or "gateway_request_duration" in expr
            if per_route and "MAINTENANCE|QUEUED" not in expr:
                assert 'route=~"/v1/.*"' in expr, panel["title"]


class PrometheusServer:
    """Debian's Prometheus scraping `target` every second, on a free loopback port."""

    def __init__(self, log_dir: Path, target: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = log_dir / f"prometheus-{self.port}.yml"
        config.write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": "order-gateway",
                                "static_configs": [{"targets": [target]}]}]}))
        self.proc = Proc(f"prometheus-{self.port}", [
            shutil.which("prometheus") or "prometheus", f"--config.file={config}",
            f"--storage.tsdb.path={log_dir / f'tsdb-{self.port}'}",
            f"--web.listen-address=127.0.0.1:{self.port}"], log_dir)
        self.proc.wait_http(self.url + "/-/ready", timeout=30)

    def query(self, expr: str) -> dict[str, Any]:
        url = self.url + "/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(url, timeout=10) as resp:
            answer: dict[str, Any] = json.loads(resp.read())
        return answer

    def stop(self) -> None:
        self.proc.stop()


def _traffic(gw: Gateway, seconds: float) -> None:
    """Reads, orders, payments, refused input, a maintenance window and a game day's delay
    rule, for `seconds`."""
    gw.admin("PUT", "/admin/faults", ADMIN_TOKEN, {
        "scope": "GET /v1/availability", "delay": {"percent": 100, "ms": 1}, "ttl_s": 120,
        "match_header": {"name": "X-Fault-Cohort", "value": "gameday"}})
    gw.admin("PUT", "/admin/maintenance", ADMIN_TOKEN,
             {"scope": "GET /v1/payments/{payment_id}"})
    ends = time.monotonic() + seconds
    n = 0
    while time.monotonic() < ends:
        n += 1
        for method, path, body, headers in (
                ("GET", AVAILABILITY, None, {}),
                ("GET", AVAILABILITY, None, {"X-Fault-Cohort": "gameday"}),
                ("POST", "/v1/orders", GOOD_ORDER, {"Idempotency-Key": f"k-{n}"}),
                ("POST", "/v1/orders", GOOD_ORDER, {"Idempotency-Key": f"k-{n}"}),  # replayed
                ("POST", "/v1/payments", GOOD_PAYMENT, {"Idempotency-Key": f"p-{n}"}),
                ("GET", "/v1/payments/pay_1", None, {}),  # maintenance
                ("GET", "/v1/orders/bad%20id", None, {})):  # refused input
            data = None if body is None else json.dumps(body).encode()
            request = urllib.request.Request(gw.url + path, data=data, method=method, headers={
                "Content-Type": "application/json", **headers})
            try:
                with urllib.request.urlopen(request, timeout=5) as resp:
                    resp.read()
            except urllib.error.HTTPError as err:
                err.read()
        time.sleep(0.05)


def test_every_dashboard_and_alert_query_runs_on_a_real_prometheus(
        log_dir: Path, upstreams: Upstreams) -> None:
    generous = {"rate_limit": {"rate_per_s": 1000, "burst": 1000}}
    with admin_gateway(log_dir, upstreams, generous) as gw:
        prometheus = PrometheusServer(log_dir, f"127.0.0.1:{gw.port}")
        try:
            _traffic(gw, 8.0)
            wait_until(lambda: prometheus.query("up")["data"]["result"], 10, "a scrape")
            time.sleep(2.5)  # two more scrapes after the last request
            empty = []
            for title, expr in dashboard_queries():
                answer = prometheus.query(expr)
                assert answer["status"] == "success", (title, expr, answer)
                if not answer["data"]["result"]:
                    empty.append(expr)
            for rule in alert_rules():
                answer = prometheus.query(rule["expr"])
                assert answer["status"] == "success", (rule["alert"], answer)
                assert not answer["data"]["result"], f"{rule['alert']} holds on healthy traffic"
        finally:
            prometheus.stop()
    unexplained = [e for e in empty if not any(metric in e for metric in EMPTY_BECAUSE)]
    assert not unexplained, f"empty without a reason in EMPTY_BECAUSE: {unexplained}"
    explained = {metric for metric in EMPTY_BECAUSE if any(metric in e for e in empty)}
    assert explained == set(EMPTY_BECAUSE), "EMPTY_BECAUSE lists a query that has data now"
