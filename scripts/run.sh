#!/usr/bin/env bash
# The one run command: install into .venv (from pyproject.toml) and start one replica.
# Without REPLICATE_API_TOKEN it runs the demo (a local Replicate simulator, announced by a banner);
# without REDIS_URL it uses an embedded in-process Redis (one replica only, announced loudly).
# The install runs again only when pyproject.toml changed (a stamp file in .venv holds the sha256
# of the pyproject.toml it was installed from; the package itself is installed editable).
# Arguments go to `python -m service`: `--help` prints every setting and exits, serving nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
STAMP="$VENV/.run-pyproject.sha256"
WANT="$("$PYTHON" -c 'import hashlib; print(hashlib.sha256(open("pyproject.toml", "rb").read()).hexdigest())')"
if [[ ! -x "$VENV/bin/python" || "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]]; then
  echo "run.sh: installing into $VENV (first run, or pyproject.toml changed)..." >&2
  [[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --upgrade pip
  "$VENV/bin/pip" install --quiet -e .
  echo "$WANT" > "$STAMP"
fi
exec "$VENV/bin/python" -m service "$@"
