"""`order-upstreams`: run the three backend simulators until SIGTERM or Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from upstreams.runner import start_simulators


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="order-upstreams", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--order-port", type=int, default=9101)
    parser.add_argument("--payment-port", type=int, default=9102)
    parser.add_argument("--availability-port", type=int, default=9103)
    parser.add_argument("--seed", type=int, default=None,
                        help="seed the fault and id randomness, for repeatable runs")
    return parser


async def _run(args: argparse.Namespace) -> None:
    ports = {"order": args.order_port, "payment": args.payment_port,
             "availability": args.availability_port}
    sims = await start_simulators(args.host, ports, args.seed)
    for name, url in sims.urls.items():
        print(f"{name}: {url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await sims.stop()


def main(argv: list[str] | None = None) -> int:
    asyncio.run(_run(_parser().parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
