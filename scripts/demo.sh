#!/usr/bin/env bash
# Set up (venv + package) and run the gateway in front of the three simulators.
# Usage: bash scripts/demo.sh [--port 8080]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
ensure_venv ""
exec .venv/bin/order-gateway demo "$@"
