"""The live status page: served, its JSON reflects Redis, and a real browser renders it.

The browser test serves the app with uvicorn on a free port and points headless Chromium at
it (a screenshot, checked for size and content, and the rendered DOM). It is skipped, loudly,
when no Chromium binary is installed (`apt-get install -y chromium`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from service.coordination import Coordinator
from tests.api.test_observability import (
    ADMIN,
    ADMIN_KEY,
    Running,
    mark_store_known,
    running,
    serve,
    settings_for,
)
from tests.fixtures.redis_server import RedisServer

pytestmark = pytest.mark.redis

CHROMIUM = next(
    (
        found
        for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
        if (found := shutil.which(name))
    ),
    None,
)
WIDTH, HEIGHT = 1200, 800


async def grant(
    client: httpx.AsyncClient, semaphore_id: str, holder: str, timeout_s: float = 0
) -> httpx.Response:
    return await client.post(
        f"/global-semaphores/{semaphore_id}/leases",
        json={"timeout_s": timeout_s, "holder": holder},
        headers=ADMIN,
    )


async def test_the_page_is_served_with_a_strict_policy(redis_url: str) -> None:
    async with running(settings_for(redis_url)) as obs:
        response = await obs.client.get("/dashboard")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    policy = response.headers["content-security-policy"]
    assert "default-src 'none'" in policy
    assert "connect-src 'self'" in policy
    assert response.headers["x-content-type-options"] == "nosniff"
    assert 'fetch("dashboard/data"' in response.text
    assert ADMIN_KEY not in response.text


async def test_the_data_reflects_holders_and_waiters(obs_app: Running) -> None:
    coordinator = obs_app.coordinator
    await coordinator.registry.create("gpu", 2)
    await coordinator.registry.create("idle", 5)
    remote = await grant(obs_app.client, "gpu", "render-service #3")
    assert remote.status_code == 201
    remote_id = remote.json()["lease_id"]
    local = await coordinator.acquire(
        "gpu", timeout_s=1, holder=coordinator.holder(purpose="generate flux-dev")
    )
    await local.set_prediction_id("pred-123")
    waiter = asyncio.create_task(coordinator.acquire("gpu", timeout_s=10))
    try:
        for _ in range(200):
            data = (await obs_app.client.get("/dashboard/data")).json()
            gpu = next(s for s in data["semaphores"] if s["semaphore_id"] == "gpu")
            if gpu["waiting"] == 1:
                break
            await asyncio.sleep(0.01)
        response = await obs_app.client.get("/dashboard/data")
    finally:
        waiter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiter
        await local.release()
    assert response.headers["cache-control"] == "no-store"
    data = response.json()
    assert data["redis"] == {"reachable": True}
    assert data["replica_id"] == "obs-a"
    assert data["truncated"] is False
    assert [s["semaphore_id"] for s in data["semaphores"]] == ["gpu", "idle"]
    gpu, idle = data["semaphores"]
    assert (gpu["limit"], gpu["in_use"], gpu["waiting"]) == (2, 2, 1)
    assert (idle["limit"], idle["in_use"], idle["waiting"], idle["holders"]) == (5, 0, 0, [])
    holders = {h["purpose"]: h for h in gpu["holders"]}
    assert set(holders) == {"render-service #3", "generate flux-dev"}
    assert holders["render-service #3"]["replica"] == "remote via obs-a"
    assert holders["render-service #3"]["lease"] == remote_id[:8]
    assert holders["generate flux-dev"]["replica"] == "obs-a"
    assert holders["generate flux-dev"]["prediction_id"] == "pred-123"
    assert all(0 < h["expires_in_s"] <= 3 for h in gpu["holders"])
    assert all(h["held_for_s"] is not None for h in gpu["holders"])
    (queued,) = gpu["waiters"]
    assert queued["position"] == 1
    assert queued["replica"] == "obs-a"
    assert gpu["oldest_waiter_s"] is not None
    # Lease ids are handles of the lease API: the page shows a prefix only.
    assert remote_id not in response.text
    assert local.lease_id not in response.text


async def test_the_data_says_when_redis_is_down(own_redis_server: RedisServer) -> None:
    mark_store_known(own_redis_server.url)
    async with running(settings_for(own_redis_server.url, redis_timeout_seconds=0.5)) as obs:
        own_redis_server.stop()
        try:
            response = await obs.client.get("/dashboard/data")
        finally:
            own_redis_server.start()
    assert response.status_code == 200
    assert response.json()["redis"] == {"reachable": False}
    assert response.json()["semaphores"] == []


@pytest.fixture
async def obs_app(redis_url: str) -> AsyncIterator[Running]:
    async with running(settings_for(redis_url)) as found:
        yield found


# -- a real browser ---------------------------------------------------------------------------


def chromium(url: str, profile: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            # Let the page's fetch and render finish before the capture (virtual time waits
            # for network requests in flight).
            "--virtual-time-budget=3000",
            *extra,
            url,
        ],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
        env={**os.environ, "HOME": str(profile)},
    )


@pytest.mark.slow
async def test_a_headless_browser_renders_the_dashboard(redis_url: str) -> None:
    if CHROMIUM is None:
        pytest.skip(
            "DASHBOARD BROWSER TEST SKIPPED: no chromium binary on PATH "
            "(apt-get install -y chromium)"
        )
    setup = await Coordinator.connect(redis_url, replica_id="api-2")
    with (
        serve(
            settings_for(
                redis_url, replica_id="api-1", lease_ttl_seconds=30.0, queue_timeout_seconds=60.0
            )
        ) as base_url,
        tempfile.TemporaryDirectory(prefix="rcg-chromium-") as tmp,
    ):
        profile = Path(tmp)
        local = None
        async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
            await setup.registry.create("image-generation-global", 4)
            await setup.registry.create("cross-service-limit", 2)
            await setup.registry.create("video-render", 1)
            for holder in ("batch-worker-1", "thumbnailer", "nightly-export"):
                assert (await grant(client, "image-generation-global", holder)).status_code == 201
            assert (
                await grant(client, "cross-service-limit", "billing-service")
            ).status_code == 201
            local = await setup.acquire(
                "cross-service-limit", timeout_s=1, holder=setup.holder(purpose="generate flux-dev")
            )
            waiter = asyncio.create_task(grant(client, "cross-service-limit", "search-indexer", 30))
            try:
                for _ in range(300):
                    if (await setup.registry.view("cross-service-limit")).waiting == 1:
                        break
                    await asyncio.sleep(0.01)

                shot = profile / "dashboard.png"
                result = await asyncio.to_thread(
                    chromium,
                    f"{base_url}/dashboard",
                    profile / "shot",
                    f"--screenshot={shot}",
                    f"--window-size={WIDTH},{HEIGHT}",
                )
                assert shot.exists(), result.stderr[-2000:]
                keep = os.environ.get("DASHBOARD_SCREENSHOT")
                if keep:
                    shutil.copy(shot, keep)
                with Image.open(shot) as image:
                    assert image.size == (WIDTH, HEIGHT)
                    colours = image.convert("RGB").getcolors(maxcolors=WIDTH * HEIGHT)
                assert colours is not None
                assert len(colours) > 50, "the screenshot is (nearly) blank"

                # The rendered DOM: the script ran, and a holder's text stays text.
                tricky = '<img src=x onerror="document.title=1">'
                assert (await grant(client, "video-render", tricky)).status_code == 201
                result = await asyncio.to_thread(
                    chromium, f"{base_url}/dashboard", profile / "dom", "--dump-dom"
                )
                dom = result.stdout
                assert "image-generation-global" in dom
                assert "3 / 4" in dom and "2 / 2" in dom and "1 / 1" in dom
                assert "batch-worker-1" in dom and "generate flux-dev" in dom
                assert "search-indexer" not in dom  # a waiter is shown by replica, not by text
                assert "Redis reachable" in dom
                assert "&lt;img src=x" in dom
                assert "<img src=" not in dom
            finally:
                waiter.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await waiter
                if local is not None:
                    await local.release()
    await setup.close()
