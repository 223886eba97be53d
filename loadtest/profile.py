"""Where the gateway's CPU goes per request: py-spy on a gateway under the bench's load.

Starts the simulators, a redis-server and one gateway configured as in
`loadtest.bench` (pinned to CPU 0), drives one route with the bench's load
generator for `--seconds` while `py-spy record` samples the gateway, and prints
the functions with the most samples: by own time and including callees, as a
share of all samples. The raw collapsed stacks are kept for flame graphs.

    python -m loadtest.profile --route get --seconds 20
    python -m loadtest.profile --route post --seconds 20
    python -m loadtest.profile --route refuse --seconds 20   # order breaker forced open
    python -m loadtest.profile --route queued --seconds 20   # the waiting room queues all
    python -m loadtest.profile --route poll --seconds 20     # a waiting ticket's poll
    python -m loadtest.profile --route get --bare            # the floor, to compare
    python -m loadtest.profile --route get --tracing all     # every request traced
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from loadtest.bench import (
    ADMIN_TOKEN,
    AVAILABILITY,
    MEASURED_CPU,
    ORDER,
    PAYMENT,
    other_cpus,
    pin_threads,
    refusing_config,
    start_backends,
    start_bare,
    start_receiver,
    waiting_ticket,
)
from loadtest.harness import Gateway, RedisServer, Upstreams
from loadtest.loadgen import Load, generator

TOP = 25


def summarise(collapsed: str) -> tuple[Counter[str], Counter[str], Counter[str], int]:
    """Own and inclusive samples per function, and own samples per file, from py-spy's
    collapsed stacks. Under uvloop a resumed coroutine's stack starts at the coroutine
    (the loop is C), so "including callees" undercounts the outer frames."""
    own: Counter[str] = Counter()
    by_file: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        total += count
        frames = [_short(frame) for frame in stack.split(";")]
        own[frames[-1]] += count
        by_file[_file_of(frames[-1])] += count
        for frame in set(frames):
            inclusive[frame] += count
    return own, inclusive, by_file, total


def _file_of(frame: str) -> str:
    path = frame.partition(" (")[2].rstrip(")")
    # The event loop's own C work shows as the Python frame that started it.
    return "event loop (uvloop, C)" if path == "asyncio/runners.py" else path


def _short(frame: str) -> str:
    # "handle (gateway/pipeline/proxy.py:120)" -> "handle (gateway/pipeline/proxy.py)":
    # one entry per function.
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{name} ({path})"


def _start_measured(args: argparse.Namespace, log_dir: Path, sims: Upstreams,
                    redis: RedisServer, stack: ExitStack) -> tuple[str, int]:
    """The process to profile, pinned to the measured CPU: its URL and PID."""
    if args.bare:
        return start_bare(log_dir, sims, stack, "--redis", redis.url)
    config: dict[str, Any] = {"redis": {"url": redis.url}}
    if args.route in ("queued", "poll"):
        config["waiting_room"] = refusing_config()["waiting_room"]
    if args.tracing != "off":
        config["tracing"] = {"exporter": "otlp", "endpoint": start_receiver(log_dir, stack),
                             "sampler": "always_on" if args.tracing == "all"
                             else "parentbased_traceidratio"}
    gateway = Gateway(log_dir, sims.urls, config=config,
                      env={"GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN})
    stack.callback(gateway.stop)
    pin_threads(gateway.proc.pid, MEASURED_CPU)
    if args.route == "refuse":
        gateway.admin("POST", "/admin/breakers/order/open", ADMIN_TOKEN)
    return gateway.url, gateway.proc.pid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--route", choices=("get", "post", "refuse", "queued", "poll"),
                        default="get")
    parser.add_argument("--bare", action="store_true",
                        help="profile the bare proxy (+Redis on post) instead, to compare")
    parser.add_argument("--tracing", choices=("off", "default", "all"), default="off",
                        help="tracing off, at the default 1 %%, or of every request "
                             "(exported to a receiver process)")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    args = parser.parse_args()
    if not shutil.which("py-spy"):
        raise SystemExit("py-spy is not installed (pip install -e '.[load]')")
    if args.bare and args.route in ("refuse", "queued", "poll"):
        raise SystemExit("the bare proxy never refuses")
    log_dir = Path(tempfile.mkdtemp(prefix="order-gateway-profile-"))
    out = log_dir / "profile.collapsed"
    with ExitStack() as stack:
        redis, sims = start_backends(log_dir, stack)
        url, pid = _start_measured(args, log_dir, sims, redis, stack)
        load = {"get": Load(url + "/v1" + AVAILABILITY),
                "post": Load(url + "/v1/orders", method="POST", body=ORDER, keyed=True),
                "refuse": Load(url + "/v1/orders/ord_1"),
                "queued": Load(url + "/v1/payments", method="POST", body=PAYMENT, keyed=True),
                }.get(args.route) or Load(url + "/v1/queue/" + waiting_ticket(url))
        gen = generator(args.connections, other_cpus())
        gen.run(load, 2.0)  # warm up
        spy = subprocess.Popen(["py-spy", "record", "--pid", str(pid), "--rate", str(args.rate),
                                "--format", "raw", "--output", str(out), "--duration",
                                str(int(args.seconds)), "--nonblocking"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        tally = gen.run(load, args.seconds)
        spy.wait(timeout=args.seconds + 30)
    own, inclusive, by_file, total = summarise(out.read_text())
    what = "bare proxy" if args.bare else "gateway"
    # Samples per 1000 requests make two profiles (gateway, bare proxy) comparable.
    per_k = 1000 / tally.requests
    print(f"{args.route} through the {what}: {tally.rate:.0f} req/s while sampled;"
          f" {total} samples, {total * per_k:.0f} per 1000 requests; raw stacks in {out}\n")
    for title, counts in (("own time, per file", by_file), ("own time", own),
                          ("including callees", inclusive)):
        print(f"top {TOP} by {title} (share of samples, samples per 1000 requests):")
        for frame, count in counts.most_common(TOP):
            print(f"  {count / total:6.1%} {count * per_k:7.1f}  {frame}")
        print()


if __name__ == "__main__":
    main()
