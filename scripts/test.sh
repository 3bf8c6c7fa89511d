#!/usr/bin/env bash
# The one test command: a virtual environment from pyproject.toml, install, run pytest.
# CI (CI=true) always builds a fresh one; locally it is reused while pyproject.toml is unchanged
# (a stamp file holds the sha256 of the pyproject.toml it was built from).
# `--lint` also runs ruff and mypy --strict (CI does). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv-test}"
LINT=0
if [[ "${1:-}" == "--lint" ]]; then LINT=1; shift; fi
STAMP="$VENV/.pyproject.sha256"
WANT="$("$PYTHON" -c 'import hashlib; print(hashlib.sha256(open("pyproject.toml", "rb").read()).hexdigest())')"
if [[ "${CI:-}" == "true" || ! -x "$VENV/bin/pytest" || "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]]; then
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --upgrade pip
  "$VENV/bin/pip" install --quiet -e ".[dev]"
  echo "$WANT" > "$STAMP"
fi
if [[ $LINT == 1 ]]; then
  "$VENV/bin/ruff" check .
  "$VENV/bin/ruff" format --check .
  "$VENV/bin/mypy"
fi
# Six workers (the suite mostly waits on real processes and TTLs: 2 cores are enough), one test
# file each at a time (module fixtures stay shared), the files with the most slow tests first
# (tests/conftest.py); PYTEST_WORKERS=0 runs everything in this process.
exec "$VENV/bin/pytest" -n "${PYTEST_WORKERS:-6}" --dist loadfile --no-loadscope-reorder "$@"
