"""Real processes on free loopback ports: simulators, gateways, redis-server, nginx.

The harness of the test suite and of `loadtest/`. Every process writes its
output to a log file kept for failure messages; each is stopped by its own PID.
`RUNNING` lists live processes so a failing test's report carries their recent
logs (see tests/conftest.py).

Ports: a port found free may be taken before the child binds it. Ports are
drawn at random below the kernel's ephemeral range, which outgoing connections
and port-0 binds use, so only another deliberate bind can take one; and a
child that still finds its port taken is started again on new ports.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import redis
import yaml

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parent.parent
RUNNING: list[Proc] = []


PORT_ATTEMPTS = 5
# Backend timeouts that keep failure tests quick; guarantees are also tested without them.
SHORT_TIMEOUTS = {"timeout_s": 1.0, "connect_timeout_s": 0.5}
_IN_USE = ("address already in use", "address in use")


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_PORTS = range(10_000, min(_ephemeral_start(), 60_000))


def free_port() -> int:
    """A loopback port nobody listens on now, outside the ephemeral range."""
    for _ in range(100):
        port = random.choice(_PORTS)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free loopback port found")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class PortTaken(RuntimeError):
    """A child could not listen: its port was taken after it was found free."""


def on_free_ports(launch: Callable[[], None]) -> None:
    """Run `launch` (which picks its ports with free_port) again while a port it picked
    turns out taken, a few times at most."""
    for attempt in range(PORT_ATTEMPTS):
        try:
            launch()
            return
        except PortTaken:
            if attempt == PORT_ATTEMPTS - 1:
                raise


class Proc:
    """One child process with its log file."""

    def __init__(self, name: str, argv: list[str], log_dir: Path,
                 env: dict[str, str] | None = None) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_dir / f"{name}-{time.monotonic_ns()}.log"
        self._log = self.log_path.open("wb")
        # Only what the test gives: a developer's own gateway or tracing settings stay out.
        full_env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("GATEWAY_", "OTEL_"))}
        full_env.update(env or {})
        self.popen = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT,
                                      env=full_env, start_new_session=True)
        RUNNING.append(self)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_text(self) -> str:
        """The whole log, also after the process stopped."""
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def wait_http(self, url: str, timeout: float = 15.0) -> None:
        """Wait until `url` answers 200, or fail with the process's log."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise self.exited()
            try:
                with urllib.request.urlopen(url, timeout=1) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not answer {url} in {timeout}s:\n{self.log_tail()}")

    def exited(self) -> RuntimeError:
        """Why the process is gone: `PortTaken` if it could not listen."""
        log = self.log_tail()
        error = PortTaken if any(s in log.lower() for s in _IN_USE) else RuntimeError
        return error(f"{self.name} exited with {self.popen.poll()}:\n{log}")

    def signal(self, sig: int) -> None:
        if self.alive():
            os.kill(self.pid, sig)

    def wait(self, timeout: float) -> int:
        return self.popen.wait(timeout=timeout)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL if it does not exit in time; returns the exit code."""
        if self.alive():
            self.signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._close()
        return self.popen.returncode

    def kill(self) -> None:
        if self.alive():
            os.kill(self.pid, signal.SIGKILL)
            self.popen.wait(timeout=10)
        self._close()

    def _close(self) -> None:
        if self in RUNNING:
            RUNNING.remove(self)
        self._log.close()


class Upstreams:
    """The three simulators in one `order-upstreams` process."""

    def __init__(self, log_dir: Path, seed: int = 7) -> None:
        self._log_dir, self._seed = log_dir, seed
        on_free_ports(self._launch)

    def _launch(self) -> None:
        self.ports = {name: free_port() for name in ("order", "payment", "availability")}
        self.urls = {name: f"http://127.0.0.1:{port}" for name, port in self.ports.items()}
        self.proc = Proc("upstreams", [
            str(BIN / "order-upstreams"), "--seed", str(self._seed),
            "--order-port", str(self.ports["order"]),
            "--payment-port", str(self.ports["payment"]),
            "--availability-port", str(self.ports["availability"]),
        ], self._log_dir)
        for url in self.urls.values():
            _started_or_stopped(self.proc, url + "/_stats")

    def _call(self, backend: str, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else orjson.dumps(body)
        req = urllib.request.Request(self.urls[backend] + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=5) as resp:
            return orjson.loads(resp.read())

    def set_faults(self, backend: str, **faults: Any) -> None:
        self._call(backend, "PUT", "/_faults", faults)

    def heal(self) -> None:
        for backend in self.urls:
            self._call(backend, "DELETE", "/_faults")

    def stats(self, backend: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call(backend, "GET", "/_stats")
        return result


class Gateway:
    """One `order-gateway serve` process with a YAML config written for it."""

    def __init__(self, log_dir: Path, upstream_urls: dict[str, str],
                 config: dict[str, Any] | None = None, env: dict[str, str] | None = None,
                 workers: int = 1, short_timeouts: bool = True,
                 source: Path | None = None) -> None:
        """`short_timeouts` (1 s per call) keeps failure tests quick; tests of a guarantee
        also run without it, on the shipped defaults. `source`: run the gateway of that
        source tree (see `checkout`) instead of the installed one."""
        self._source = source
        timeouts = SHORT_TIMEOUTS if short_timeouts else {}
        self._tree: dict[str, Any] = {"upstreams": {
            name: {"url": url, **timeouts} for name, url in upstream_urls.items()}}
        merge(self._tree, config or {})
        self._log_dir, self._env, self._workers = log_dir, env, workers
        on_free_ports(self._launch)

    def _launch(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        tree: dict[str, Any] = {"server": {"host": "127.0.0.1", "port": self.port}}
        merge(tree, self._tree)
        self.config_path = self._log_dir / f"gateway-{self.port}.yaml"
        self.config_path.write_text(yaml.safe_dump(tree))
        argv = [str(BIN / "order-gateway"), "serve", "--config", str(self.config_path)]
        env = dict(self._env or {})
        if self._source is not None:
            # -P: the working directory must not shadow `source` on the import path.
            argv[:1] = [sys.executable, "-P", "-m", "gateway"]
            env["PYTHONPATH"] = str(self._source)
        if self._workers > 1:
            argv += ["--workers", str(self._workers)]
        self.proc = Proc(f"gateway-{self.port}", argv, self._log_dir, env)
        _started_or_stopped(self.proc, self.url + "/readyz")

    def admin(self, method: str, path: str, token: str, body: Any = None) -> Any:
        data = None if body is None else orjson.dumps(body)
        req = urllib.request.Request(self.url + path, data=data, method=method, headers={
            "Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=5) as resp:
            return orjson.loads(resp.read())

    def reset_breakers(self, token: str) -> None:
        for name in ("order", "payment", "availability"):
            self.admin("POST", f"/admin/breakers/{name}/reset", token)

    def stop(self) -> int | None:
        return self.proc.stop()


@contextlib.contextmanager
def checkout(rev: str) -> Iterator[Path]:
    """The repository's tree at `rev`, in a temporary git worktree: what a benchmark
    measures "before" against."""
    place = Path(tempfile.mkdtemp(prefix="gateway-at-"))
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(place), rev],
                   check=True, capture_output=True)
    try:
        yield place
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(place)],
                       check=False, capture_output=True)


def _started_or_stopped(proc: Proc, url: str) -> None:
    """Wait for `url`; a process that never got there is stopped, not left behind."""
    try:
        proc.wait_http(url)
    except BaseException:
        proc.kill()
        raise


def merge(base: dict[str, Any], extra: dict[str, Any]) -> None:
    """Deep-merge `extra` into `base` (config trees)."""
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = value


class RedisServer:
    """A real redis-server on a free loopback port; tests may kill and restart it.

    `persistent` turns on the append-only file, so a restart on the same port
    keeps the data. It syncs every write (`appendfsync always`) so that no test
    depends on the disk being quick; deployed Redis runs `everysec`.
    """

    def __init__(self, log_dir: Path, persistent: bool = False,
                 replica_of: int | None = None) -> None:
        self.log_dir = log_dir
        self.options = (["--appendonly", "yes", "--appendfsync", "always"] if persistent
                            else ["--appendonly", "no"])
        if replica_of is not None:
            self.options += ["--replicaof", "127.0.0.1", str(replica_of)]
        on_free_ports(self._launch)

    def _launch(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.data_dir = self.log_dir / f"redis-{self.port}"
        self.data_dir.mkdir(exist_ok=True)
        self.proc = self._start()

    def _start(self) -> Proc:
        proc = Proc(f"redis-{self.port}", [
            "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
            # A replica's first full sync streams at once (Redis waits 5 s for more replicas).
            "--save", "", "--repl-diskless-sync-delay", "0", *self.options,
            "--dir", str(self.data_dir),
        ], self.log_dir)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return proc
            except OSError:
                if not proc.alive():
                    raise proc.exited() from None
                time.sleep(0.05)
        proc.kill()
        raise RuntimeError(f"redis-server did not start:\n{proc.log_tail()}")

    def restart(self) -> None:
        self.proc.kill()
        self.proc = self._start()

    def kill(self) -> None:
        self.proc.kill()

    def start(self) -> None:
        """Start again on the same port after `kill`."""
        self.proc = self._start()

    def stop(self) -> None:
        self.proc.stop()


def wait_until(check: Callable[[], object], within_s: float, what: str) -> None:
    """Poll `check` every 0.1 s until it is true, or fail saying `what` did not happen."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"{what} (within {within_s} s)")


def replicas_hold_writes(master_port: int, count: int) -> bool:
    """Whether `count` replicas acknowledge a write to the master now (Redis WAIT). A
    replica the master lists as online may not acknowledge yet: it is still loading."""
    client = redis.Redis(port=master_port, socket_timeout=2)
    try:
        client.incr("og:harness:synced")
        return int(client.wait(count, 100)) >= count
    except (OSError, redis.RedisError):
        return False
    finally:
        client.close()


class Sentinel:
    """A real Redis Sentinel on a free loopback port, watching the master at `master_port`:
    quorum 1, the master held down after 1 s without an answer, so a failover takes a few
    seconds. `url` is the gateway's `redis+sentinel://` URL of it."""

    SERVICE = "orders-redis"

    def __init__(self, log_dir: Path, master_port: int) -> None:
        self.log_dir, self.master = log_dir, master_port
        on_free_ports(self._launch)
        self.url = f"redis+sentinel://127.0.0.1:{self.port}/{self.SERVICE}"
        try:
            wait_until(self._answers, 10, "the sentinel did not start")
        except AssertionError:
            self.proc.stop()
            raise

    def _launch(self) -> None:
        self.port = free_port()
        conf = self.log_dir / f"sentinel-{self.port}.conf"
        service = self.SERVICE
        conf.write_text(f"port {self.port}\nbind 127.0.0.1\ndir {self.log_dir}\n"
                        f"sentinel monitor {service} 127.0.0.1 {self.master} 1\n"
                        f"sentinel down-after-milliseconds {service} 1000\n"
                        f"sentinel failover-timeout {service} 5000\n")
        self.proc = Proc(f"sentinel-{self.port}", ["redis-server", str(conf), "--sentinel"],
                         self.log_dir)

    def ask(self, *command: str) -> Any:
        client = redis.Redis(port=self.port, socket_timeout=2, decode_responses=True)
        try:
            return client.execute_command(*command)
        finally:
            client.close()

    def master_port(self) -> int:
        _, port = self.ask("SENTINEL", "get-master-addr-by-name", self.SERVICE)
        return int(port)

    def knows_replicas(self) -> bool:
        return bool(self.ask("SENTINEL", "replicas", self.SERVICE))

    def _answers(self) -> bool:
        if not self.proc.alive():
            raise self.proc.exited()
        try:
            return self.master_port() > 0
        except (OSError, redis.RedisError):
            return False

    def stop(self) -> None:
        self.proc.stop()


class LoadBalancer:
    """nginx on a free loopback port, round robin over `backends` (host:port).

    No keep-alive towards the backends: a replica that closes its listener to
    drain then refuses new connections, and nginx passes those requests (any
    method: they were never sent) to the next replica.
    """

    def __init__(self, log_dir: Path, backends: list[str], *, keepalive: bool = False) -> None:
        """`keepalive`: connections to the backends kept open and reused for other
        clients' requests, request bodies streamed as they arrive (as an ingress tuned
        for throughput runs it)."""
        self._log_dir, self._backends = log_dir, backends
        self._keepalive = keepalive
        on_free_ports(self._launch)

    def _launch(self) -> None:
        log_dir, backends = self._log_dir, self._backends
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        prefix = log_dir / f"nginx-{self.port}"
        prefix.mkdir()
        prefix.chmod(0o777)  # its worker processes may run as an unprivileged user
        servers = "\n".join(f"    server {b} max_fails=1 fail_timeout=2s;" for b in backends)
        temp = " ".join(f"{kind}_temp_path {prefix}/{kind};"
                        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        pool, reuse = "", ""
        if self._keepalive:
            pool = "    keepalive 16;"
            reuse = ("proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n"
                     "      proxy_request_buffering off;")
        (prefix / "nginx.conf").write_text(f"""
daemon off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  {temp}
  upstream gateways {{
{servers}
{pool}
  }}
  server {{
    listen 127.0.0.1:{self.port};
    location / {{
      proxy_pass http://gateways;
      proxy_next_upstream error timeout;
      proxy_connect_timeout 1s;
      proxy_read_timeout 30s;
      {reuse}
    }}
  }}
}}
""")
        self.proc = Proc(f"nginx-{self.port}", ["nginx", "-p", str(prefix), "-c",
                                                str(prefix / "nginx.conf")], log_dir)
        self.error_log = prefix / "error.log"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                if not self.proc.alive():
                    raise self.proc.exited() from None
                time.sleep(0.05)
        self.proc.kill()
        raise RuntimeError(f"nginx did not start:\n{self.proc.log_tail()}")

    def stop(self) -> None:
        self.proc.stop()


class Relay:
    """A TCP relay on a free loopback port to `target_port`, that can stall one direction.

    Put between a Redis replica and its master (`replicaof` the relay), `stall()` stops
    passing on the master's bytes while every connection stays open: the replica believes
    its link is up and keeps sending its acknowledgements of what it already has, and the
    master, acknowledging writes to its clients, streams what the replica never gets.
    After `flow()`, bytes held while stalled go on with the next bytes the master sends
    (it sends some at least every few seconds); `close()` drops them.
    """

    def __init__(self, target_port: int) -> None:
        self._target = target_port
        self._stalled = threading.Event()
        self._sockets: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def stall(self) -> None:
        self._stalled.set()

    def flow(self) -> None:
        self._stalled.clear()

    def close(self) -> None:
        self._closed = True
        for sock in [self._listener, *self._sockets]:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                downstream, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self._target), timeout=5)
            except OSError:  # the master is gone: so is this connection
                downstream.close()
                continue
            upstream.settimeout(None)
            self._sockets += [downstream, upstream]
            threading.Thread(target=self._pump, args=(upstream, downstream, True),
                             daemon=True).start()
            threading.Thread(target=self._pump, args=(downstream, upstream, False),
                             daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, stallable: bool) -> None:
        held: list[bytes] = []
        try:
            while data := source.recv(65536):
                if stallable and self._stalled.is_set():
                    held.append(data)
                    continue
                if held:
                    sink.sendall(b"".join(held))
                    held.clear()
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
