"""A caller that hangs up gets its prediction cancelled and its slots released; a shutdown
cancels what is still running and releases every lease. Real uvicorn server, real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import uvicorn

from service.app import create_app
from service.config import Settings
from service.coordination import Coordinator, CoordinatorConfig
from service.fingerprint import ACCOUNT, token_fingerprint
from tests.api.conftest import ADMIN, SERVER_TOKEN, flux, mark_store_known, settings_for
from tests.fixtures.ports import free_port
from tests.fixtures.simulator import SimulatorHandle

pytestmark = [pytest.mark.redis, pytest.mark.simulator(latency_s=8.0)]


@contextlib.asynccontextmanager
async def served(settings: Settings) -> AsyncIterator[tuple[str, uvicorn.Server]]:
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings),
            host="127.0.0.1",
            port=port,
            lifespan="on",
            log_config=None,
            ws="none",
            timeout_graceful_shutdown=1,
        )
    )
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    task = asyncio.create_task(server.serve())
    deadline = time.monotonic() + 15
    while not server.started:
        assert not task.done(), "server failed to start"
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", server
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)


async def wait_until(check: Any, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if await check():
            return
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


@pytest.fixture
def settings(redis_url: str, simulator: SimulatorHandle) -> Settings:
    mark_store_known(redis_url)
    return settings_for(redis_url, simulator.base_url)


@pytest.mark.parametrize("client_timeout_s", [0.5, 2.0])  # during the create hold; while polling
async def test_client_disconnect_cancels_the_prediction_and_frees_the_slots(
    settings: Settings,
    simulator: SimulatorHandle,
    client_timeout_s: float,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="service.api")
    async with (
        served(settings) as (base_url, _),
        httpx.AsyncClient(base_url=base_url, timeout=10) as client,
    ):
        created = await client.post(
            "/global-semaphores", json={"semaphore_id": "disc", "limit": 1}, headers=ADMIN
        )
        assert created.status_code == 201
        with pytest.raises(httpx.TimeoutException):
            await client.post(
                "/generate",
                json=flux(external_semaphore_id="disc"),
                headers=ADMIN,
                timeout=client_timeout_s,
            )
        hung_up = time.monotonic()

        async def canceled_and_free() -> bool:
            stats = await simulator.atoken_stats(SERVER_TOKEN)
            detail = (await client.get("/global-semaphores/disc")).json()
            return bool(stats["by_status"]["canceled"] == 1 and detail["in_use"] == 0)

        await wait_until(canceled_and_free, timeout_s=5.0)
        assert time.monotonic() - hung_up < 5.0
        stats = await simulator.atoken_stats(SERVER_TOKEN)
        assert stats["created"] == 1 and stats["in_flight"] == 0
        assert any("client disconnected" in r.getMessage() for r in caplog.records)

        # The account slot is free too: a new request gets through at once.
        simulator.configure(latency_s=0.1)
        response = await client.post("/generate", json=flux(), headers=ADMIN)
        assert response.status_code == 200


async def test_shutdown_cancels_running_generations_and_releases_leases(
    settings: Settings, simulator: SimulatorHandle, redis_url: str
) -> None:
    async with (
        served(settings) as (base_url, server),
        httpx.AsyncClient(base_url=base_url, timeout=30) as client,
    ):
        await client.post(
            "/global-semaphores", json={"semaphore_id": "drain", "limit": 2}, headers=ADMIN
        )
        pending = asyncio.create_task(
            client.post("/generate", json=flux(external_semaphore_id="drain"), headers=ADMIN)
        )

        async def created() -> bool:
            stats = await simulator.atoken_stats(SERVER_TOKEN)
            return bool(stats["created"] == 1)

        await wait_until(created)
        server.should_exit = True  # what SIGTERM does
        with contextlib.suppress(httpx.HTTPError):
            await pending

    stats = await simulator.atoken_stats(SERVER_TOKEN)
    assert stats["by_status"]["canceled"] == 1 and stats["in_flight"] == 0
    coordinator = Coordinator(CoordinatorConfig(redis_url=redis_url))
    try:
        assert (await coordinator.registry.view("drain")).in_use == 0
        account = await coordinator.registry.view(token_fingerprint(SERVER_TOKEN), kind=ACCOUNT)
        assert account.in_use == 0
    finally:
        await coordinator.close()
