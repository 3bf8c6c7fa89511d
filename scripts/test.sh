#!/usr/bin/env bash
# The one test command: make a fresh virtual environment from pyproject.toml, install, run pytest.
# `--lint` also runs ruff and mypy --strict (CI does). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv-test}"
LINT=0
if [[ "${1:-}" == "--lint" ]]; then LINT=1; shift; fi
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install --quiet --upgrade pip
"$VENV/bin/pip" install --quiet -e ".[dev]"
if [[ $LINT == 1 ]]; then
  "$VENV/bin/ruff" check .
  "$VENV/bin/ruff" format --check .
  "$VENV/bin/mypy"
fi
exec "$VENV/bin/pytest" "$@"
