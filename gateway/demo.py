"""`order-gateway demo`: the three simulators and the gateway in one process, in memory.

Nothing to install or configure: the simulators listen on free loopback ports,
the gateway on `--port`, and an admin token is generated and printed.
"""

from __future__ import annotations

import secrets
import sys

from gateway.contract.observability import configure_logging
from gateway.contract.settings import load_settings
from gateway.server import ListenError, run, serve, stop_event_on_signals
from upstreams.runner import start_simulators

DEMO_HOST = "127.0.0.1"


async def _demo(port: int, access_log: bool) -> None:
    sims = await start_simulators(DEMO_HOST, {}, seed=None)
    token = secrets.token_urlsafe(24)
    overrides: dict[tuple[str, ...], object] = {
        ("server", "host"): DEMO_HOST, ("server", "port"): port, ("admin", "token"): token,
        ("server", "access_log"): access_log}
    overrides |= {("upstreams", name, "url"): url for name, url in sims.urls.items()}
    # The demo ignores GATEWAY_* variables and config files: it is always the same embedded setup.
    settings = load_settings(None, env={}, overrides=overrides)
    stop = stop_event_on_signals()

    def announce(bound_port: int) -> None:
        base = f"http://{DEMO_HOST}:{bound_port}"
        print(f"order-gateway demo listening on {base}", flush=True)
        # The token rides in the fragment, which the browser never sends to a server.
        print(f"console (open in a browser): {base}/admin/console#token={token}", flush=True)
        print(f"admin token: {token}", flush=True)
        for name, url in sims.urls.items():
            print(f"simulator {name}: {url}", flush=True)
        print("Ctrl-C stops everything. (--access-log prints a line per request.)", flush=True)

    try:
        await serve(settings, stop, on_listening=announce)
    finally:
        await sims.stop()


def run_demo(port: int, *, access_log: bool = False) -> int:
    configure_logging("info")
    try:
        run(_demo(port, access_log))
    except ListenError as exc:
        print(f"order-gateway demo: {exc} (port {port}; choose another with --port)",
              file=sys.stderr)
        return 1
    return 0
