#!/usr/bin/env bash
# Set up a fresh machine (scripts/bootstrap.sh), check the code, and run the test suite.
# The checks come first and fail fast: ruff (the rule set in pyproject.toml) on the code,
# tests and benchmarks, and mypy --strict on the package.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
.venv/bin/ruff check inspector tests benchmarks
.venv/bin/mypy --strict inspector
exec .venv/bin/python -m pytest -q "$@"
