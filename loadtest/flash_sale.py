"""The flash-sale scenario: the waiting room holds a crowd five times the backend's rate.

    python -m loadtest.flash_sale [--profile full|ci] [--report-dir DIR]

The order backend takes `admit_per_s` orders a second, so the room is set to
it. Five times that many customers arrive each second for `arrival_s`; two
gateway processes share one Redis; customers (`sale_locustfile.py`) honour
`poll_after_s` and give up after a random patience. The verdict, from the
customers' own records and the order backend's counts:

- customers are admitted in ticket order (overtakes counted by the admission
  times the gateway reports, to the millisecond: zero);
- the order backend never makes more than `admit_per_s` + 10 % new orders in
  any second (by the `created_at` it answers with);
- every customer who stayed was served (an order, 201);
- the ETA given with the ticket was within 25 % of the real wait (ticket to
  admission, by the gateway's clock) for 90 % of the customers admitted from
  the line;
- no 5xx anywhere, and no key ordered twice.
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadtest.harness import Gateway, RedisServer, Upstreams
from loadtest.verdict import Checks

BIN = Path(sys.executable).parent
ADMIN_TOKEN = "flash-sale-admin-token-0123456789"
RATE_SLACK = 1.10
ETA_TOLERANCE = 0.25
ETA_SHARE = 0.90


@dataclass(frozen=True)
class SaleProfile:
    admit_per_s: int
    arrival_s: float
    patience_s: tuple[float, float]
    crowd: int = 5  # customers arriving per second, in multiples of admit_per_s

    @property
    def customers(self) -> int:
        return int(self.crowd * self.admit_per_s * self.arrival_s)

    @property
    def run_s(self) -> float:
        """Long enough for the whole line to be served, and a margin."""
        return self.arrival_s + self.customers / self.admit_per_s + 10


PROFILES = {
    # As the issue describes it: 20 orders/s, 100 customers/s for 10 s (1,000 customers).
    "full": SaleProfile(admit_per_s=20, arrival_s=10, patience_s=(30, 120)),
    # The same shape in about half a minute, for the test suite.
    "ci": SaleProfile(admit_per_s=20, arrival_s=2, patience_s=(6, 30)),
}


@dataclass
class Verdict(Checks):
    figures: dict[str, Any] = field(default_factory=dict)


def judge(customers: list[dict[str, Any]], orders_by_key: dict[str, int],
          profile: SaleProfile) -> Verdict:
    verdict = Verdict()
    queued = [c for c in customers if "ticket" in c]
    admitted = [c for c in queued if "admitted" in c]
    ordered = [c for c in customers if c.get("order_status") == 201]
    verdict.figures = {
        "customers": len(customers), "straight_in": len(customers) - len(queued),
        "queued": len(queued), "admitted_from_line": len(admitted),
        "gave_up": sum("gave_up" in c for c in customers), "ordered": len(ordered)}
    _order_kept(verdict, admitted)
    _backend_rate(verdict, ordered, profile)
    stayed = [c for c in customers if "gave_up" not in c]
    unserved = [c["client"] for c in stayed if c.get("order_status") != 201]
    verdict.add("everyone who stayed was served", not unserved,
                f"{len(stayed) - len(unserved)} of {len(stayed)}; unserved: {unserved[:5]}")
    _eta(verdict, admitted)
    errors = Counter(s for c in customers for s in c["statuses"] if s >= 500 or s == 0)
    verdict.add("no 5xx, no connection errors", not errors, f"{dict(errors)}")
    twice = {k: n for k, n in orders_by_key.items() if n > 1}
    verdict.add("no double order", not twice, f"{len(twice)} keys ordered twice")
    return verdict


def _order_kept(verdict: Verdict, admitted: list[dict[str, Any]]) -> None:
    """Overtakes: pairs where the later ticket was admitted before the earlier one."""
    by_ticket = sorted(admitted, key=lambda c: int(c["ticket"].split(".")[0]))
    times = [c["admitted"] for c in by_ticket]
    overtakes = sum(1 for i, t in enumerate(times) for later in times[i + 1:] if later < t)
    verdict.add("admitted in ticket order", overtakes == 0,
                f"{overtakes} overtakes among {len(times)} admitted tickets")


def _backend_rate(verdict: Verdict, ordered: list[dict[str, Any]], profile: SaleProfile) -> None:
    """New orders the backend made in any one-second interval, by its own `created_at`."""
    busiest = _busiest_second([c.get("created", c["ordered"]) for c in ordered])
    bound = profile.admit_per_s * RATE_SLACK
    verdict.figures["busiest_second_orders"] = busiest
    verdict.figures["busiest_second_admissions"] = _busiest_second(
        [c["admitted"] for c in ordered if "admitted" in c])
    verdict.add("the backend's rate held", busiest <= bound,
                f"at most {busiest} new orders in any second (bound {bound:g})")


def _busiest_second(times: list[float]) -> int:
    """The most of these times within any one-second interval."""
    times = sorted(times)
    return max((bisect.bisect_right(times, t + 1.0) - i for i, t in enumerate(times)), default=0)


def _eta(verdict: Verdict, admitted: list[dict[str, Any]]) -> None:
    right = 0
    errors = []
    for c in admitted:
        wait = c["admitted"] - c["ticketed"]
        eta = c["eta_s"]
        if eta is None:
            continue
        errors.append((eta - wait) / wait if wait > 0 else 0.0)
        if abs(eta - wait) <= ETA_TOLERANCE * wait:
            right += 1
    share = right / len(admitted) if admitted else 1.0
    errors.sort()
    verdict.figures["eta_error_p50"] = round(errors[len(errors) // 2], 3) if errors else None
    verdict.add("ETAs were right", share >= ETA_SHARE,
                f"{right} of {len(admitted)} within 25 % of the real wait "
                f"({share:.0%}; bound {ETA_SHARE:.0%})")


def run(profile_name: str, report_dir: Path) -> Verdict:
    profile = PROFILES[profile_name]
    report_dir.mkdir(parents=True, exist_ok=True)
    log_dir = report_dir / "logs"
    log_dir.mkdir(exist_ok=True)
    redis = RedisServer(log_dir)
    sims = Upstreams(log_dir)
    gateways: list[Gateway] = []
    try:
        room = {"enabled": True, "admit_per_s": profile.admit_per_s}
        # The customers come from one machine: each sends its own address, as an ingress in
        # front would (a trusted proxy here), so the per-address ticket bound sees customers.
        server = {"trusted_proxies": ["127.0.0.1/32", "::1/128"]}
        for _ in range(2):
            gateways.append(Gateway(log_dir, sims.urls, env={"GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN},
                                    config={"redis": {"url": redis.url}, "waiting_room": room,
                                            "server": server}))
        customers = _run_locust([gw.url for gw in gateways], profile, report_dir)
        orders_by_key = sims.stats("order")["orders_by_key"]
    finally:
        for gw in gateways:
            gw.stop()
        sims.proc.stop()
        redis.stop()
    verdict = judge(customers, orders_by_key, profile)
    (report_dir / "verdict.json").write_text(json.dumps({
        "profile": profile_name, "passed": verdict.passed, "figures": verdict.figures,
        "checks": [c.__dict__ for c in verdict.checks]}, indent=2))
    return verdict


def _run_locust(hosts: list[str], profile: SaleProfile,
                report_dir: Path) -> list[dict[str, Any]]:
    records = report_dir / "customers.json"
    env = {**os.environ, "SALE_HOSTS": json.dumps(hosts),
           "SALE_CUSTOMERS": str(profile.customers), "SALE_ARRIVAL_S": str(profile.arrival_s),
           "SALE_PATIENCE_S": json.dumps(profile.patience_s), "SALE_RUN_S": str(profile.run_s),
           "LOAD_RECORDS": str(records)}
    with (report_dir / "locust.log").open("wb") as log:
        locust = subprocess.Popen([
            str(BIN / "locust"), "-f", str(Path(__file__).with_name("sale_locustfile.py")),
            "--headless", "--host", hosts[0], "--only-summary", "--stop-timeout", "5",
            "--loglevel", "WARNING"], stdout=log, stderr=subprocess.STDOUT, env=env,
            start_new_session=True)
        try:
            locust.wait(timeout=profile.run_s + 60)
        finally:
            if locust.poll() is None:
                locust.kill()
                locust.wait()
    if not records.exists():
        tail = (report_dir / "locust.log").read_text(errors="replace")[-3000:]
        raise RuntimeError(f"locust wrote no records; its log ends:\n{tail}")
    customers: list[dict[str, Any]] = json.loads(records.read_bytes())["customers"]
    return customers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--profile", choices=sorted(PROFILES), default="full")
    parser.add_argument("--report-dir", type=Path, default=None)
    args = parser.parse_args()
    report_dir = args.report_dir or Path(tempfile.mkdtemp(prefix="flash-sale-"))
    started = time.monotonic()
    verdict = run(args.profile, report_dir)
    print(f"flash-sale ({args.profile}): {'PASS' if verdict.passed else 'FAIL'} "
          f"in {time.monotonic() - started:.0f} s; report in {report_dir}")
    print(json.dumps(verdict.figures))
    for check in verdict.checks:
        print(f"  {'ok  ' if check.passed else 'FAIL'} {check.name}: {check.detail}")
    raise SystemExit(0 if verdict.passed else 1)


if __name__ == "__main__":
    main()
