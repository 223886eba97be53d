"""Schemathesis against a live gateway, from its own /openapi.json.

Three passes per run, each a `schemathesis run` child process with every check
and every phase (examples, coverage, fuzzing, stateful):
1. the public API, simulators healthy: no 5xx but 504 (a client may ask for a
   deadline shorter than a backend takes, X-Request-Timeout-Ms);
2. the admin API, with the token (after the public pass: its fuzzed
   maintenance windows and forced breakers would otherwise answer the public
   pass with 503): no 5xx; its windows and forced breakers are cleared after it;
3. the public API with faults injected into every simulator (errors, resets,
   latency): 502, 503 and 504 allowed, as the designed, documented, problem+json
   answers they are; their status, content type and schema are still checked.

What no JSON Schema can express is stated in words in the document, and the
valid cases are made to obey it by `tests/fuzz_hooks.py` (one line of reason per
rule there). One operation is excluded: `GET /admin/events`, an event stream
that ends only when the process drains (tests/app/test_timeline.py tests it).
Unknown headers and query parameters are not generated as invalid data: the
gateway ignores them by design (browsers send many).

    python -m tests.fuzzing --profile long      # the documented longer run
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from loadtest.harness import BIN, Gateway, Upstreams

ROOT = Path(__file__).resolve().parent.parent

ADMIN_TOKEN = "fuzz-admin-token-0123456789abcdef"
GATEWAY_URL_ENV = "FUZZ_GATEWAY_URL"  # for the hooks that must act on the gateway itself
PUBLIC = r"^/(v1/|healthz|readyz|metrics|openapi)"
ADMIN = r"^/admin/"
FAULTS = {"error_rate": 0.15, "error_status": 503, "reset_rate": 0.05, "jitter_ms": 30}


@dataclass(frozen=True)
class Profile:
    max_examples: int
    seed: int | None
    timeout_s: float  # of one pass, a bound for a hung run


PROFILES = {
    "ci": Profile(max_examples=5, seed=20261122, timeout_s=300),
    "long": Profile(max_examples=200, seed=None, timeout_s=3600),
}


@dataclass(frozen=True)
class Pass:
    name: str
    paths: str
    allowed_5xx: tuple[str, ...]
    faults: bool = False
    # Designed 5xx answers of single operations, beyond `allowed_5xx`.
    also_allowed: tuple[tuple[str, str], ...] = ()


# A client deadline (X-Request-Timeout-Ms) shorter than the backend takes leaves a sent
# payment's outcome unknown: 502 PAYMENT_OUTCOME_UNKNOWN, by design, even when healthy.
_DEADLINE_CUT_PAYMENTS = (("POST /v1/payments", "502"),)

PASSES = (
    Pass("public, healthy", PUBLIC, ("504",), also_allowed=_DEADLINE_CUT_PAYMENTS),
    Pass("admin", ADMIN, ()),
    Pass("public, faults injected", PUBLIC, ("502", "503", "504"), faults=True),
)


def _statuses(*extra: str) -> str:
    return ", ".join(f'"{s}"' for s in ("2xx", "3xx", "4xx", *extra))


def _config(step: Pass) -> str:
    lines = [
        "[generation]",
        "allow-extra-parameters = false",
        'database = "none"',
        "[checks.not_a_server_error]",
        f"expected-statuses = [{_statuses(*step.allowed_5xx)}]",
    ]
    for operation, status in step.also_allowed:
        lines += ["[[operations]]", f'include-name = "{operation}"',
                  "[operations.checks.not_a_server_error]",
                  f"expected-statuses = [{_statuses(*step.allowed_5xx, status)}]"]
    return "\n".join(lines) + "\n"


@dataclass
class Outcome:
    name: str
    returncode: int
    output: str

    @property
    def summary(self) -> str:
        lines = self.output.strip().splitlines()
        return "\n".join(lines[-25:])


def run_pass(gw: Gateway, upstreams: Upstreams, step: Pass, profile: Profile,
             workdir: Path) -> Outcome:
    config = workdir / f"schemathesis-{step.name.split(',')[0]}-{len(step.allowed_5xx)}.toml"
    config.write_text(_config(step))
    argv = [str(BIN / "schemathesis"), "--config-file", str(config), "run",
            gw.url + "/openapi.json", "--checks", "all",
            "--phases", "examples,coverage,fuzzing,stateful",
            "--include-path-regex", step.paths,
            # An event stream never ends by itself: no request timeout can judge it.
            "--exclude-path-regex", "^/admin/events$",
            "-H", f"Authorization: Bearer {ADMIN_TOKEN}",
            "--max-examples", str(profile.max_examples), "--workers", "1",
            "--request-timeout", "5", "--no-color"]
    if profile.seed is not None:
        argv += ["--seed", str(profile.seed)]
    if step.faults:
        for backend in upstreams.urls:
            upstreams.set_faults(backend, **FAULTS)
    env = {**os.environ, "NO_COLOR": "1", "SCHEMATHESIS_HOOKS": "tests.fuzz_hooks",
           GATEWAY_URL_ENV: gw.url,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    try:
        done = subprocess.run(argv, cwd=workdir, capture_output=True, text=True,
                              timeout=profile.timeout_s, env=env)
    finally:
        if step.faults:
            upstreams.heal()
        if step.paths == ADMIN:
            _undo_admin_changes(gw)
    return Outcome(step.name, done.returncode, done.stdout + done.stderr)


def _undo_admin_changes(gw: Gateway) -> None:
    """End the fuzzed maintenance windows and fault rules, unforce the fuzzed breakers."""
    gw.admin("DELETE", "/admin/maintenance", ADMIN_TOKEN)
    gw.admin("DELETE", "/admin/faults", ADMIN_TOKEN)
    gw.reset_breakers(ADMIN_TOKEN)


def gateway_config() -> dict[str, object]:
    # Short backend timeouts so injected latency and hangs answer quickly.
    return {"stale_cache": {"max_entries": 0}, "admin": {"rate_per_s": 1000, "burst": 10_000}}


def run(profile: Profile, log_dir: Path, upstreams: Upstreams | None = None) -> list[Outcome]:
    own = upstreams is None
    sims = upstreams or Upstreams(log_dir)
    gw = Gateway(log_dir, sims.urls, config=gateway_config(),
                 env={"GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN})
    try:
        with tempfile.TemporaryDirectory(prefix="fuzz-") as tmp:
            return [run_pass(gw, sims, step, profile, Path(tmp)) for step in PASSES]
    finally:
        gw.stop()
        if own:
            sims.proc.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=sorted(PROFILES), default="long")
    args = parser.parse_args()
    log_dir = Path(tempfile.mkdtemp(prefix="fuzz-logs-"))
    outcomes = run(PROFILES[args.profile], log_dir)
    for outcome in outcomes:
        print(f"==== {outcome.name}: exit {outcome.returncode}\n{outcome.output}")
    print(f"logs: {log_dir}")
    return max(outcome.returncode for outcome in outcomes)


if __name__ == "__main__":
    sys.exit(main())
