#!/usr/bin/env bash
# Create .venv (Python >= 3.11), install vt_pipeline with its dev tools at the exact versions of
# requirements-dev.lock (the tested ones; scripts/lock.sh regenerates it), and make sure the
# Debian packages rabbitmq-server and postgresql are there (the tests and the demo start their
# own broker and database), and chromium with chromium-driver (the UI walk test's browser).
# Idempotent: a second run installs nothing new.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"

missing=()
if [ ! -x /usr/lib/rabbitmq/bin/rabbitmq-server ] && ! command -v rabbitmq-server >/dev/null 2>&1; then
  missing+=(rabbitmq-server)
fi
if ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null && ! command -v initdb >/dev/null 2>&1; then
  missing+=(postgresql)
fi
# The UI walk test (vt_pipeline_tests/test_ui_walk.py) drives Debian's headless Chromium.
if ! command -v chromium >/dev/null 2>&1; then
  missing+=(chromium)
fi
if ! command -v chromedriver >/dev/null 2>&1; then
  missing+=(chromium-driver)
fi
if [ "${#missing[@]}" -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "Installing ${missing[*]} (Debian packages)..."
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# The lock file pins every package; the project itself goes on top without resolving anything.
.venv/bin/python -m pip install --quiet -r requirements-dev.lock
.venv/bin/python -m pip install --quiet --no-deps -e .
.venv/bin/python -m pip check >/dev/null
