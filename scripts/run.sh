#!/usr/bin/env bash
# The one run command: install into .venv (from pyproject.toml) and start one replica.
# Without REPLICATE_API_TOKEN it runs the demo (a local Replicate simulator, announced by a banner);
# without REDIS_URL it uses an embedded in-process Redis (one replica only, announced loudly).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [[ ! -x .venv/bin/python ]]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/pip install --quiet --upgrade pip
.venv/bin/pip install --quiet -e .
exec .venv/bin/python -m service "$@"
