"""`python -m service.simulator` as a real process, through the official client."""

from __future__ import annotations

import selectors
import signal
import subprocess
import time

import httpx
import pytest
from replicate.client import Client

from service.simulator.__main__ import READY_PREFIX
from tests.fixtures.ports import free_port
from tests.fixtures.simulator import (
    SimulatorHandle,
    spawn_simulator_process,
    stop_simulator_process,
    wait_for_simulator,
)


def read_line(process: subprocess.Popen[bytes], timeout_s: float) -> str:
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout_s):
            raise TimeoutError("no output from the simulator")
    return process.stdout.readline().decode().strip()


async def test_module_runs_prints_ready_and_answers() -> None:
    port = free_port()
    process = spawn_simulator_process(
        port, stdout=subprocess.PIPE, latency=0.1, jitter=0, tokens=["r8_a", "r8_b"]
    )
    try:
        assert read_line(process, timeout_s=20) == f"{READY_PREFIX}http://127.0.0.1:{port}"
        wait_for_simulator(f"http://127.0.0.1:{port}", process=process)

        client = Client(api_token="r8_a", base_url=f"http://127.0.0.1:{port}")
        client.poll_interval = 0.05
        try:
            output = await client.async_run(
                "black-forest-labs/flux-dev", input={"prompt": "from a subprocess"}
            )
        finally:
            await client._async_client.aclose()

        assert isinstance(output, list) and output[0].startswith(f"http://127.0.0.1:{port}/")
    finally:
        began = time.monotonic()
        stop_simulator_process(process)
        assert time.monotonic() - began < 10
        if process.stdout is not None:
            process.stdout.close()
    # uvicorn shuts down gracefully, then re-raises the captured SIGTERM.
    assert process.returncode in (0, -signal.SIGTERM)


def test_wait_for_simulator_reports_an_early_exit() -> None:
    port = free_port()
    process = spawn_simulator_process(port, latency=-1, stderr=subprocess.DEVNULL)
    try:
        try:
            wait_for_simulator(f"http://127.0.0.1:{port}", process=process, timeout_s=20)
        except RuntimeError as exc:
            assert "exited early" in str(exc)
        else:
            raise AssertionError("a simulator with a negative latency should not start")
    finally:
        stop_simulator_process(process)


@pytest.mark.simulator(create_limit=1, tokens=frozenset({"r8_only"}))
def test_simulator_process_fixture_passes_the_config(simulator_process: SimulatorHandle) -> None:
    headers = {"Authorization": "Bearer r8_only"}
    url = f"{simulator_process.base_url}/v1/models/qwen/qwen-image/predictions"
    body = {"input": {"prompt": "x"}}

    assert httpx.post(url, json=body, headers=headers).status_code == 201
    assert httpx.post(url, json=body, headers=headers).status_code == 429
    assert httpx.post(url, json=body, headers={"Authorization": "Bearer r8_b"}).status_code == 401
    assert simulator_process.token_stats("r8_only")["created"] == 1
