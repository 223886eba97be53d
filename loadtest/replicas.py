"""Three gateway replicas behind nginx (round robin) sharing one Redis, on loopback.

The multi-replica set-up of `tests/system/test_replicas.py`, left running to try by
hand: it prints the load balancer's URL, each replica's URL and PID, and the
admin token, then waits until Ctrl-C and stops everything. Kill a replica
(`kill -9 PID`) or drain one (`kill PID`) under load and watch the others.

    python -m loadtest.replicas [--replicas 3]
"""

from __future__ import annotations

import argparse
import signal
import tempfile
import threading
from contextlib import ExitStack
from pathlib import Path

from loadtest.harness import Gateway, LoadBalancer, RedisServer, Upstreams

ADMIN_TOKEN = "replicas-admin-token-0123456789"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replicas", type=int, default=3)
    args = parser.parse_args()
    log_dir = Path(tempfile.mkdtemp(prefix="order-gateway-replicas-"))
    with ExitStack() as stack:
        sims = Upstreams(log_dir)
        stack.callback(sims.proc.stop)
        redis = RedisServer(log_dir)
        stack.callback(redis.stop)
        config = {"redis": {"url": redis.url}, "server": {"drain_delay_s": 1.0}}
        replicas = []
        for _ in range(args.replicas):
            gw = Gateway(log_dir, sims.urls, config=config,
                         env={"GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN})
            stack.callback(gw.stop)
            replicas.append(gw)
        lb = LoadBalancer(log_dir, [f"127.0.0.1:{gw.port}" for gw in replicas])
        stack.callback(lb.stop)
        print(f"load balancer: {lb.url}")
        for gw in replicas:
            print(f"replica: {gw.url} (pid {gw.proc.pid})")
        print(f"admin token: {ADMIN_TOKEN}\nsimulators: {sims.urls}\nlogs: {log_dir}",
              flush=True)
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        while not stop.wait(0.5):
            pass


if __name__ == "__main__":
    main()
