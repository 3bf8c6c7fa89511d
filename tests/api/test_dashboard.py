"""The live status page: served with its own files, its JSON reflects Redis (accounts,
semaphores, the shared 15-minute history), and a real browser renders it after real traffic.

The browser test serves the whole app (service.app.create_app) with uvicorn on a free port,
sends generations through it to the simulator, and points headless Chromium at it: a
screenshot (saved, checked for size and content) and the rendered DOM (account rows, and every
chart drawn by uPlot with pixels in its series' colours, counted by the page itself). It is
skipped, loudly, when no Chromium binary is installed (`apt-get install -y chromium`; CI
installs it). DASHBOARD_SCREENSHOT=<path> keeps a copy of the screenshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from service.api.dashboard import ACCOUNT_PREFIX_CHARS, ASSETS, STATIC
from service.app import create_app
from service.coordination import Coordinator
from service.fingerprint import token_fingerprint
from service.observability.history import HistorySampler
from tests.api import conftest as full
from tests.api.test_observability import (
    ADMIN,
    ADMIN_KEY,
    Running,
    mark_store_known,
    running,
    settings_for,
)
from tests.fixtures.redis_server import RedisServer
from tests.fixtures.simulator import SimulatorHandle
from tests.fixtures.threaded_server import serve_in_thread

pytestmark = pytest.mark.redis

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = next(
    (
        found
        for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
        if (found := shutil.which(name))
    ),
    None,
)
WIDTH, HEIGHT = 1280, 1900
CHARTS = ("chart-inflight", "chart-queue", "chart-admissions", "chart-throttled", "chart-wait")
USER_TOKEN = full.USER_TOKEN
SECRETS = (*full.SECRETS, token_fingerprint(full.SERVER_TOKEN), token_fingerprint(USER_TOKEN))


async def grant(
    client: httpx.AsyncClient,
    semaphore_id: str,
    holder: str,
    timeout_s: float = 0,
    headers: dict[str, str] = ADMIN,
) -> httpx.Response:
    return await client.post(
        f"/global-semaphores/{semaphore_id}/leases",
        json={"timeout_s": timeout_s, "holder": holder},
        headers=headers,
    )


def masked(token: str) -> str:
    return token_fingerprint(token)[:ACCOUNT_PREFIX_CHARS] + "…"


def assert_no_secrets(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text


# -- the page and its files -------------------------------------------------------------------


async def test_the_page_is_served_with_a_strict_policy(redis_url: str) -> None:
    async with running(settings_for(redis_url)) as obs:
        response = await obs.client.get("/dashboard")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    policy = response.headers["content-security-policy"]
    assert "default-src 'none'" in policy
    assert "script-src 'self';" in policy  # no inline script, no CDN
    assert "connect-src 'self'" in policy
    assert response.headers["x-content-type-options"] == "nosniff"
    assert '<script src="dashboard/static/uPlot.iife.min.js">' in response.text
    assert '<script src="dashboard/static/dashboard.js">' in response.text
    assert "<script>" not in response.text
    assert not re.search(r"https?://", response.text.replace("http://www.w3.org", ""))
    assert ADMIN_KEY not in response.text


async def test_the_script_and_the_chart_library_are_served_from_the_package(
    redis_url: str,
) -> None:
    async with running(settings_for(redis_url)) as obs:
        answers = {name: await obs.client.get(f"/dashboard/static/{name}") for name in ASSETS}
        missing = await obs.client.get("/dashboard/static/dashboard.html")
        escape = await obs.client.get("/dashboard/static/..%2F..%2Fapi%2Fdashboard.py")
    for name, response in answers.items():
        assert response.status_code == 200, name
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.content == ASSETS[name][0].read_bytes()
    assert answers["dashboard.js"].headers["content-type"].startswith("text/javascript")
    assert 'fetch("dashboard/data"' in answers["dashboard.js"].text
    assert 'fetch("dashboard/history"' in answers["dashboard.js"].text
    assert answers["uPlot.min.css"].headers["content-type"].startswith("text/css")
    assert missing.status_code == 404
    assert missing.json() == {"error": "No dashboard file named 'dashboard.html'"}
    assert escape.status_code == 404  # a fixed list of names: nothing else is reachable
    # uPlot is the npm tarball's file, unmodified, with its licence beside it.
    vendor = STATIC / "vendor" / "uplot"
    readme = (vendor / "README.md").read_text()
    for name in ("uPlot.iife.min.js", "uPlot.min.css"):
        digest = hashlib.sha256((vendor / name).read_bytes()).hexdigest()
        assert f"| `{name}` | `{digest}` |" in readme
    assert "MIT License" in (vendor / "LICENSE").read_text()
    assert answers["uPlot.iife.min.js"].text.startswith("/*! https://github.com/leeoniya/uPlot")


def test_every_static_file_is_package_data() -> None:
    """A wheel carries the page's files (tests/unit/test_packaging.py builds one)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["service"]
    files = [p.relative_to(ROOT / "service").as_posix() for p in STATIC.rglob("*") if p.is_file()]
    assert files
    for name in files:
        assert any(fnmatch.fnmatch(name, pattern) for pattern in patterns), name


# -- the data ---------------------------------------------------------------------------------


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
    assert data["accounts"] == []
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
            history = await obs.client.get("/dashboard/history")
        finally:
            own_redis_server.start()
    assert response.status_code == 200
    assert response.json()["redis"] == {"reachable": False}
    assert response.json()["semaphores"] == []
    assert response.json()["accounts"] == []
    assert history.status_code == 200
    assert history.json() == {"redis": {"reachable": False}}


async def test_the_empty_state_instruction_creates_a_semaphore(make_api: full.MakeApi) -> None:
    """The page's empty state renders `setup` as a curl line: the admin key in its header,
    that body, to that path. Sent as written, it creates the semaphore."""
    async with make_api() as api:
        data = (await api.get("/dashboard/data")).json()
        assert data["semaphores"] == []
        setup = data["setup"]
        assert setup["admin_key_configured"] is True
        assert setup["admin_header"] == "X-Admin-API-Key"
        path = "/" + setup["create_path"]
        refused = await api.post(path, json=setup["create_body"])
        created = await api.post(
            path, json=setup["create_body"], headers={setup["admin_header"]: full.ADMIN_KEY}
        )
        after = (await api.get("/dashboard/data")).json()
    assert refused.status_code == 401  # what the old text led to: the key is required
    assert created.status_code == 201, created.text
    assert [s["semaphore_id"] for s in after["semaphores"]] == [
        setup["create_body"]["semaphore_id"]
    ]
    script = (STATIC / "dashboard.js").read_text()
    assert "setup.admin_header" in script and "$ADMIN_KEY" in script
    assert "CONCURRENT_DOCKER_ADMIN_API_KEY" in script
    async with make_api(concurrent_docker_admin_api_key=None, replica_id="api-b") as keyless:
        setup = (await keyless.get("/dashboard/data")).json()["setup"]
    assert setup["admin_key_configured"] is False


async def generate_traffic(
    client: httpx.AsyncClient, admin: dict[str, str], *, tasks: int, semaphore: str | None
) -> list[httpx.Response]:
    """Two accounts at once: the server's (admin key) and a caller's own token."""
    shared = {"external_semaphore_id": semaphore} if semaphore else {}
    batch = {"model_name": "flux-dev", "tasks": [{"prompt": f"p{i}"} for i in range(tasks)]}
    return list(
        await asyncio.gather(
            client.post("/generate-batch", json={**batch, **shared}, headers=admin),
            client.post(
                "/generate-batch",
                json={**batch, "credentials": {"replicate_api_token": USER_TOKEN}},
            ),
        )
    )


async def test_accounts_and_history_after_real_traffic(
    make_api: full.MakeApi, simulator: SimulatorHandle
) -> None:
    await simulator.aset_faults(create_429=2, retry_after_s=1)
    async with make_api(
        replicate_concurrent_limit=2, replicate_requests_per_minute=50, queue_timeout_seconds=30
    ) as api:
        sampler = api.app.state.history
        assert isinstance(sampler, HistorySampler)
        answers = await generate_traffic(api.client, full.ADMIN, tasks=5, semaphore=None)
        assert [r.json()["successful_count"] for r in answers] == [5, 5]
        await sampler.sample()
        data_response = await api.get("/dashboard/data")
        history_response = await api.get("/dashboard/history")
    for response in (data_response, history_response):
        assert response.status_code == 200
        assert_no_secrets(response.text)
    data = data_response.json()
    rows = {row["account"]: row for row in data["accounts"]}
    server, user = masked(full.SERVER_TOKEN), masked(USER_TOKEN)
    assert list(rows) == [server, user]  # the server's token first
    assert rows[server]["server_token"] is True and rows[user]["server_token"] is False
    for row in rows.values():
        assert len(row["account"]) == ACCOUNT_PREFIX_CHARS + 1
        assert (row["in_use"], row["limit"], row["waiting"]) == (0, 2, 0)
        window = row["window"]
        assert window["limit"] == 50
        assert window["used"] >= 5  # every create attempt counts, the refused ones too
        assert window["next_free_in_s"] == 0
        assert 0 < window["oldest_returns_in_s"] <= 61
    assert sum(row["window"]["used"] for row in rows.values()) >= 10 + 2  # two 429s retried

    history = history_response.json()
    assert history["redis"] == {"reachable": True}
    assert len(history["t"]) == 90 and history["bucket_s"] == 10
    labels = {limit["label"]: limit for limit in history["limits"]}
    assert set(labels) == {f"account {server}", f"account {user}"}
    assert all(limit["limit"] == 2 and limit["kind"] == "account" for limit in labels.values())

    def total(series: list[float | None]) -> float:
        return sum(v or 0 for v in series)

    assert total(history["admissions_per_min"]["account"]) > 0
    assert total(history["admissions_per_min"]["semaphore"]) == 0
    assert total(history["upstream_429_per_min"]) > 0
    assert any(v is not None for v in history["wait_p50_s"])
    assert any(v is not None for v in history["wait_p99_s"])


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
            "--force-device-scale-factor=1",
            f"--user-data-dir={profile}",
            # Let the page's fetches and renders finish before the capture (virtual time waits
            # for network requests in flight).
            "--virtual-time-budget=4000",
            *extra,
            url,
        ],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
        env={**os.environ, "HOME": str(profile)},
    )


def chart_attributes(dom: str, chart_id: str) -> dict[str, str]:
    match = re.search(rf'<div[^>]*id="{chart_id}"[^>]*>', dom)
    assert match, f"{chart_id} is not in the page"
    return dict(re.findall(r'data-([a-z]+)="([^"]*)"', match.group(0)))


async def wait_for_history(base_url: str, check: Any, timeout_s: float = 60) -> dict[str, Any]:
    """Poll /dashboard/history (replicas write every 2 s) until `check(history)` holds."""
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            history: dict[str, Any] = (await client.get("/dashboard/history")).json()
            if check(history):
                return history
            assert asyncio.get_running_loop().time() < deadline, history
            await asyncio.sleep(0.5)


def has_values(series: list[float | None]) -> bool:
    return any(v for v in series)


@pytest.mark.slow
@pytest.mark.simulator(latency_s=2.5)
async def test_a_headless_browser_renders_accounts_and_charts_after_traffic(
    redis_url: str, simulator: SimulatorHandle
) -> None:
    if CHROMIUM is None:
        pytest.skip(
            "DASHBOARD BROWSER TEST SKIPPED: no chromium binary on PATH "
            "(apt-get install -y chromium)"
        )
    full.mark_store_known(redis_url)
    settings = full.settings_for(
        redis_url,
        simulator.base_url,
        replica_id="api-1",
        lease_ttl_seconds=30.0,
        queue_timeout_seconds=60.0,
        replicate_concurrent_limit=2,
        replicate_requests_per_minute=60,
        global_semaphores="image-generation-global=3",
    )
    await simulator.aset_faults(create_429=2, retry_after_s=1)
    setup = await Coordinator.connect(redis_url, replica_id="api-2")
    with (
        serve_in_thread(create_app(settings), name="dashboard-app", lifespan="on") as base_url,
        tempfile.TemporaryDirectory(prefix="rcg-chromium-") as tmp,
    ):
        profile = Path(tmp)
        async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:
            await setup.registry.create("video-render", 1)
            tricky = '<img src=x onerror="document.title=1">'
            granted = await grant(client, "video-render", tricky, headers=full.ADMIN)
            assert granted.status_code == 201, granted.text
            # 16 tasks per account at 2 at a time, 2.5 s each: about 20 s of traffic, so the
            # charts have lines over three 10 s buckets, not a lone point.
            traffic = asyncio.create_task(
                generate_traffic(client, full.ADMIN, tasks=16, semaphore="image-generation-global")
            )
            try:
                history = await wait_for_history(
                    base_url,
                    lambda h: all(
                        (
                            sum(1 for v in h["admissions_per_min"]["account"] if v) >= 3,
                            any(has_values(limit["in_use"]) for limit in h["limits"]),
                            any(has_values(limit["waiting"]) for limit in h["limits"]),
                            has_values(h["admissions_per_min"]["account"]),
                            has_values(h["upstream_429_per_min"]),
                            has_values(h["wait_p99_s"]),
                        )
                    ),
                )
                shot = Path(tempfile.gettempdir()) / f"rcg-dashboard-{os.getpid()}.png"
                result = await asyncio.to_thread(
                    chromium,
                    f"{base_url}/dashboard",
                    profile / "shot",
                    f"--screenshot={shot}",
                    f"--window-size={WIDTH},{HEIGHT}",
                )
                dom_result = await asyncio.to_thread(
                    chromium,
                    f"{base_url}/dashboard",
                    profile / "dom",
                    f"--window-size={WIDTH},{HEIGHT}",
                    "--dump-dom",
                )
            finally:
                answers = await traffic
        assert [r.json()["successful_count"] for r in answers] == [16, 16]
    await setup.close()

    assert shot.exists(), result.stderr[-2000:]
    print(f"dashboard screenshot: {shot}")
    keep = os.environ.get("DASHBOARD_SCREENSHOT")
    if keep:
        shutil.copy(shot, keep)
    with Image.open(shot) as image:
        assert image.size == (WIDTH, HEIGHT)
        colours = image.convert("RGB").getcolors(maxcolors=WIDTH * HEIGHT)
    assert colours is not None
    assert len(colours) > 200, "the screenshot is (nearly) blank"

    dom = dom_result.stdout
    assert "Redis reachable" in dom, dom_result.stderr[-2000:]
    assert_no_secrets(dom)
    # Account rows: both accounts, masked, the server's marked.
    rows = re.findall(r'<tr class="account-row" data-account="([^"]+)"', dom)
    assert rows == [masked(full.SERVER_TOKEN), masked(USER_TOKEN)]
    assert "server token" in dom
    # Every chart was drawn by uPlot, from samples, with pixels in its series' colours.
    for chart_id in CHARTS:
        attributes = chart_attributes(dom, chart_id)
        assert int(attributes.get("drawn", "0")) >= 1, (chart_id, attributes)
        assert int(attributes.get("points", "0")) > 0, (chart_id, attributes)
        assert int(attributes.get("ink", "0")) > 50, (chart_id, attributes)
    assert dom.count('class="uplot') >= len(CHARTS)
    assert "No samples in the last 15 minutes" not in dom
    # The semaphores: the declared one, and a holder's text stays text.
    assert "image-generation-global" in dom and "video-render" in dom
    assert "&lt;img src=x" in dom
    assert "<img src=" not in dom
    assert history["limits"]
