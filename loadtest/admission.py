"""Admission under overload: one gateway process on one core, far more clients than it serves.

    python -m loadtest.admission [--before REV] [--seconds 10] [--rounds 3]

Each round measures the gateway at `--before` (a git revision, checked out in a
temporary worktree; by default the commit before admission by measured delay)
and the gateway of this tree side by side, on the same simulators, with the
gateway pinned to core 0 and the load and simulators on core 1:

- `saturated`: 64 connections, closed loop (wrk): the rate the process sustains;
- `crowd`: 3,000 connections, closed loop (wrk). Little's law bounds the mean
  wait at 3,000 / throughput, so cheap refusals and a short tail are what count;
- `open`: a constant arrival rate of 1.5x the round's saturated rate, from
  `loadtest/open_loop.py`, which sends whether or not earlier answers came back
  and times each answer from the moment its request was due. `unsent` counts
  requests due while all 3,000 connections were busy (connections the gateway
  had not yet accepted count as busy).

wrk times each answer by status with a Lua script (the send time travels in
`X-Request-ID`, which the gateway echoes), so admitted (2xx) answers and
refusals get their own percentiles. The summary gives medians over rounds.
Loopback only, bounded in time; every process is stopped by its PID.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from loadtest.harness import REPO, Gateway, Upstreams, checkout
from loadtest.loadgen import pin

CROWD = 3000
SATURATING = 64
OPEN_FACTOR = 1.5
GATEWAY_CPU = {0}
LOAD_CPUS = {1}
# The last commit whose admission counted requests inside handlers only.
BEFORE = "0a0740d"
PATH = "/v1/availability?address=Beijing&product=fiber"
LOADS = ("saturated", "crowd", "open")

_LUA = r"""
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } og_timespec;
int clock_gettime(int clk, og_timespec *ts);
]]
local ts = ffi.new("og_timespec[1]")
local function now_us()
  ffi.C.clock_gettime(1, ts)
  return tonumber(ts[0].tv_sec) * 1000000 + math.floor(tonumber(ts[0].tv_nsec) / 1000)
end
local threads = {}
function setup(thread) table.insert(threads, thread) end
ok, shed, unmatched = {}, {}, 0
function request()
  wrk.headers["X-Request-ID"] = string.format("t%x", now_us())
  return wrk.format()
end
function response(status, headers, body)
  local sent = tonumber(string.sub(headers["X-Request-ID"] or "", 2), 16)
  if not sent then unmatched = unmatched + 1 return end
  local ms = (now_us() - sent) / 1000
  if status >= 200 and status < 300 then ok[#ok + 1] = ms else shed[#shed + 1] = ms end
end
local function pct(list, p)
  if #list == 0 then return 0 end
  return list[math.max(1, math.ceil(#list * p / 100))]
end
function done(summary, latency, requests)
  local all_ok, all_shed, lost = {}, {}, 0
  for _, t in ipairs(threads) do
    for _, v in ipairs(t:get("ok")) do all_ok[#all_ok + 1] = v end
    for _, v in ipairs(t:get("shed")) do all_shed[#all_shed + 1] = v end
    lost = lost + t:get("unmatched")
  end
  table.sort(all_ok) table.sort(all_shed)
  local e = summary.errors
  io.write(string.format('{"seconds": %f, "ok": %d, "refused": %d, "unmatched": %d, '
    .. '"errors": %d, "ok_p50_ms": %f, "ok_p99_ms": %f, "ok_max_ms": %f, '
    .. '"refused_p50_ms": %f, "refused_p99_ms": %f}\n',
    summary.duration / 1e6, #all_ok, #all_shed, lost,
    e.connect + e.read + e.write + e.timeout, pct(all_ok, 50), pct(all_ok, 99),
    pct(all_ok, 100), pct(all_shed, 50), pct(all_shed, 99)))
end
"""


@contextmanager
def _gateway(log_dir: Path, sims: Upstreams, source: Path | None) -> Iterator[Gateway]:
    config = {"stale_cache": {"max_entries": 0}, "server": {"access_log": False}}
    gw = Gateway(log_dir, sims.urls, config=config, short_timeouts=False, source=source)
    pin(gw.proc.pid, GATEWAY_CPU)
    try:
        yield gw
    finally:
        gw.stop()


def _wrk(script: Path, url: str, connections: int, seconds: int) -> dict[str, Any]:
    threads = 2 if connections > SATURATING else 1
    proc = subprocess.Popen(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", "20s",
         "-s", str(script), url], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={"PATH": "/usr/bin:/bin"})
    pin(proc.pid, LOAD_CPUS)
    out, err = proc.communicate(timeout=seconds + 60)
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed: {err.decode(errors='replace')[-2000:]}")
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    result["ok_per_s"] = result["ok"] / result["seconds"]
    return result


def _open_loop(url: str, rate: float, seconds: int) -> dict[str, Any]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "loadtest.open_loop", url, "--rate", f"{rate:.0f}",
         "--seconds", str(seconds), "--connections", str(CROWD)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    pin(proc.pid, LOAD_CPUS)
    out, err = proc.communicate(timeout=seconds + 60)
    if proc.returncode != 0:
        raise RuntimeError(f"open loop failed: {err.decode(errors='replace')[-2000:]}")
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    result["offered_per_s"] = rate
    return result


def _share_refused(result: dict[str, Any]) -> float:
    answered = result["ok"] + result["refused"]
    return float(result["refused"] / answered) if answered else 0.0


def measure(log_dir: Path, sources: dict[str, Path | None], seconds: int,
            rounds: int) -> list[dict[str, Any]]:
    script = log_dir / "admission.lua"
    script.write_text(_LUA)
    rows = []
    with ExitStack() as stack:
        sims = Upstreams(log_dir)
        stack.callback(sims.proc.stop)
        for round_no in range(1, rounds + 1):
            for variant, source in sources.items():
                with _gateway(log_dir, sims, source) as gw:
                    url = gw.url + PATH
                    _wrk(script, url, SATURATING, 2)  # warm up: pools, caches
                    results = {"saturated": _wrk(script, url, SATURATING, seconds)}
                    time.sleep(1)
                    results["crowd"] = _wrk(script, url, CROWD, seconds)
                    time.sleep(1)
                    rate = results["saturated"]["ok_per_s"] * OPEN_FACTOR
                    results["open"] = _open_loop(url, rate, seconds)
                for load, result in results.items():
                    rows.append({"round": round_no, "variant": variant, "load": load, **result})
                    print(f"round {round_no} {variant:6s} {load:9s} "
                          f"2xx/s {result['ok_per_s']:6.0f}  refused "
                          f"{_share_refused(result):6.1%}  2xx p50 {result['ok_p50_ms']:6.0f} "
                          f"p99 {result['ok_p99_ms']:6.0f} max {result['ok_max_ms']:6.0f} ms  "
                          f"errors {result['errors']}", flush=True)
    return rows


def summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Medians over rounds, and the crowd's goodput against the saturated rate."""
    out = []
    for variant in dict.fromkeys(r["variant"] for r in rows):
        mine = [r for r in rows if r["variant"] == variant]

        def median(load: str, key: str, of: list[dict[str, Any]] = mine) -> float:
            return statistics.median(r[key] for r in of if r["load"] == load)

        saturated = {r["round"]: r["ok_per_s"] for r in mine if r["load"] == "saturated"}
        ratios = [r["ok_per_s"] / saturated[r["round"]] for r in mine if r["load"] == "crowd"]
        out.append({
            "variant": variant,
            "saturated_2xx_per_s": round(median("saturated", "ok_per_s")),
            "crowd_2xx_per_s": round(median("crowd", "ok_per_s")),
            # The median of each round's ratio: rounds a minute apart differ by 20 %.
            "crowd_goodput_vs_saturated": round(statistics.median(ratios), 2),
            "crowd_2xx_p50_ms": round(median("crowd", "ok_p50_ms")),
            "crowd_2xx_p99_ms": round(median("crowd", "ok_p99_ms")),
            "crowd_2xx_max_ms": round(median("crowd", "ok_max_ms")),
            "open_offered_per_s": round(median("open", "offered_per_s")),
            "open_2xx_per_s": round(median("open", "ok_per_s")),
            "open_2xx_p50_ms": round(median("open", "ok_p50_ms")),
            "open_2xx_p99_ms": round(median("open", "ok_p99_ms")),
            "open_2xx_max_ms": round(median("open", "ok_max_ms")),
            "open_unanswered": round(median("open", "unanswered")),
            "open_unsent": round(median("open", "unsent")),
        })
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--before", default=BEFORE, help="git revision to compare against")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    log_dir = Path(tempfile.mkdtemp(prefix="admission-"))
    with checkout(args.before) as before:
        rows = measure(log_dir, {"before": before, "now": None}, args.seconds, args.rounds)
    result = summary(rows)
    (log_dir / "admission.json").write_text(json.dumps({"rows": rows, "summary": result}))
    print(json.dumps(result, indent=2))
    print(f"rows in {log_dir / 'admission.json'}")


if __name__ == "__main__":
    main()
