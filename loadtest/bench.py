"""The gateway against its floor, measured side by side in one run.

Starts on loopback: the simulators and a redis-server, the gateway (one
process, Redis store, production defaults: access log, breakers, maintenance,
admission control, stale cache), the same gateway with per-client rate
limiting on, a minimal aiohttp pass-through proxy (`loadtest/bare_proxy.py`)
without and with one Redis `SET NX` per order, and a second gateway kept
refusing (its order breaker forced open; its browse slots held by requests to
a hung backend, so availability requests are shed). The gateway and the
refusing gateway also run as they were at `--before` (a git revision checked
out in a temporary worktree), so every gain is a ratio measured in the same
run. Every measured proxy is pinned to CPU 0; the load generator (wrk where
installed, else `loadtest/loadgen.py`), the simulators and Redis to the other
CPUs. A gateway with `--workers 2`, not pinned, is measured for its rate only.

Then, for `--rounds` interleaved rounds of `--seconds` each, it sends:
- `GET /v1/availability`: direct to the simulator, bare proxy, gateway, the
  gateway before, gateway with rate limiting, gateway with a fault rule in
  force that this traffic does not match (every backend call pays the match),
  and 1 against 2 workers;
- `POST /v1/orders` with a new Idempotency-Key per request: direct, bare
  proxy, bare proxy + Redis, gateway, the gateway before;
- refusals, now and before: `/healthz` (the server's cheapest answer),
  `GET /v1/orders/{id}` with the breaker open, shed `GET /v1/availability`
  (also with `Accept-Language: zh-TW,...`: the cost of negotiating Traditional),
  `GET /v1/payments/{id}` under maintenance, and `POST /v1/payments` queued by
  the waiting room (429 QUEUED with a new ticket each);
- paced `GET /v1/availability` at half the measured saturation rate of the
  slower of the bare proxy and the gateway (random arrivals): direct, bare
  proxy, gateway and the gateway before (added latency where it matters);
- `POST /v1/orders` with replica acknowledgements (`acks`): a gateway on a Redis
  master with one streaming replica (`min_replica_acks: auto`, so every claim and
  answer waits for the replica), the same with `min_replica_acks: 0`, and on the
  standalone Redis the gateway now and at `--acks-before` (the commit before them).

It reports, as medians over the rounds, requests/s, p50/p99 and the CPU time
of the measured process per request (from /proc, so it holds up better on a
busy machine than rates do), the ratios against the targets, now and before,
prints a table and writes JSON (`--json`).

    python -m loadtest.bench --rounds 5 --seconds 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadtest.harness import (
    Gateway,
    Proc,
    RedisServer,
    Upstreams,
    checkout,
    cpu_seconds,
    free_port,
    replicas_hold_writes,
    wait_until,
)
from loadtest.loadgen import Generator, Load, Tally, generator, pin

AVAILABILITY = "/availability?address=Beijing%201&product=fiber"
ORDER = json.dumps({
    "customer": {"name": "张三", "phone": "13800138000", "id_number": "11010519491231002X"},
    "product": "fiber-500", "address": "北京市朝阳区建国路 1 号"}, ensure_ascii=False)
PAYMENT = json.dumps({"order_id": "ord_1", "amount": 9900, "currency": "CNY",
                      "method": "alipay"})
ADMIN_TOKEN = "bench-admin-token-0123456789"
TAIWAN = (("Accept-Language", "zh-TW,zh;q=0.9,en-US;q=0.8,en;q=0.7"),)
MEASURED_CPU = {0}
HELD_SLOTS = 5  # browse slots of the refusing gateway held by hung requests

# The targets, all measured against a floor in the same run.
TARGET_GET_RATIO = 1.0  # gateway / bare proxy, CPU per request
TARGET_POST_RATIO = 1.0  # gateway / bare proxy + one Redis SET NX
TARGET_REFUSAL_RATIO = 1.2  # a refusal / the same server's /healthz
TARGET_POLL_RATIO = 1.2  # a waiting ticket's poll / the same server's /healthz
LINE_AHEAD = 300  # tickets taken before the polled one, so that it waits all the run
TARGET_FAULT_RULE_RATIO = 1.05  # a rule that matches nothing: within the machine's noise
# (also the bound on how much more a Traditional refusal costs now than a Chinese one before)
TARGET_ADDED_P50_MS = 1.0  # at half saturation, over direct
TARGET_ACKS_RATIO = 1.15  # a keyed POST a replica must hold / the same without
# A standalone Redis (no replica) costs what it cost before acknowledgements: within noise.
TARGET_STANDALONE_RATIO = 1.05
ACKS_BEFORE = "738044d"  # the last commit before replica acknowledgements
# The gateway "before": the last commit before the hot path's own HTTP client.
BEFORE = "fdce035"
BEFORE_TAG = " (before)"
# The last commit before tracing, and what tracing may cost per request.
TRACING_BEFORE = "741519f"
TARGET_TRACING_OFF_RATIO = 1.02
TARGET_TRACING_DEFAULT_RATIO = 1.05
GROUPS = {"get": "GET /v1/availability", "post": "POST /v1/orders", "refusals": "refusals",
          "workers": "GET /v1/availability, workers",
          "acks": "POST /v1/orders, replica acks",
          "tracing": "GET /v1/availability, tracing"}


@dataclass(frozen=True)
class Target:
    group: str
    name: str
    load: Load
    pid: int | None  # the process whose CPU is measured; None for direct
    refusal: bool = False  # every answer must be a refusal (non-2xx)


@dataclass
class Row:
    target: Target
    tallies: list[Tally] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)

    def median(self, what: str) -> float:
        values = self.cpu_us if what == "cpu_us" else [getattr(t, what) for t in self.tallies]
        return statistics.median(values) if values else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"group": self.target.group, "target": self.target.name,
                "rps": round(self.median("rate")), "p50_ms": round(self.median("p50_ms"), 3),
                "p99_ms": round(self.median("p99_ms"), 3),
                "cpu_us_per_request": round(self.median("cpu_us"), 1) if self.cpu_us else None,
                "rounds": len(self.tallies),
                "requests": sum(t.requests for t in self.tallies)}


# --- the processes -------------------------------------------------------------------------


def pin_threads(pid: int, cpus: set[int]) -> None:
    # A supervisor would hide its workers' CPU: everything measured runs as one process.
    for task in os.listdir(f"/proc/{pid}/task"):
        pin(int(task), cpus)


def other_cpus() -> set[int]:
    cpus = os.sched_getaffinity(0) - MEASURED_CPU
    return cpus or MEASURED_CPU


class _Holder:
    """Requests sent to a hung backend and left waiting: they hold admission slots."""

    def __init__(self, url: str, count: int) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.sockets = [socket.create_connection((host, int(port))) for _ in range(count)]
        for sock in self.sockets:
            sock.sendall(f"GET /v1{AVAILABILITY}&held=1 HTTP/1.1\r\nHost: x\r\n\r\n".encode())

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()


def start_backends(log_dir: Path, stack: ExitStack) -> tuple[RedisServer, Upstreams]:
    """A redis-server and the simulators, off the measured CPU, stopped with the stack."""
    redis = RedisServer(log_dir)
    stack.callback(redis.stop)
    sims = Upstreams(log_dir)
    stack.callback(sims.proc.stop)
    for pid in (redis.proc.pid, sims.proc.pid):
        pin_threads(pid, other_cpus())
    return redis, sims


def start_bare(log_dir: Path, sims: Upstreams, stack: ExitStack, *extra: str) -> tuple[str, int]:
    """A bare proxy in front of the simulators, pinned to the measured CPU: URL and PID."""
    port = free_port()
    proc = Proc("bare-proxy", [sys.executable, "-m", "loadtest.bare_proxy", "--port", str(port),
                               "--availability", sims.urls["availability"],
                               "--order", sims.urls["order"], *extra], log_dir)
    stack.callback(proc.stop)
    proc.wait_http(f"http://127.0.0.1:{port}/readyz")
    pin_threads(proc.pid, MEASURED_CPU)
    return f"http://127.0.0.1:{port}", proc.pid


def refusing_config() -> dict[str, Any]:
    """A gateway kept refusing: its availability backend hangs (see `processes`), reading a
    payment is under maintenance, and every new customer submitting one is queued."""
    return {
        "maintenance": {"windows": [{"scope": "GET /v1/payments/{payment_id}"}]},
        # Tickets kept an hour: the ticket-poll target's place must outlast every round.
        # No per-address bound on new tickets: wrk is one address, and past the bound its
        # customers would be refused RATE_LIMITED instead of QUEUED.
        "waiting_room": {"enabled": True, "routes": ["POST /v1/payments"], "queue_all": True,
                         "admit_per_s": 1, "ticket_idle_s": 3600,
                         "tickets_per_address_per_min": 1_000_000},
        # Refusals answered at once: wrk never honours Retry-After, and what is
        # measured here is what a refusal costs, not how long a client is held.
        # A fixed limit (floor = ceiling) whose read share leaves the 32 connections
        # of the breaker-open target room: they must reach the breaker.
        "overload": {"max_in_flight": HELD_SLOTS * 20, "min_in_flight": HELD_SLOTS * 20,
                     "browse_share": 0.05, "read_share": 0.95, "request_deadline_s": 600,
                     "hold_early_retries": False},
        "upstreams": {"availability": {"timeout_s": 300}},
        "stale_cache": {"max_entries": 0}}


def start_replicated(log_dir: Path, stack: ExitStack) -> RedisServer:
    """A Redis master with one replica streaming from it, off the measured CPU."""
    master = RedisServer(log_dir)
    stack.callback(master.stop)
    replica = RedisServer(log_dir, replica_of=master.port)
    stack.callback(replica.stop)
    wait_until(lambda: replicas_hold_writes(master.port, 1), 20, "the replica never came online")
    for pid in (master.proc.pid, replica.proc.pid):
        pin_threads(pid, other_cpus())
    return master


def start_receiver(log_dir: Path, stack: ExitStack) -> str:
    """An OTLP/HTTP receiver process (counting what it gets), off the measured CPU."""
    port = free_port()
    proc = Proc("otlp-receiver", [sys.executable, "-m", "loadtest.otlp_receiver", str(port)],
                log_dir)
    stack.callback(proc.stop)
    url = f"http://127.0.0.1:{port}"
    proc.wait_http(url + "/healthz")
    pin_threads(proc.pid, other_cpus())
    return url


def tracing_targets(gateway: Callable[..., Gateway], base: dict[str, Any], main: Gateway,
                    receiver: str, before: Path) -> list[Target]:
    """Tracing off now and before tracing, on at the default 1 %, and on for every request,
    all exporting to a real receiver."""
    group = GROUPS["tracing"]

    def traced(**tracing: Any) -> Gateway:
        return gateway({**base, "tracing": {"exporter": "otlp", "endpoint": receiver,
                                            **tracing}})

    earlier = gateway(base, source=before)
    default, every = traced(), traced(sampler="always_on")
    return [Target(group, name, Load(gw.url + "/v1" + AVAILABILITY), gw.proc.pid)
            for name, gw in (("tracing off", main), ("tracing off" + BEFORE_TAG, earlier),
                             ("tracing 1 %", default), ("tracing 100 %", every))]


@contextmanager
def processes(log_dir: Path, before: Path | None, acks_before: Path | None = None,
              tracing_before: Path | None = None) -> Iterator[list[Target]]:
    """Start everything, yield the targets, stop everything. `before`: the source tree of
    the gateway to compare with (None: no "before" rows); `acks_before`: the same for the
    acknowledgement group's standalone row; `tracing_before`: for the tracing group (None:
    no tracing group)."""
    with ExitStack() as stack:
        redis, sims = start_backends(log_dir, stack)
        base = {"redis": {"url": redis.url}}

        def gateway(config: dict[str, Any], upstreams: Upstreams = sims,
                    source: Path | None = None, workers: int = 1) -> Gateway:
            gw = Gateway(log_dir, upstreams.urls, config=config,
                         env={"GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN}, source=source,
                         workers=workers)
            stack.callback(gw.stop)
            if workers == 1:
                pin_threads(gw.proc.pid, MEASURED_CPU)
            return gw

        main = gateway(base)
        limited = gateway({**base, "rate_limit": {"rate_per_s": 1_000_000, "burst": 1_000_000}})
        # A game day under way: one fault rule in force that this traffic never matches
        # (its cohort header is not sent), so every backend call pays the match. Its own
        # Redis database: rules are fleet-wide, and the other gateways must have none.
        faulted = gateway({"redis": {"url": redis.url.rsplit("/", 1)[0] + "/1"}})
        faulted.admin("PUT", "/admin/faults", ADMIN_TOKEN, {
            "scope": "all", "abort": {"percent": 100, "status": 503}, "ttl_s": 3600,
            "match_header": {"name": "X-Fault-Cohort", "value": "gameday"}})
        two = gateway(base, workers=2)
        bare_url, bare_pid = start_bare(log_dir, sims, stack)
        bare_redis_url, bare_redis_pid = start_bare(log_dir, sims, stack, "--redis", redis.url)

        # The refusing gateways have simulators of their own: their availability backend
        # hangs.
        hung = Upstreams(log_dir)
        stack.callback(hung.proc.stop)
        pin_threads(hung.proc.pid, other_cpus())
        hung.set_faults("availability", hang=True)

        def refusing(source: Path | None) -> Gateway:
            gw = gateway(refusing_config(), hung, source)
            gw.admin("POST", "/admin/breakers/order/open", ADMIN_TOKEN)
            holder = _Holder(gw.url, HELD_SLOTS)
            stack.callback(holder.close)
            return gw

        get, post, keyed = "GET /v1/availability", "POST /v1/orders", {
            "method": "POST", "body": ORDER, "keyed": True}
        gateways = [("", main, refusing(None))]
        if before is not None:
            gateways.append((BEFORE_TAG, gateway(base, source=before), refusing(before)))
        targets = [
            Target(get, "direct", Load(sims.urls["availability"] + AVAILABILITY), None),
            Target(get, "bare proxy", Load(bare_url + "/v1" + AVAILABILITY), bare_pid),
            *(Target(get, "gateway" + tag, Load(gw.url + "/v1" + AVAILABILITY), gw.proc.pid)
              for tag, gw, _ in gateways),
            Target(get, "gateway +rate limit", Load(limited.url + "/v1" + AVAILABILITY),
                   limited.proc.pid),
            Target(get, "gateway +fault rule", Load(faulted.url + "/v1" + AVAILABILITY),
                   faulted.proc.pid),
            Target(post, "direct", Load(sims.urls["order"] + "/orders", **keyed), None),
            Target(post, "bare proxy", Load(bare_url + "/v1/orders", **keyed), bare_pid),
            Target(post, "bare proxy +Redis", Load(bare_redis_url + "/v1/orders", **keyed),
                   bare_redis_pid),
            *(Target(post, "gateway" + tag, Load(gw.url + "/v1/orders", **keyed), gw.proc.pid)
              for tag, gw, _ in gateways),
            # Rates only: a supervisor and its workers are not one process to measure.
            Target(GROUPS["workers"], "1 worker", Load(main.url + "/v1" + AVAILABILITY), None),
            Target(GROUPS["workers"], "2 workers", Load(two.url + "/v1" + AVAILABILITY), None),
        ]
        replicated = {"redis": {"url": start_replicated(log_dir, stack).url}}
        acked = gateway(replicated)
        unacked = gateway({"redis": {**replicated["redis"], "min_replica_acks": 0}})
        acks = GROUPS["acks"]
        targets += [
            Target(acks, "replica, acked", Load(acked.url + "/v1/orders", **keyed),
                   acked.proc.pid),
            Target(acks, "replica, not acked", Load(unacked.url + "/v1/orders", **keyed),
                   unacked.proc.pid),
            Target(acks, "standalone", Load(main.url + "/v1/orders", **keyed), main.proc.pid)]
        if acks_before is not None:
            earlier = gateway(base, source=acks_before)
            targets.append(Target(acks, "standalone" + BEFORE_TAG,
                                  Load(earlier.url + "/v1/orders", **keyed), earlier.proc.pid))
        if tracing_before is not None:
            targets += tracing_targets(gateway, base, main, start_receiver(log_dir, stack),
                                       tracing_before)
        for tag, _, refuser in gateways:
            pid = refuser.proc.pid
            targets += [
                # The cheapest answer the same server can give: the floor under any refusal.
                Target("refusals", "/healthz" + tag, Load(refuser.url + "/healthz"), pid),
                Target("refusals", "breaker open" + tag,
                       Load(refuser.url + "/v1/orders/ord_1"), pid, refusal=True),
                Target("refusals", "shed" + tag, Load(refuser.url + "/v1" + AVAILABILITY),
                       pid, refusal=True),
                # The same in Traditional Chinese: negotiation is cached per header value.
                Target("refusals", "shed, zh-TW" + tag, Load(
                    refuser.url + "/v1" + AVAILABILITY, headers=TAIWAN), pid, refusal=True),
                Target("refusals", "maintenance" + tag,
                       Load(refuser.url + "/v1/payments/pay_1"), pid, refusal=True),
                Target("refusals", "queued" + tag, Load(
                    refuser.url + "/v1/payments", method="POST", body=PAYMENT, keyed=True),
                       pid, refusal=True)]
        refuser = gateways[0][2]
        targets.append(Target("refusals", "ticket poll", Load(
            refuser.url + "/v1/queue/" + waiting_ticket(refuser.url)), refuser.proc.pid))
        yield targets


def waiting_ticket(url: str) -> str:
    """A ticket far enough back in the refusing gateway's line to wait all the run."""
    ticket = ""
    for n in range(LINE_AHEAD + 1):
        request = urllib.request.Request(url + "/v1/payments", data=PAYMENT.encode(),
                                         method="POST", headers={
                                             "Content-Type": "application/json",
                                             "Idempotency-Key": f"line-{n}"})
        try:
            urllib.request.urlopen(request, timeout=5).close()
        except urllib.error.HTTPError as refused:
            ticket = refused.headers["X-Queue-Ticket"]
            refused.close()
    return ticket


# --- the rounds ----------------------------------------------------------------------------


def measure(gen: Generator, target: Target, seconds: float) -> tuple[Tally, float | None]:
    before = cpu_seconds(target.pid) if target.pid else 0.0
    tally = gen.run(target.load, seconds)
    cpu = None
    if target.pid and tally.requests:
        cpu = (cpu_seconds(target.pid) - before) / tally.requests * 1e6
    bad = tally.errors + (tally.requests - tally.non_2xx if target.refusal else tally.non_2xx)
    if bad:
        raise SystemExit(f"{target.group} / {target.name}: {bad} of {tally.requests} requests"
                         " did not get the expected answer; see the logs")
    return tally, cpu


PACED = "GET /v1/availability paced"


def paced(targets: list[Target], rate: float) -> list[Target]:
    """Availability targets at a fixed rate: direct, the floor and the gateways."""
    group = f"{PACED} at {rate:.0f} req/s"
    return [Target(group, t.name, Load(t.load.url, rate=rate), t.pid) for t in targets
            if t.group == GROUPS["get"]
            and t.name in ("direct", "bare proxy", "gateway", "gateway" + BEFORE_TAG)]


def run_rounds(gen: Generator, targets: list[Target], args: argparse.Namespace) -> list[Row]:
    chosen = [t for t in targets if any(t.group == GROUPS.get(g) for g in args.groups)]
    for target in chosen:  # warm pools, caches and code paths
        measure(gen, target, 1.0)
    if "paced" in args.groups:
        # Half the saturation of the slower of the floor and the gateway: both proxies, and
        # the gateway before, then run at most half loaded (judging each at half its own
        # would compare different loads).
        saturation = min(measure(gen, t, args.seconds)[0].rate for t in targets
                         if t.group == GROUPS["get"] and t.name in ("bare proxy", "gateway"))
        chosen += paced(targets, saturation / 2)
    targets = chosen
    rows = [Row(t) for t in targets]
    for index in range(args.rounds):
        for row in rows:
            tally, cpu = measure(gen, row.target, args.seconds)
            row.tallies.append(tally)
            if cpu is not None:
                row.cpu_us.append(cpu)
            cpu_text = f"  CPU {cpu:6.0f} us/req" if cpu is not None else ""
            print(f"round {index + 1}  {row.target.group:40s} {row.target.name:20s}"
                  f" {tally.rate:7.0f} req/s  p50 {tally.p50_ms:6.2f}  p99 {tally.p99_ms:6.2f} ms"
                  f"{cpu_text}", flush=True)
    return rows


# --- the report ----------------------------------------------------------------------------


def ratios(rows: list[Row]) -> list[dict[str, Any]]:
    """The targets that this run's groups can judge, for the gateway now and before.

    CPU ratios are the median of per-round ratios: the two processes of a round
    are measured seconds apart, so the machine's drift between rounds (often
    20% here) cancels out. A refusal is judged against the same server's
    cheapest answer (`/healthz`), which is comparable across machines.
    """
    def row(group: str, name: str) -> Row | None:
        # The paced group's name carries its rate; every other is matched whole.
        return next((r for r in rows if r.target.name == name and (
            r.target.group.startswith(group) if group == PACED else r.target.group == group)),
            None)

    def cpu_ratio(group: str, name: str, floor: str) -> float | None:
        top, bottom = row(group, name), row(group, floor)
        if top is None or bottom is None or not top.cpu_us:
            return None
        return statistics.median(a / b for a, b in zip(top.cpu_us, bottom.cpu_us, strict=True))

    def added_p50(name: str) -> float | None:
        top, direct = row(PACED, name), row(PACED, "direct")
        if top is None or direct is None:
            return None
        return top.median("p50_ms") - direct.median("p50_ms")

    checks: list[tuple[str, float | None, float, str]] = []
    for tag in ("", BEFORE_TAG):
        checks += [
            (f"GET /v1/availability CPU: gateway{tag} / bare proxy",
             cpu_ratio(GROUPS["get"], "gateway" + tag, "bare proxy"), TARGET_GET_RATIO, "x"),
            (f"POST /v1/orders CPU: gateway{tag} / bare proxy +Redis",
             cpu_ratio(GROUPS["post"], "gateway" + tag, "bare proxy +Redis"),
             TARGET_POST_RATIO, "x"),
            *((f"refusal CPU, {name}{tag} / /healthz{tag}",
               cpu_ratio("refusals", name + tag, "/healthz" + tag), TARGET_REFUSAL_RATIO, "x")
              for name in ("breaker open", "shed", "maintenance", "queued")),
            (f"a waiting ticket's poll CPU{tag} / /healthz{tag}",
             cpu_ratio("refusals", "ticket poll" + tag, "/healthz" + tag), TARGET_POLL_RATIO,
             "x"),
            (f"added p50 at half saturation: gateway{tag} - direct (ms)",
             added_p50("gateway" + tag), TARGET_ADDED_P50_MS, "ms")]
    checks += [
        ("POST /v1/orders CPU: a replica acknowledges / min_replica_acks 0",
         cpu_ratio(GROUPS["acks"], "replica, acked", "replica, not acked"),
         TARGET_ACKS_RATIO, "x"),
        ("POST /v1/orders CPU, standalone Redis: now / before acknowledgements",
         cpu_ratio(GROUPS["acks"], "standalone", "standalone" + BEFORE_TAG),
         TARGET_STANDALONE_RATIO, "x"),
        # What a Taiwanese client's header costs over none: the same now (Traditional) as
        # before (Simplified), as `negotiate_language` is cached per header value.
        ("refusal CPU, shed in zh-TW / shed: now / before",
         _divided(cpu_ratio("refusals", "shed, zh-TW", "shed"),
                  cpu_ratio("refusals", "shed, zh-TW" + BEFORE_TAG, "shed" + BEFORE_TAG)),
         TARGET_FAULT_RULE_RATIO, "x"),
        ("  for comparison, the floor: bare proxy - direct (ms)", added_p50("bare proxy"),
         TARGET_ADDED_P50_MS, "ms"),
        # A rule in force costs one match per backend call; none in force, nothing.
        ("GET /v1/availability CPU: with a fault rule in force / without",
         cpu_ratio(GROUPS["get"], "gateway +fault rule", "gateway"),
         TARGET_FAULT_RULE_RATIO, "x"),
        ("GET /v1/availability CPU: tracing off / before tracing",
         cpu_ratio(GROUPS["tracing"], "tracing off", "tracing off" + BEFORE_TAG),
         TARGET_TRACING_OFF_RATIO, "x"),
        ("GET /v1/availability CPU: tracing at the default 1 % / off",
         cpu_ratio(GROUPS["tracing"], "tracing 1 %", "tracing off"),
         TARGET_TRACING_DEFAULT_RATIO, "x")]
    return [{"what": what, "value": round(value, 3), "target": limit, "unit": unit,
             "met": value <= limit} for what, value, limit, unit in checks if value is not None]


def _divided(top: float | None, bottom: float | None) -> float | None:
    return None if top is None or bottom is None else top / bottom


def reported(rows: list[Row]) -> list[str]:
    """Figures the run reports without judging them."""
    lines = []
    every, off = (next((r for r in rows if r.target.group == GROUPS["tracing"]
                        and r.target.name == name), None)
                  for name in ("tracing 100 %", "tracing off"))
    if every is not None and off is not None and every.cpu_us and off.cpu_us:
        ratio = statistics.median(a / b for a, b in zip(every.cpu_us, off.cpu_us, strict=True))
        lines.append(f"tracing every request / off: {ratio:.2f}x the CPU per request "
                     "(reported, not judged: docs/performance.md says where the time goes)")
    one, two = (next((r for r in rows if r.target.group == GROUPS["workers"]
                      and r.target.name == name), None) for name in ("1 worker", "2 workers"))
    if one is not None and two is not None:
        lines.append(f"workers: 2 / 1 served {two.median('rate') / one.median('rate'):.2f}x "
                     "the requests/s (the load generator shares the two cores: reported, "
                     "not judged)")
    for tag in ("", BEFORE_TAG):
        shed, taiwan = (next((r for r in rows if r.target.name == name + tag), None)
                        for name in ("shed", "shed, zh-TW"))
        if shed is not None and taiwan is not None and shed.cpu_us:
            ratio = statistics.median(
                a / b for a, b in zip(taiwan.cpu_us, shed.cpu_us, strict=True))
            lines.append(f"shed in zh-TW / shed{tag}: {ratio:.2f}x")
    for row in rows:
        if row.target.group.startswith(PACED) and row.target.name != "direct":
            lines.append(f"p99 at half saturation, {row.target.name}: "
                         f"{row.median('p99_ms'):.2f} ms")
    return lines


def table(rows: list[Row], checks: list[dict[str, Any]]) -> str:
    lines = [f"{'route':40s} {'target':20s} {'req/s':>7s} {'p50 ms':>7s} {'p99 ms':>7s}"
             f" {'CPU us/req':>10s}"]
    for row in rows:
        d = row.as_dict()
        cpu = f"{d['cpu_us_per_request']:10.0f}" if d["cpu_us_per_request"] is not None else ""
        lines.append(f"{d['group']:40s} {d['target']:20s} {d['rps']:7d} {d['p50_ms']:7.2f}"
                     f" {d['p99_ms']:7.2f} {cpu}")
    lines.append("")
    for check in checks:
        lines.append(f"[{'met' if check['met'] else 'MISSED'}] {check['what']}: "
                     f"{check['value']:.2f} (target <= {check['target']:g})")
    lines += ["", *reported(rows)]
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=Path(__file__).parent).stdout.strip()
    model = next((line.split(":", 1)[1].strip() for line in
                  Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    return {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "commit": commit,
            "cpu": model, "cpus": os.cpu_count(), "python": platform.python_version(),
            "measured_cpu": sorted(MEASURED_CPU)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--generator", choices=("wrk", "python"), default="wrk",
                        help="wrk if installed (default), else the Python fallback")
    parser.add_argument("--groups", nargs="+", choices=[*GROUPS, "paced"],
                        default=[*GROUPS, "paced"], help="what to measure (default: all)")
    parser.add_argument("--json", type=Path, default=None,
                        help="default: load-reports/bench-<time>.json")
    parser.add_argument("--acks-before", default=ACKS_BEFORE,
                        help="git revision of the gateway before replica acknowledgements "
                             f"(default {ACKS_BEFORE}); 'none' for no comparison")
    parser.add_argument("--tracing-before", default=TRACING_BEFORE,
                        help="git revision of the gateway before tracing (default "
                             f"{TRACING_BEFORE}), for the tracing group")
    parser.add_argument("--before", default=BEFORE,
                        help=f"git revision of the gateway to compare with (default {BEFORE}); "
                             "'none' for no comparison")
    args = parser.parse_args()
    gen = generator(args.connections, other_cpus(), prefer_wrk=args.generator == "wrk")
    log_dir = Path(tempfile.mkdtemp(prefix="order-gateway-bench-"))
    about = {**machine(), "generator": gen.name, "connections": args.connections,
             "rounds": args.rounds, "seconds": args.seconds, "groups": args.groups,
             "before": args.before}
    print(f"load generator: {gen.name}; logs in {log_dir}", flush=True)
    with ExitStack() as stack:
        before = None if args.before == "none" else stack.enter_context(checkout(args.before))
        acks_before = None
        if "acks" in args.groups and args.acks_before != "none":
            acks_before = stack.enter_context(checkout(args.acks_before))
        tracing_before = None
        if "tracing" in args.groups:
            tracing_before = stack.enter_context(checkout(args.tracing_before))
        with processes(log_dir, before, acks_before, tracing_before) as targets:
            rows = run_rounds(gen, targets, args)
    checks = ratios(rows)
    print("\nmedians over", args.rounds, "interleaved rounds;", about["date"], about["commit"],
          about["cpu"], "\n")
    print(table(rows, checks))
    out = args.json or Path("load-reports") / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": about, "rows": [r.as_dict() for r in rows],
                               "targets": checks}, indent=2, ensure_ascii=False))
    print(f"\nJSON: {out}")


if __name__ == "__main__":
    main()
