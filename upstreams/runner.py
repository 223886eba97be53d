"""Starting and stopping the three simulators on one event loop."""

from __future__ import annotations

import random
from dataclasses import dataclass

from aiohttp import web

from upstreams import availability, order, payment
from upstreams.faults import SimulatorState

BUILDERS = {"order": order.build_app, "payment": payment.build_app,
            "availability": availability.build_app}


@dataclass
class Simulators:
    runners: dict[str, web.AppRunner]
    urls: dict[str, str]

    async def stop(self) -> None:
        for runner in self.runners.values():
            await runner.cleanup()


async def start_simulators(host: str, ports: dict[str, int], seed: int | None) -> Simulators:
    """Start each simulator on its port (0: a free one) and return their URLs."""
    runners: dict[str, web.AppRunner] = {}
    urls: dict[str, str] = {}
    for index, (name, build) in enumerate(BUILDERS.items()):
        # One seeded source per simulator, so one's traffic never shifts another's faults.
        rng = random.Random(None if seed is None else seed + index)
        # handler_cancellation: a request whose client went away is not processed.
        runner = web.AppRunner(build(SimulatorState(rng=rng)), handler_cancellation=True,
                               access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        await web.TCPSite(runner, host, ports.get(name, 0)).start()
        runners[name] = runner
        bound_host, bound_port = runner.addresses[0][:2]
        urls[name] = f"http://{_url_host(bound_host)}:{bound_port}"
    return Simulators(runners, urls)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
