"""Promotional-peak scenarios: locust customers against a real gateway, with a verdict.

    python -m loadtest.scenarios peak
    python -m loadtest.scenarios peak-with-outage [--profile ci]
    python -m loadtest.scenarios maintenance-during-peak

Each run starts what it needs on loopback (redis-server, the simulators with
the payment backend's own deduplication off, a gateway with `--workers`
processes sharing Redis), runs locust headless with the customers of
`loadtest/locustfile.py` and a baseline → ramp → plateau → decay shape,
plays the scenario's incident at fixed times, then resubmits every payment
that did not end in a final answer, and judges the run against the
thresholds below. It prints a summary table, writes locust's CSV and HTML
report plus `verdict.json` to `--report-dir`, and exits 1 when a threshold
is broken.

Thresholds (every scenario):
- every non-2xx answer is a catalog error (problem+json, code and status as
  in the contract) or the backend business answer that request expected;
  no connection errors (only impatient customers' own give-ups are allowed);
- p99 per route under the scenario's bound;
- after the final resubmissions, every payment key has exactly one charge at
  the payment simulator (none twice, none lost);
- payment-outage: availability and order reads during the outage succeed
  (at least READS_OK_SHARE of them);
- maintenance: order submissions inside the window are refused with
  MAINTENANCE, none outside it is, and reads keep succeeding.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.contract.errors import CATALOG
from loadtest.harness import BIN, Gateway, RedisServer, Upstreams
from loadtest.loadgen import percentile
from loadtest.verdict import Checks

ADMIN_TOKEN = "load-admin-token-0123456789"
READS = ("GET /v1/availability", "GET /v1/orders/{id}")
READS_OK_SHARE = 0.99
# Slack around an incident's edges: requests started this close to a change may
# see either side of it (a request's start time is taken at the client).
EDGE_S = 1.0
RESUBMIT_ROUNDS = 10


@dataclass(frozen=True)
class Profile:
    """Load shape (`[until_s, users, spawn_rate]` stages) and when the incident happens."""

    stages: tuple[tuple[float, int, float], ...]
    incident: tuple[float, float]  # start, end (seconds after the run starts)

    @property
    def duration_s(self) -> float:
        return self.stages[-1][0]


PROFILES = {
    # Baseline 20 customers, ramp to 100 in 4 s, plateau, decay.
    "full": Profile(((30, 20, 20), (150, 100, 20), (180, 20, 10)), (60, 120)),
    # The same shape compressed for the test suite (about 60 s with set-up).
    "ci": Profile(((8, 6, 6), (33, 30, 8), (45, 6, 4)), (13, 26)),
}

# p99 bounds in ms per route. The payment outage lets payment submissions take up
# to the payment timeout (2.5 s) plus the Redis steps; all else stays fast.
FAST_P99_MS = 1000.0
BOUNDS_MS = {
    "peak": {},
    "peak-with-outage": {"POST /v1/payments": 3500.0},
    "maintenance-during-peak": {},
}


@dataclass
class Rig:
    """The processes of one run."""

    log_dir: Path
    redis: RedisServer
    sims: Upstreams
    gateway: Gateway

    def stop(self) -> None:
        self.gateway.stop()
        self.sims.proc.stop()
        self.redis.stop()


def start_rig(log_dir: Path, workers: int) -> Rig:
    redis = RedisServer(log_dir)
    sims = Upstreams(log_dir)
    # The payment backend does not deduplicate: any double charge would show.
    sims.set_faults("payment", dedup=False)
    config = {
        "redis": {"url": redis.url},
        "upstreams": {
            "payment": {"timeout_s": 2.5, "breaker": {"open_seconds": 5.0}},
            "order": {"breaker": {"open_seconds": 5.0}},
        },
    }
    try:
        gateway = Gateway(log_dir, sims.urls, config=config, workers=workers,
                          env={"GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN})
    except BaseException:
        sims.proc.stop()
        redis.stop()
        raise
    return Rig(log_dir, redis, sims, gateway)


# --- incidents: what happens mid-run, as (seconds after start, action) -------------------

Action = Callable[[Rig, float], None]


def _payment_hangs(rig: Rig, _t0: float) -> None:
    rig.sims.set_faults("payment", hang=True)


def _payment_fails(rig: Rig, _t0: float) -> None:
    rig.sims.set_faults("payment", hang=False, error_rate=1.0)


def _payment_heals(rig: Rig, _t0: float) -> None:
    rig.sims.set_faults("payment", hang=False, error_rate=0.0)


def _iso(wall: float) -> str:
    return datetime.fromtimestamp(wall, UTC).isoformat()


def _schedule_window(profile: Profile) -> Action:
    def schedule(rig: Rig, t0: float) -> None:
        start, end = profile.incident
        rig.gateway.admin("PUT", "/admin/maintenance", ADMIN_TOKEN, {
            "scope": "order", "read_only": True,
            "starts_at": _iso(t0 + start), "ends_at": _iso(t0 + end),
            "message": {"en": "Order system upgrade", "zh-CN": "订单系统升级"}})

    return schedule


def incident_of(scenario: str, profile: Profile) -> list[tuple[float, Action]]:
    start, end = profile.incident
    if scenario == "peak-with-outage":
        # First the backend hangs (timeouts, then the breaker), then it fails fast.
        return [(start, _payment_hangs), ((start + end) / 2, _payment_fails),
                (end, _payment_heals)]
    if scenario == "maintenance-during-peak":
        # Announced ahead; every gateway process opens and closes it by its clock.
        return [(1.0, _schedule_window(profile))]
    return []


# --- the run ---------------------------------------------------------------------------


def run_locust(rig: Rig, scenario: str, profile: Profile, report_dir: Path) -> dict[str, Any]:
    """Run locust headless while playing the incident; its records and the start time."""
    records_path = report_dir / "records.json"
    started_path = report_dir / "started"
    started_path.unlink(missing_ok=True)
    env = {**os.environ, "LOAD_STAGES": json.dumps(profile.stages),
           "LOAD_RECORDS": str(records_path), "LOAD_STARTED": str(started_path)}
    log = (report_dir / "locust.log").open("wb")
    locust = subprocess.Popen([
        str(BIN / "locust"), "-f", str(Path(__file__).with_name("locustfile.py")),
        "--headless", "--host", rig.gateway.url, "--only-summary", "--stop-timeout", "15",
        "--csv", str(report_dir / "locust"), "--html", str(report_dir / "locust.html"),
        "--loglevel", "WARNING",
    ], stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        t0 = _wait_for_start(started_path, locust)
        for at, action in incident_of(scenario, profile):
            time.sleep(max(0.0, t0 + at - time.time()))
            action(rig, t0)
        locust.wait(timeout=profile.duration_s + 60)
    finally:
        if locust.poll() is None:
            locust.kill()
            locust.wait()
        log.close()
    if not records_path.exists():
        tail = (report_dir / "locust.log").read_text(errors="replace")[-3000:]
        raise RuntimeError(f"locust wrote no records; its log ends:\n{tail}")
    data: dict[str, Any] = json.loads(records_path.read_bytes())
    data["t0"] = t0
    return data


def _wait_for_start(path: Path, locust: subprocess.Popen[bytes]) -> float:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if path.exists() and path.read_text():
            return float(path.read_text())
        if locust.poll() is not None:
            raise RuntimeError(f"locust exited with {locust.returncode} before starting")
        time.sleep(0.05)
    raise RuntimeError("locust did not start within 30 s")


def resubmit_unfinished(rig: Rig, payments: list[dict[str, Any]]) -> dict[str, int]:
    """Resubmit, with its own key and body, every payment that ended without an answer.

    The customer who gave up would come back; whatever happened before, this must
    land on exactly one charge. Returns the final status per resubmitted key.
    """
    finals: dict[str, int] = {}
    for payment in payments:
        if payment["final"] is not None:
            continue
        status = 0
        for _ in range(RESUBMIT_ROUNDS):
            status, retry_after = _post(rig.gateway.url + "/v1/payments", payment)
            if status < 500 and status != 409:
                break
            time.sleep(min(retry_after, 2.0))
        finals[payment["key"]] = status
    return finals


def _post(url: str, payment: dict[str, Any]) -> tuple[int, float]:
    req = urllib.request.Request(url, data=json.dumps(payment["body"]).encode(), method="POST",
                                 headers={"Content-Type": "application/json",
                                          "Idempotency-Key": payment["key"],
                                          "X-Client-ID": payment["client"]})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, 0.0
    except urllib.error.HTTPError as err:
        return err.code, float(err.headers.get("Retry-After") or 1)


# --- the verdict -------------------------------------------------------------------------


@dataclass
class Verdict(Checks):
    scenario: str = ""
    routes: dict[str, dict[str, Any]] = field(default_factory=dict)
    load: dict[str, float] = field(default_factory=dict)


def explained(record: dict[str, Any]) -> bool:
    """Is this answer one the contract allows? (2xx, a catalog error, or what was expected)."""
    status, code = record["status"], record["code"]
    if 200 <= status < 300:
        return True
    if record["expect"] is not None and code == record["expect"]:
        return True
    spec = CATALOG.get(code or "")
    return (spec is not None and spec.status == status
            and record["content_type"].startswith("application/problem+json"))


def judge(scenario: str, data: dict[str, Any], resubmitted: dict[str, int],
          stats: dict[str, Any], profile: Profile) -> Verdict:
    verdict = Verdict(scenario=scenario)
    requests: list[dict[str, Any]] = data["requests"]
    answered = [r for r in requests if r["status"]]
    _route_table(verdict, requests)
    verdict.load = _load_shape(requests, data["t0"], profile)

    unexplained = [r for r in answered if not explained(r)]
    verdict.add("contract answers", not unexplained,
                f"{len(answered)} answers, {len(unexplained)} outside the contract"
                + _sample(unexplained))
    dropped = [r for r in requests if not r["status"]
               and not (r["impatient"] and r["client_timeout"])]
    gave_up = sum(1 for r in requests if not r["status"]) - len(dropped)
    verdict.add("no connection errors", not dropped,
                f"{len(dropped)} connection errors; {gave_up} impatient give-ups (allowed)"
                + _sample(dropped))

    bounds = BOUNDS_MS[scenario]
    for route, row in sorted(verdict.routes.items()):
        bound = bounds.get(route, FAST_P99_MS)
        row["p99_bound_ms"] = bound
        verdict.add(f"p99 {route}", row["p99_ms"] <= bound,
                    f"{row['p99_ms']:.0f} ms (bound {bound:.0f} ms)")

    _charges(verdict, data["payments"], resubmitted, stats)
    t0 = data["t0"]
    start, end = (t0 + profile.incident[0], t0 + profile.incident[1])
    if scenario == "peak-with-outage":
        _reads_during(verdict, answered, start, end)
    if scenario == "maintenance-during-peak":
        _maintenance(verdict, answered, start, end)
    return verdict


def _route_table(verdict: Verdict, requests: list[dict[str, Any]]) -> None:
    by_route: dict[str, list[dict[str, Any]]] = {}
    for record in requests:
        by_route.setdefault(record["route"], []).append(record)
    for route, rows in by_route.items():
        times = [r["ms"] for r in rows if r["status"]]
        verdict.routes[route] = {
            "requests": len(rows),
            "2xx": sum(1 for r in rows if 200 <= r["status"] < 300),
            "codes": dict(Counter(r["code"] or str(r["status"]) for r in rows
                                  if not 200 <= r["status"] < 300).most_common()),
            "p50_ms": percentile(times, 0.5),
            "p99_ms": percentile(times, 0.99),
        }


def _load_shape(requests: list[dict[str, Any]], t0: float, profile: Profile) -> dict[str, float]:
    """Requests/s sent in the baseline stage and in the busiest 5 s: the peak's height."""
    per_second = Counter(int(r["t"] - t0) for r in requests)
    baseline_s = int(profile.stages[0][0])
    baseline = [per_second.get(second, 0) for second in range(2, baseline_s)]
    seconds = range(int(profile.duration_s))
    busiest = max((sum(per_second.get(s + i, 0) for i in range(5)) / 5 for s in seconds),
                  default=0.0)
    return {"baseline_rps": round(statistics.median(baseline), 1) if baseline else 0.0,
            "peak_rps": round(busiest, 1), "requests": len(requests)}


def _sample(records: list[dict[str, Any]]) -> str:
    return "".join(f"\n    e.g. {r['route']} -> {r['status']} {r['code']} "
                   f"({r['content_type'] or 'no answer'})" for r in records[:3])


def _charges(verdict: Verdict, payments: list[dict[str, Any]], resubmitted: dict[str, int],
             stats: dict[str, Any]) -> None:
    charges: dict[str, int] = stats["charges_by_key"]
    keys = {p["key"] for p in payments}
    twice = [k for k in keys if charges.get(k, 0) > 1]
    verdict.add("no duplicate charges", not twice,
                f"{len(keys)} payment keys, {len(twice)} charged more than once")
    missing = [k for k in keys if charges.get(k, 0) != 1]
    unresolved = [k for k, status in resubmitted.items() if not 200 <= status < 300]
    verdict.add("every payment lands exactly once", not missing and not unresolved,
                f"{len(resubmitted)} resubmitted after the run; {len(missing)} keys without "
                f"exactly one charge, {len(unresolved)} resubmissions not answered 2xx")


def _reads_during(verdict: Verdict, answered: list[dict[str, Any]], start: float,
                  end: float) -> None:
    _reads_ok(verdict, "reads succeed during the payment outage", answered, READS, start, end)
    payments = [r for r in answered if r["route"] == "POST /v1/payments"
                and start + EDGE_S <= r["t"] <= end - EDGE_S]
    refused = sum(1 for r in payments if not 200 <= r["status"] < 300)
    verdict.add("the outage was felt", bool(payments) and refused == len(payments),
                f"{refused}/{len(payments)} payment submissions refused with a contract code"
                " during the outage")


def _maintenance(verdict: Verdict, answered: list[dict[str, Any]], start: float,
                 end: float) -> None:
    orders = [r for r in answered if r["route"] == "POST /v1/orders" and r["expect"] is None]
    inside = [r for r in orders if start + EDGE_S <= r["t"] <= end - EDGE_S]
    outside = [r for r in orders if not start - EDGE_S <= r["t"] <= end + EDGE_S]
    refused = sum(1 for r in inside if r["code"] == "MAINTENANCE")
    leaked = sum(1 for r in outside if r["code"] == "MAINTENANCE")
    verdict.add("order submissions refused inside the window",
                bool(inside) and refused == len(inside),
                f"{refused}/{len(inside)} answered MAINTENANCE")
    verdict.add("no maintenance answers outside the window", leaked == 0 and bool(outside),
                f"{leaked}/{len(outside)} answered MAINTENANCE")
    _reads_ok(verdict, "reads succeed during the window", answered,
              (*READS, "GET /v1/payments/{id}"), start, end)


def _reads_ok(verdict: Verdict, name: str, answered: list[dict[str, Any]],
              routes: tuple[str, ...], start: float, end: float) -> None:
    """At least READS_OK_SHARE of these routes' answers in [start, end] were 2xx."""
    reads = [r for r in answered if r["route"] in routes and r["expect"] is None
             and start <= r["t"] <= end]
    ok = sum(1 for r in reads if 200 <= r["status"] < 300)
    share = ok / len(reads) if reads else 0.0
    verdict.add(name, share >= READS_OK_SHARE,
                f"{ok}/{len(reads)} reads 2xx ({share:.1%}, need {READS_OK_SHARE:.0%})")


def report(verdict: Verdict, report_dir: Path, seconds: float) -> str:
    """The summary table and the checks, as printed; also written to verdict.json."""
    lines = [f"scenario {verdict.scenario}: {'PASS' if verdict.passed else 'FAIL'}"
             f" ({seconds:.0f} s, report in {report_dir})",
             f"load: {verdict.load.get('requests', 0)} requests; baseline"
             f" {verdict.load.get('baseline_rps', 0):.0f} req/s, busiest 5 s"
             f" {verdict.load.get('peak_rps', 0):.0f} req/s", "",
             f"{'route':26s} {'requests':>8s} {'2xx':>6s} {'p50 ms':>7s} {'p99 ms':>7s}"
             f" {'bound':>6s}  other answers"]
    for route, row in sorted(verdict.routes.items()):
        codes = ", ".join(f"{code} {n}" for code, n in row["codes"].items())
        lines.append(f"{route:26s} {row['requests']:8d} {row['2xx']:6d} {row['p50_ms']:7.0f}"
                     f" {row['p99_ms']:7.0f} {row.get('p99_bound_ms', 0):6.0f}  {codes}")
    lines.append("")
    lines += [f"[{'pass' if c.passed else 'FAIL'}] {c.name}: {c.detail}" for c in verdict.checks]
    (report_dir / "verdict.json").write_text(json.dumps({
        "scenario": verdict.scenario, "passed": verdict.passed, "seconds": round(seconds, 1),
        "load": verdict.load, "routes": verdict.routes,
        "checks": [{"name": c.name, "passed": c.passed, "detail": c.detail}
                   for c in verdict.checks]}, indent=2, ensure_ascii=False))
    return "\n".join(lines)


def run(scenario: str, profile_name: str, report_dir: Path, workers: int) -> Verdict:
    """One whole scenario: start, load, incident, resubmissions, verdict, report."""
    report_dir.mkdir(parents=True, exist_ok=True)
    profile = PROFILES[profile_name]
    began = time.monotonic()
    rig = start_rig(Path(tempfile.mkdtemp(prefix="logs-", dir=report_dir)), workers)
    try:
        data = run_locust(rig, scenario, profile, report_dir)
        _payment_heals(rig, 0.0)
        resubmitted = resubmit_unfinished(rig, data["payments"])
        stats = rig.sims.stats("payment")
    finally:
        rig.stop()
    verdict = judge(scenario, data, resubmitted, stats, profile)
    print(report(verdict, report_dir, time.monotonic() - began), flush=True)
    return verdict


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenario", choices=sorted(BOUNDS_MS))
    parser.add_argument("--profile", choices=sorted(PROFILES), default="full")
    parser.add_argument("--workers", type=int, default=2, help="gateway processes")
    parser.add_argument("--report-dir", type=Path, default=None,
                        help="default: load-reports/<scenario>-<time>")
    args = parser.parse_args()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    report_dir = args.report_dir or Path("load-reports") / f"{args.scenario}-{stamp}"
    verdict = run(args.scenario, args.profile, report_dir, args.workers)
    sys.exit(0 if verdict.passed else 1)


if __name__ == "__main__":
    main()
