#!/usr/bin/env bash
# Set up a fresh machine (scripts/bootstrap.sh) and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
exec .venv/bin/python -m pytest -q "$@"
