"""The operator CLI starts fast: it imports the coordination library, not the service.

Every CLI run is a new process (tests/integration/test_cli.py runs dozens), so what it imports at
start is paid on every command. The job machinery (the auth tiers, the Replicate client, the
generation path: about half a second of imports) loads only when the `jobs` command runs.
"""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("service.jobs", "service.auth", "service.upstream", "service.generation", "fastapi")


def _imported_by(code: str) -> list[str]:
    probe = (
        f"{code}\nimport json, sys\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.startswith({HEAVY!r}))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    found: list[str] = json.loads(done.stdout.splitlines()[-1])
    return found


def test_the_cli_imports_no_job_machinery_until_the_jobs_command_runs() -> None:
    assert _imported_by("from service.cli.main import main, build_parser\nbuild_parser()") == []
    # The jobs command still finds it.
    assert "service.jobs.store" in _imported_by("import service.cli.jobs")
