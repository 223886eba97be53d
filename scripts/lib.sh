# Shared by scripts/demo.sh and scripts/test.sh: find Python, make the venv, install.
# Sourced, not run.

find_python() {
  for candidate in python3.13 python3.12 python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      echo "$candidate"
      return 0
    fi
  done
  echo "order-gateway needs Python 3.11 or newer; none found on PATH" >&2
  return 1
}

# ensure_venv EXTRAS: create .venv if missing and install the package with EXTRAS.
ensure_venv() {
  local extras="$1"
  if [ ! -x .venv/bin/python ]; then
    "$(find_python)" -m venv .venv
  fi
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".${extras}"
}

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null 2>&1; then sudo "$@"; else
    echo "need root (or sudo) to run: $*" >&2; return 1; fi
}

# The tests start their own redis-server on free ports; install the binary if missing.
ensure_redis_server() {
  if command -v redis-server >/dev/null 2>&1; then return 0; fi
  echo "installing redis-server with the system package manager..." >&2
  if command -v apt-get >/dev/null 2>&1; then
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  elif command -v dnf >/dev/null 2>&1; then
    as_root dnf install -y -q redis
  elif command -v apk >/dev/null 2>&1; then
    as_root apk add --quiet redis
  elif command -v brew >/dev/null 2>&1; then
    brew install redis
  else
    echo "cannot install redis-server: no known package manager; install it and retry" >&2
    return 1
  fi
  command -v redis-server >/dev/null 2>&1
}
