#!/usr/bin/env bash
# Set up and run the whole test suite (unit and integration) plus the linter.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
exec .venv/bin/pytest -n 2 "$@"
