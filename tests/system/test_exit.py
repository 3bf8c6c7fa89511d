"""A replica leaves promptly once SIGTERM's drain is done: nothing waits for a timer (the drain's
DRAIN_SECONDS, a renewal period, a poll interval) when no request is left, and the interpreter's
teardown is skipped (service/__main__.py, exit_now). Real `python -m service` processes, in demo
mode (embedded Redis, in-process simulator), with every such timer set far above the bound."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

import httpx
import pytest

from service.__main__ import READY_PREFIX
from tests.fixtures.ports import free_port
from tests.fixtures.procs import LineProcess

pytestmark = [pytest.mark.system]

# Far below DRAIN_SECONDS and a lease renewal period (LEASE_TTL_SECONDS / 3), so that waiting
# for any of them fails; far above what a loaded CI host needs to exit (about 0.5 s here).
EXIT_BOUND_S = 6.0
ENV = {
    "DRAIN_SECONDS": "30",
    "LEASE_TTL_SECONDS": "60",
    "SIM_LATENCY_SECONDS": "1",
    "LOG_FORMAT": "text",
    "FLASK_HOST": "127.0.0.1",
}
UNSET = ("REDIS_URL", "REPLICATE_API_TOKEN", "CONCURRENT_DOCKER_ADMIN_API_KEY", "FLASK_PORT")


def start_replica() -> tuple[LineProcess, str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in UNSET}
    process = LineProcess(
        [sys.executable, "-m", "service"], env=env | ENV | {"FLASK_PORT": str(port)}
    )
    process.wait_for(READY_PREFIX, timeout=60)
    return process, f"http://127.0.0.1:{port}"


def exit_after_sigterm(process: LineProcess) -> float:
    started = time.monotonic()
    process.signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0, process.drain()[-30:]
    return time.monotonic() - started


def test_an_idle_replica_exits_promptly_after_sigterm() -> None:
    process, url = start_replica()
    try:
        generated = httpx.post(
            url + "/generate", json={"model_name": "flux-dev", "prompt": "x"}, timeout=60
        )
        assert generated.status_code == 200, generated.text
        took_s = exit_after_sigterm(process)
        print(f"idle replica: exited {took_s:.2f} s after SIGTERM")
        assert took_s < EXIT_BOUND_S, process.drain()[-30:]
    finally:
        process.stop()


def test_a_replica_exits_promptly_once_its_last_request_is_done() -> None:
    """SIGTERM during a generation: the generation still completes (the drain), and the
    replica exits right after it, not DRAIN_SECONDS later."""
    process, url = start_replica()
    answers: list[httpx.Response] = []
    finished = threading.Event()
    finished_at = 0.0

    def generate() -> None:
        nonlocal finished_at
        answers.append(
            httpx.post(
                url + "/generate", json={"model_name": "flux-dev", "prompt": "x"}, timeout=60
            )
        )
        finished_at = time.monotonic()
        finished.set()

    try:
        client = threading.Thread(target=generate)
        client.start()
        time.sleep(0.3)  # the prediction (1 s) is running
        process.signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, process.drain()[-30:]
        exited_at = time.monotonic()
        client.join(timeout=30)
        assert finished.is_set() and answers[0].status_code == 200, answers
        after_s = exited_at - finished_at
        print(f"draining replica: exited {after_s:.2f} s after its last answer")
        assert after_s < EXIT_BOUND_S, process.drain()[-30:]
    finally:
        process.stop()
