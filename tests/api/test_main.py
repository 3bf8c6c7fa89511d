"""`python -m service` as a real process: the demo mode (embedded Redis, in-process simulator)
answers /health and the banner's own curl payloads; a bad setting exits 2 with no traceback."""

from __future__ import annotations

import json
import os
import queue
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import httpx
import pytest

from service.__main__ import READY_PREFIX
from tests.fixtures.ports import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
SERVICE_VARIABLES = (
    "REDIS_URL",
    "REPLICATE_API_TOKEN",
    "CONCURRENT_DOCKER_ADMIN_API_KEY",
    "ALLOW_ENV_FALLBACK",
    "REPLICATE_BASE_URL",
    "GLOBAL_SEMAPHORES",
    "FLASK_HOST",
    "FLASK_PORT",
    "SIM_TOKENS",
)


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SERVICE_VARIABLES}
    env.update(extra)
    return env


def _pump(stream: IO[str], lines: queue.Queue[str | None]) -> None:
    for line in stream:
        lines.put(line.rstrip("\n"))
    lines.put(None)


def read_until_ready(
    process: subprocess.Popen[str], timeout_s: float = 30.0
) -> tuple[str, list[str]]:
    assert process.stdout is not None
    lines: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=_pump, args=(process.stdout, lines), daemon=True).start()
    seen: list[str] = []
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            raise AssertionError(f"not ready in {timeout_s}s; stdout so far: {seen}") from None
        if line is None:
            raise AssertionError(f"exited before ready (code {process.poll()}): {seen}")
        seen.append(line)
        if line.startswith(READY_PREFIX):
            return line[len(READY_PREFIX) :], seen


@pytest.fixture
def demo_process() -> Iterator[tuple[subprocess.Popen[str], int]]:
    port = free_port()
    env = clean_env(
        FLASK_HOST="127.0.0.1",
        FLASK_PORT=str(port),
        SIM_LATENCY_SECONDS="0.2",
        LOG_FORMAT="text",
        DRAIN_SECONDS="2",
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "service"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield process, port
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def curl_payload(lines: list[str], path: str) -> tuple[str, dict[str, object]]:
    for line in lines:
        if line.startswith("curl ") and " -X POST " in line:
            argv = shlex.split(line)
            url = argv[argv.index("-X") + 2]
            if url.endswith(path):
                return url, json.loads(argv[argv.index("-d") + 1])
    raise AssertionError(f"no curl line for {path} in {lines}")


@pytest.mark.system
def test_demo_mode_serves_health_and_the_printed_curl(
    demo_process: tuple[subprocess.Popen[str], int],
) -> None:
    process, port = demo_process
    url, stdout = read_until_ready(process)
    assert url == f"http://127.0.0.1:{port}"
    banner = "\n".join(stdout)
    assert "DEMO MODE" in banner and "SIMULATOR" in banner
    assert "NO real images" in banner
    assert "ENVIRONMENT FALLBACK" in banner

    health = httpx.get(f"{url}/health", timeout=10)
    assert health.status_code == 200
    assert health.json()["status"] == "healthy"
    assert health.json()["redis"] == {"reachable": True}

    generate_url, payload = curl_payload(stdout, "/generate")
    assert generate_url == f"{url}/generate"
    response = httpx.post(generate_url, json=payload, timeout=30)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["success"] is True and body["count"] == 1
    assert httpx.get(body["generated_files"][0]["url"], timeout=10).status_code == 200

    batch_url, batch = curl_payload(stdout, "/generate-batch")
    response = httpx.post(batch_url, json=batch, timeout=30)
    assert response.status_code == 200, response.text
    assert response.json()["success"] is True

    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=20) == 0
    assert process.stderr is not None
    stderr = process.stderr.read()
    assert "EMBEDDED in-process Redis" in stderr
    assert "one replica" in stderr.lower() or "ONE replica" in stderr
    assert "Traceback" not in stderr


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("FLASK_PORT", "not-a-port"),
        ("REPLICATE_CONCURRENT_LIMIT", "0"),
        ("LOG_LEVEL", "LOUD"),
        ("REPLICATE_BASE_URL", "ftp://x"),
        ("GLOBAL_SEMAPHORES", "bad id=3"),
    ],
)
def test_bad_setting_exits_2_naming_the_variable(variable: str, value: str) -> None:
    secret = "r8_must_not_be_printed_0451"
    result = subprocess.run(
        [sys.executable, "-m", "service"],
        cwd=REPO_ROOT,
        env=clean_env(**{variable: value, "REPLICATE_API_TOKEN": secret}),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert variable in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert secret not in result.stderr + result.stdout
    assert re.search(r"Invalid configuration", result.stderr)


def test_help_prints_the_settings_and_exits_without_serving() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "service", "--help"],
        cwd=REPO_ROOT,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert "REDIS_URL" in done.stdout and "TOKEN_SEALING_KEY" in done.stdout
    assert READY_PREFIX not in done.stdout
    wrong = subprocess.run(
        [sys.executable, "-m", "service", "--port", "1"],
        cwd=REPO_ROOT,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert wrong.returncode == 2 and "--help" in wrong.stdout
