"""Running the gateway: one process, N worker processes, and graceful drain.

Drain on SIGTERM or SIGINT, in order:
1. `/readyz` turns 503 while the listener stays open for `drain_delay_s`, so a
   load balancer stops routing here before connections are refused;
2. the listener closes; in-flight requests finish, bounded by `drain_timeout_s`;
3. backend pools close and the process exits 0.

With `--workers N` a small supervisor starts N processes that share the port
through SO_REUSEPORT, forwards signals to them, and restarts one that dies.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import multiprocessing
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Coroutine
from typing import Any

from aiohttp import web
from prometheus_client import multiprocess as prom_multiprocess

from gateway.app import ARRIVALS, LIFECYCLE, build_app
from gateway.contract.observability import MULTIPROC_ENV, configure_logging
from gateway.contract.settings import Settings
from gateway.edge.connections import EdgeRunner, EdgeSite
from gateway.edge.middleware import EDGE
from gateway.ops import events
from gateway.ops.admin import ADMIN_LISTENER

log = logging.getLogger("gateway.server")

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
GC_THRESHOLDS = (50_000, 20, 20)
_STRONG_TOKEN_LENGTH = 16
# A worker that keeps dying right after start is not restarted forever.
_RESTART_WINDOW_S = 10.0
_MAX_RESTARTS_IN_WINDOW = 5
_CANNOT_LISTEN = 3  # a worker's exit code when its listener cannot be opened


class ListenError(Exception):
    """The gateway could not open its listener (the message says why)."""


def run(main: Coroutine[Any, Any, None]) -> None:
    """Run a coroutine on uvloop where it is installed, else the default loop."""
    try:
        import uvloop
        factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main)


def stop_event_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in _STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    return stop


async def serve(settings: Settings, stop: asyncio.Event,
                on_listening: Callable[[int], None] | None = None) -> None:
    """Serve until `stop` is set, then drain as described above."""
    server = settings.server
    if settings.admin.token is not None and len(settings.admin.token) < _STRONG_TOKEN_LENGTH:
        log.warning("the admin token is short; use at least %d random characters",
                    _STRONG_TOKEN_LENGTH)
    app = build_app(settings)
    edge = app[EDGE]
    runner = EdgeRunner(app, server, edge, app[ARRIVALS],
                        handle_signals=False, access_log=None,
                        shutdown_timeout=server.drain_timeout_s)
    await runner.setup()
    site = EdgeSite(runner, server.host, server.port, backlog=server.listen_backlog,
                    reuse_port=server.workers > 1)
    try:
        await site.start()
        port = runner.addresses[0][1]
        log.info("listening", extra={"fields": {"host": server.host, "port": port,
                                                "pid": os.getpid()}})
        if settings.admin.token is not None and settings.admin.port is not None:
            await _admin_listener(runner, settings)
    except OSError as exc:
        # A port in use or not ours to bind: one clear line, and the app closed cleanly.
        await runner.cleanup()
        raise ListenError(f"cannot listen: {exc.strerror or exc}") from None
    # What start-up built lives as long as the process: out of the collector's sight,
    # a full collection no longer walks it (it was several per cent of the CPU under load).
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    if on_listening is not None:
        on_listening(port)
    await stop.wait()
    app[LIFECYCLE].draining = True
    app[events.STOPPING].set()  # open event streams end now, not at the drain's timeout
    log.info("draining", extra={"fields": {"delay_s": server.drain_delay_s,
                                           "timeout_s": server.drain_timeout_s}})
    await asyncio.sleep(server.drain_delay_s)
    await runner.cleanup()
    log.info("stopped")


async def _admin_listener(runner: web.AppRunner, settings: Settings) -> None:
    """A listener of its own for /admin/*: a Service can then expose the public port only."""
    admin = settings.admin
    site = web.TCPSite(runner, admin.host, admin.port, backlog=64,
                       reuse_port=settings.server.workers > 1 or None)
    await site.start()
    port = runner.addresses[-1][1]
    runner.app[ADMIN_LISTENER].port = port
    log.info("admin listening", extra={"fields": {"host": admin.host, "port": port}})


async def _serve_until_signal(settings: Settings) -> None:
    await serve(settings, stop_event_on_signals())


def _worker_main(settings_data: dict[str, Any]) -> None:
    settings = Settings.model_validate(settings_data)
    configure_logging(settings.server.log_level)
    try:
        run(_serve_until_signal(settings))
    except ListenError as exc:
        log.error(str(exc))
        raise SystemExit(_CANNOT_LISTEN) from None


def serve_forever(settings: Settings) -> int:
    """The `serve` command: one process, or a supervisor of N workers."""
    configure_logging(settings.server.log_level)
    if settings.server.workers == 1:
        try:
            run(_serve_until_signal(settings))
        except ListenError as exc:
            log.error(str(exc), extra={"fields": {"host": settings.server.host,
                                                  "port": settings.server.port}})
            return 1
        return 0
    return _supervise(settings)


def _supervise(settings: Settings) -> int:
    if settings.redis.url is None:
        # Each worker would keep its own records: a resubmission landing on another
        # worker is forwarded again, and admin changes reach one worker only.
        log.warning("several workers without Redis: idempotency records and admin changes "
                    "are per worker; set GATEWAY_REDIS_URL", extra={"fields": {
                        "workers": settings.server.workers}})
    metrics_dir = tempfile.mkdtemp(prefix="order-gateway-metrics-")
    os.environ[MULTIPROC_ENV] = metrics_dir
    ctx = multiprocessing.get_context("spawn")
    data = settings.model_dump()
    stopping = False

    def start_worker() -> multiprocessing.process.BaseProcess:
        proc = ctx.Process(target=_worker_main, args=(data,), daemon=False)
        proc.start()
        return proc

    def on_signal(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for proc in workers:
            if proc.is_alive() and proc.pid is not None:
                os.kill(proc.pid, signal.SIGTERM)

    workers: list[multiprocessing.process.BaseProcess] = []
    # Handlers first: a stop signal during start-up must stop the workers, not orphan them.
    for sig in _STOP_SIGNALS:
        signal.signal(sig, on_signal)
    for _ in range(settings.server.workers):
        if not stopping:
            workers.append(start_worker())
    restarts: list[float] = []
    failed = False
    try:
        while any(proc.is_alive() for proc in workers) or (not stopping and not failed):
            time.sleep(0.2)
            for i, proc in enumerate(workers):
                if proc.is_alive() or stopping or failed:
                    continue
                _mark_dead(proc.pid)
                if proc.exitcode == _CANNOT_LISTEN:
                    # Another start would meet the same port: stop at once.
                    failed = True
                    on_signal(signal.SIGTERM, None)
                    break
                now = time.monotonic()
                restarts = [t for t in restarts if now - t < _RESTART_WINDOW_S] + [now]
                if len(restarts) > _MAX_RESTARTS_IN_WINDOW:
                    log.error("workers keep dying; stopping")
                    failed = True
                    on_signal(signal.SIGTERM, None)
                    break
                log.warning("worker died, restarting", extra={"fields": {
                    "pid": proc.pid, "exitcode": proc.exitcode}})
                workers[i] = start_worker()
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
    # A worker still importing when the stop signal came dies of it before it has
    # installed its handler; it had nothing in flight, so that is a clean stop too.
    clean = (0, None, -signal.SIGTERM, -signal.SIGINT)
    bad = [proc.exitcode for proc in workers if proc.exitcode not in clean]
    return 1 if failed or bad else 0


def _mark_dead(pid: int | None) -> None:
    if pid is not None:
        # unannotated in prometheus-client
        prom_multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
