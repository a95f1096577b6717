#!/usr/bin/env bash
# Set up, start the VirusTotal emulator and materialize the last Livehunt windows.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/vt-pipeline demo "$@"
