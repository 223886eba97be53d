# Shared by scripts/demo.sh, scripts/test.sh and scripts/load.sh: find Python, make the venv, install.
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

# ensure_venv EXTRAS: create .venv if missing and install the package with EXTRAS, at the
# exact versions of constraints.txt (the tested set; pyproject.toml holds the ranges).
ensure_venv() {
  local extras="$1"
  if [ ! -x .venv/bin/python ]; then
    "$(find_python)" -m venv .venv
  fi
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt pip
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt \
    -e ".${extras}"
}

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null 2>&1; then sudo "$@"; else
    echo "need root (or sudo) to run: $*" >&2; return 1; fi
}

# ensure_system_package COMMAND [PACKAGE]: install PACKAGE (default COMMAND) with the
# system package manager when COMMAND is not on PATH.
ensure_system_package() {
  local command="$1" package="${2:-$1}"
  if command -v "$command" >/dev/null 2>&1; then return 0; fi
  echo "installing $package with the system package manager..." >&2
  if command -v apt-get >/dev/null 2>&1; then
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$package" >/dev/null
  elif command -v dnf >/dev/null 2>&1; then
    as_root dnf install -y -q "$package"
  elif command -v apk >/dev/null 2>&1; then
    as_root apk add --quiet "$package"
  elif command -v brew >/dev/null 2>&1; then
    brew install "$package"
  else
    echo "cannot install $package: no known package manager; install it and retry" >&2
    return 1
  fi
  command -v "$command" >/dev/null 2>&1
}

# A Chinese font for the browser, so the console's screenshots (artifacts/console/) show its
# Chinese text rather than empty boxes; the tests read the text, not the pixels.
ensure_cjk_font() {
  if command -v fc-list >/dev/null 2>&1 && [ -n "$(fc-list :lang=zh 2>/dev/null)" ]; then
    return 0
  fi
  echo "installing a Chinese font with the system package manager..." >&2
  if command -v apt-get >/dev/null 2>&1; then
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fonts-wqy-microhei \
      >/dev/null || echo "no Chinese font: screenshots will show boxes" >&2
  else
    echo "install a Chinese (CJK) font for readable screenshots" >&2
  fi
}

# The tests start their own redis-server on free ports; install the binary if missing.
ensure_redis_server() {
  if command -v redis-server >/dev/null 2>&1; then return 0; fi
  if command -v apt-get >/dev/null 2>&1; then
    ensure_system_package redis-server redis-server
  else
    ensure_system_package redis-server redis
  fi
}
