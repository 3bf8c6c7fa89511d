"""Small things a newcomer meets first: the demo banner's paste-ready lines, settings errors,
the CLI's window line, API timestamps, and the two scripts' reuse of their environments."""

from __future__ import annotations

import hashlib
import os
import re
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from service.__main__ import READY_PREFIX, describe_settings_error
from service.api.semaphores import iso_utc
from service.cli.readers import WindowReport
from service.cli.render import window_line
from service.config import Settings
from service.demo import DEMO_SEMAPHORES, banner, exports

ROOT = Path(__file__).resolve().parents[2]
SERVICE_VARIABLES = ("REDIS_URL", "REPLICATE_API_TOKEN", "CONCURRENT_DOCKER_ADMIN_API_KEY", "CI")


def settings_error(**values: str) -> str:
    with pytest.raises(ValidationError) as caught:
        Settings(**values)  # type: ignore[arg-type]
    return describe_settings_error(caught.value)


def test_a_bad_global_semaphores_names_its_value_once() -> None:
    message = settings_error(global_semaphores="foo")
    assert "GLOBAL_SEMAPHORES: expected id=limit with a valid id, got 'foo'" in message
    assert message.count("'foo'") == 1, message
    assert "Value error" not in message
    # A bad part of a longer value: the part, then where it is.
    assert "got 'foo' (in 'a=1,foo')" in settings_error(global_semaphores="a=1,foo")
    # A pydantic message that does not quote the value still gets it.
    assert "(got 'abc')" in settings_error(flask_port="abc")


def window(oldest_age_s: float | None, admissions: int) -> WindowReport:
    return WindowReport(
        scope="acct:abc",
        key="rcg:{acct:abc}:window",
        window_s=61.0,
        limit=600,
        admissions=admissions,
        remaining=600 - admissions,
        oldest_age_s=oldest_age_s,
        next_free_in_s=0.0,
    )


def test_an_empty_window_has_no_oldest_entry() -> None:
    line = window_line("creations", window(None, 0))
    assert line == "creations: 0 in the last 61s, limit 600; 600 free now"
    assert "oldest 3.2s ago" in window_line("creations", window(3.2, 4))


def test_waiting_since_is_iso_8601_utc() -> None:
    assert iso_utc(1_800_000_000.1234) == "2027-01-15T08:00:00.123Z"
    assert iso_utc(None) is None
    assert iso_utc("yesterday") is None
    assert iso_utc(True) is None
    assert iso_utc(1e300) is None


def test_the_demo_banner_prints_the_lines_the_readme_needs() -> None:
    text = banner(
        "http://127.0.0.1:1",
        "http://127.0.0.1:5003",
        2.0,
        admin_key="demo-abc",
        semaphores=DEMO_SEMAPHORES,
        embedded_redis_url="redis://127.0.0.1:7/0",
    )
    lines = text.splitlines()
    assert "export ADMIN_KEY=demo-abc" in lines
    assert "export RCG_REDIS_URL=redis://127.0.0.1:7/0" in lines
    assert "image-generation-global" in text
    # An operator's own key is never printed: the line takes it from their shell.
    assert exports(None, None) == ['export ADMIN_KEY="$CONCURRENT_DOCKER_ADMIN_API_KEY"']


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SERVICE_VARIABLES}
    return env | extra


def test_help_binds_nothing() -> None:
    """`python -m service --help` exits 0 even when its port is taken: it never binds."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "service", "--help"],
            cwd=ROOT,
            env=_clean_env(FLASK_HOST="127.0.0.1", FLASK_PORT=str(port)),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 0, done.stderr
    assert "GLOBAL_SEMAPHORES" in done.stdout and READY_PREFIX not in done.stdout


def _shim(path: Path, body: str) -> None:
    path.write_text("#!/usr/bin/env bash\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def _pyproject_sha() -> str:
    return hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()


def test_run_sh_installs_once_then_reuses_its_venv(tmp_path: Path) -> None:
    """A venv whose pip only records its calls: the first run installs and stamps, the next
    one (pyproject.toml unchanged) goes straight to `python -m service`; `--help` serves
    nothing."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    calls = tmp_path / "pip-calls"
    _shim(venv / "bin" / "python", f'exec {sys.executable} "$@"')
    _shim(venv / "bin" / "pip", f'echo "$*" >> {calls}')
    env = _clean_env(VENV=str(venv), PYTHON=sys.executable)

    def run_help() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(ROOT / "scripts" / "run.sh"), "--help"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    first = run_help()
    assert first.returncode == 0, first.stderr
    assert "install --quiet -e ." in calls.read_text()
    assert (venv / ".run-pyproject.sha256").read_text().strip() == _pyproject_sha()
    assert "REPLICATE_API_TOKEN" in first.stdout and READY_PREFIX not in first.stdout

    calls.unlink()
    second = run_help()
    assert second.returncode == 0, second.stderr
    assert not calls.exists(), "run.sh installed again although pyproject.toml is unchanged"
    assert "installing" not in second.stderr
    assert second.stdout == first.stdout


def test_test_sh_reuses_its_venv_while_pyproject_is_unchanged(tmp_path: Path) -> None:
    venv = tmp_path / "venv-test"
    (venv / "bin").mkdir(parents=True)
    keep = venv / "still-here"
    keep.touch()
    _shim(venv / "bin" / "pytest", 'echo "PYTEST $*"')
    _shim(venv / "bin" / "pip", "echo pip must not run >&2; exit 1")
    (venv / ".pyproject.sha256").write_text(_pyproject_sha() + "\n")
    done = subprocess.run(
        [str(ROOT / "scripts" / "test.sh"), "-m", "not slow", "-q"],
        env=_clean_env(VENV=str(venv), PYTHON=sys.executable),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert keep.exists(), "test.sh rebuilt its venv although pyproject.toml is unchanged"
    assert re.search(r"^PYTEST .*-m not slow -q$", done.stdout, flags=re.M), done.stdout
