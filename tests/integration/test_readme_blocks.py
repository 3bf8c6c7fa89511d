"""Every shell and Python block of README.md runs as written against the demo of ./scripts/run.sh.

The demo is started the way run.sh starts it (`python -m service` with no REPLICATE_API_TOKEN, no
REDIS_URL, no CONCURRENT_DOCKER_ADMIN_API_KEY and no GLOBAL_SEMAPHORES), on a free loopback port
instead of 5003. What a newcomer pastes from its banner (`export ADMIN_KEY=...`, `export
RCG_REDIS_URL=...`) is run before each block, which otherwise runs exactly as written, in a
fresh `bash -euo pipefail` (each block stands alone) or a fresh Python process; only
`localhost:5003` is pointed at the demo's port. curl must get a 2xx: any error answer fails the
block (curl runs with --fail-with-body, so the answer shows in the failure).

A block that cannot run here says so on the line before its fence, with a name this test knows:

    <!-- readme-test: skip runs-the-service -->

An unknown name fails, so that skipping stays rare and deliberate.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from service.__main__ import READY_PREFIX
from service.demo import DEFAULT_LATENCY_S
from tests.fixtures.ports import free_port
from tests.fixtures.procs import LineProcess

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"

# Why a block may be left out, by name (the README's marker names one of these).
SKIPPABLE = {
    "runs-the-service": "starts the service itself (this test runs the same demo)",
    "runs-the-test-suite": "runs this test suite",
    "needs-docker": "needs a Docker engine",
}
LANGUAGES = {"bash": "shell", "sh": "shell", "shell": "shell", "python": "python"}
SKIP_MARKER = re.compile(r"<!--\s*readme-test:\s*skip\s+([\w-]+)\s*-->")
# Everything run.sh's demo must not inherit from the shell running the tests.
SERVICE_VARIABLES = (
    "REDIS_URL",
    "REPLICATE_API_TOKEN",
    "CONCURRENT_DOCKER_ADMIN_API_KEY",
    "GLOBAL_SEMAPHORES",
    "ALLOW_ENV_FALLBACK",
    "REPLICATE_BASE_URL",
    "REDIS_KEY_PREFIX",
    "SIM_TOKENS",
    "FLASK_HOST",
    "FLASK_PORT",
    "ADMIN_KEY",
    "RCG_REDIS_URL",
)
BLOCK_TIMEOUT_S = 90

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@dataclass(frozen=True)
class Block:
    language: str  # "shell" or "python"
    code: str
    line: int  # of the opening fence, 1-based
    heading: str
    skip: str | None

    @property
    def id(self) -> str:
        slug = re.sub(r"[^a-z0-9]+", "-", self.heading.lower()).strip("-")[:40]
        return f"L{self.line}-{self.language}-{slug}"


def readme_blocks(text: str) -> list[Block]:
    """The README's fenced shell and Python blocks, in order, with their skip marker if any."""
    blocks: list[Block] = []
    lines = text.splitlines()
    heading = "top"
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
        fence = re.fullmatch(r"( *)```(\w*)\s*", line)  # indented inside a list item too
        if fence is None:
            i += 1
            continue
        indent = len(fence.group(1))
        end = next(j for j in range(i + 1, len(lines)) if lines[j].strip().startswith("```"))
        language = LANGUAGES.get(fence.group(2))
        if language is not None:
            marker = SKIP_MARKER.search(lines[i - 1]) if i > 0 else None
            blocks.append(
                Block(
                    language=language,
                    code="\n".join(line[indent:] for line in lines[i + 1 : end]) + "\n",
                    line=i + 1,
                    heading=heading,
                    skip=marker.group(1) if marker else None,
                )
            )
        i = end + 1
    return blocks


BLOCKS = readme_blocks(README.read_text(encoding="utf-8"))


@dataclass(frozen=True)
class Demo:
    port: int
    exports: dict[str, str]  # what the banner says to paste
    process: LineProcess


def _require_curl() -> None:
    if shutil.which("curl") is None:
        message = "curl is not on the PATH: the README's shell blocks cannot run"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def demo() -> Iterator[Demo]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in SERVICE_VARIABLES}
    # run.sh's demo, on a free loopback port, with its own 2 s predictions: the README's blocks
    # run as a reader's would (with 0.5 s, "cancel another job while it runs" lost the race
    # to the job's end on a loaded CI machine: 409).
    env |= {
        "FLASK_HOST": "127.0.0.1",
        "FLASK_PORT": str(port),
        "SIM_LATENCY_SECONDS": str(DEFAULT_LATENCY_S),
    }
    process = LineProcess([sys.executable, "-m", "service"], env=env)
    try:
        process.wait_for(READY_PREFIX, timeout=60)
        exports = {}
        for line in process.history:
            found = re.fullmatch(r"export ([A-Z_]+)=(\S+)", line)
            if found:
                exports[found.group(1)] = found.group(2)
        yield Demo(port, exports, process)
    finally:
        process.stop()


def test_the_banner_prints_what_the_readme_needs(demo: Demo) -> None:
    """The demo makes an admin key and prints it, with the embedded Redis for the Python
    example; the README's examples use exactly these names."""
    assert set(demo.exports) == {"ADMIN_KEY", "RCG_REDIS_URL"}, demo.process.history
    assert demo.exports["ADMIN_KEY"].startswith("demo-")
    text = README.read_text(encoding="utf-8")
    assert "$ADMIN_KEY" in text and "RCG_REDIS_URL" in text


def test_skipping_stays_rare() -> None:
    assert BLOCKS, "no shell or Python block found in README.md"
    skipped = [b for b in BLOCKS if b.skip is not None]
    unknown = [(b.id, b.skip) for b in skipped if b.skip not in SKIPPABLE]
    assert not unknown, f"unknown skip names (known: {sorted(SKIPPABLE)}): {unknown}"
    assert len(skipped) <= 4, [b.id for b in skipped]
    assert len(BLOCKS) - len(skipped) >= 5


def _point_at(code: str, port: int) -> str:
    return code.replace("localhost:5003", f"127.0.0.1:{port}")


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_readme_block_runs_as_written(block: Block, demo: Demo, tmp_path: Path) -> None:
    if block.skip is not None:
        pytest.skip(f"README.md marks it `{block.skip}`: {SKIPPABLE.get(block.skip, '?')}")
    env = {k: v for k, v in os.environ.items() if k not in SERVICE_VARIABLES} | demo.exports
    code = _point_at(block.code, demo.port)
    if block.language == "shell":
        _require_curl()
        prelude = (
            "set -euo pipefail\n"
            # An error answer fails the block, and its body shows in the failure.
            'curl() { command curl --fail-with-body --max-time 60 "$@"; }\n'
        )
        argv = ["bash", "-c", prelude + code]
    else:
        script = tmp_path / "block.py"
        script.write_text(code, encoding="utf-8")
        argv = [sys.executable, str(script)]
    done = subprocess.run(
        argv,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=BLOCK_TIMEOUT_S,
    )
    assert done.returncode == 0, (
        f"README.md line {block.line} ({block.heading}) exited {done.returncode}\n"
        f"--- stdout\n{done.stdout[-4000:]}\n--- stderr\n{done.stderr[-4000:]}"
    )
