#!/usr/bin/env bash
# Set up (venv, package with test extras, redis-server, wrk, nginx, chromium, a CJK font,
# Prometheus and promtool), then
# lint, type-check (mypy strict over gateway/ and upstreams/), audit the dependencies and run
# the whole suite.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m "not slow"`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
ensure_venv "[test]"
ensure_redis_server
ensure_system_package wrk  # the benchmark's load generator, tested in tests/system/test_loadgen.py
ensure_system_package nginx  # the load balancer of the multi-replica tests (tests/system/test_replicas.py)
ensure_system_package chromium  # the console's browser tests (tests/system/test_console.py)
ensure_cjk_font  # ... and readable Chinese in their screenshots
# promtool (alert rules' unit tests) and Prometheus (the dashboard's queries), both from the
# distribution's prometheus package (tests/system/test_monitoring.py)
ensure_system_package promtool prometheus
.venv/bin/ruff check .
.venv/bin/mypy
# Known vulnerabilities in the pinned versions fail the run; a vulnerability service out of
# reach is reported, and fails it only with AUDIT_REQUIRED=1 (scripts/audit.py).
.venv/bin/python scripts/audit.py constraints.txt
exec .venv/bin/pytest "$@"
