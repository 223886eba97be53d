#!/usr/bin/env bash
# Set up (venv with test and load extras, redis-server, wrk or nginx where needed) and
# run one load scenario, the floor benchmark, the profile or the multi-replica set-up:
#   bash scripts/load.sh peak | peak-with-outage | maintenance-during-peak [--profile ci]
#   bash scripts/load.sh flash-sale [--profile ci]
#   bash scripts/load.sh bench [--rounds 5 --seconds 5 --before REV]
#   bash scripts/load.sh admission [--rounds 3 --before REV]
#   bash scripts/load.sh profile [--route get|post|refuse|queued] [--bare]
#   bash scripts/load.sh replicas   # 3 replicas behind nginx, one Redis, until Ctrl-C
#   bash scripts/load.sh failover [--seconds 12 --kill-at 4]  # SIGKILL a Redis master under load
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
what="${1:?usage: bash scripts/load.sh SCENARIO|bench|profile [options]}"
shift
ensure_venv "[test,load]"
ensure_redis_server
export PATH="$PWD/.venv/bin:$PATH"
case "$what" in
  replicas)
    ensure_system_package nginx
    exec python -m loadtest.replicas "$@" ;;
  flash-sale)
    exec python -m loadtest.flash_sale "$@" ;;
  failover)
    exec python -m loadtest.failover "$@" ;;
  admission)
    # 3,000 connections need wrk; the "before" gateway is checked out with git.
    ensure_system_package wrk
    exec python -m loadtest.admission "$@" ;;
  bench|profile)
    # Without wrk the benchmark falls back to its own Python load generator.
    ensure_system_package wrk || echo "wrk unavailable: using the Python load generator" >&2
    exec python -m "loadtest.$what" "$@" ;;
  *)
    exec python -m loadtest.scenarios "$what" "$@" ;;
esac
