"""A plain (non-editable) install carries what the code loads at run time: the Lua scripts
(installed under <prefix>/share) and the dashboard page."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_wheel_carries_the_lua_scripts_and_the_dashboard(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    data = next(n.split("/")[0] for n in names if ".data/" in n)
    share = f"{data}/data/share/replicate-concurrent-generation/redis_scripts"
    expected_lua = {
        p.relative_to(ROOT / "redis_scripts").as_posix()
        for p in (ROOT / "redis_scripts").rglob("*.lua")
    }
    assert {f"{share}/{name}" for name in expected_lua} <= names
    assert "service/static/dashboard.html" in names


def test_scripts_are_found_under_the_install_prefix_when_not_beside_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from service.coordination import scripts

    installed = tmp_path / scripts.INSTALLED_SCRIPTS
    installed.mkdir(parents=True)
    monkeypatch.setattr(sys, "prefix", str(tmp_path))
    fake_module = tmp_path / "site" / "service" / "coordination" / "scripts.py"
    monkeypatch.setattr(scripts, "__file__", str(fake_module))
    assert scripts.find_scripts_dir() == installed
