#!/usr/bin/env bash
# Set up a fresh machine (scripts/bootstrap.sh), check the code, and run the test suite.
# The checks come first and fail fast: ruff (the rule set in pyproject.toml) on the code,
# tests and benchmarks, mypy --strict on the package, and no import cycle inside it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
.venv/bin/ruff check inspector tests benchmarks
.venv/bin/mypy --strict inspector
.venv/bin/python scripts/import_cycles.py inspector
exec .venv/bin/python -m pytest -q "$@"
