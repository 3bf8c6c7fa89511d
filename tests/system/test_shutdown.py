"""A generation still running when a replica's drain time runs out gets the service's JSON
error (503, saying the replica shut down and the prediction was cancelled), not uvicorn's
plain-text 500; the prediction is cancelled upstream and the slot comes back."""

from __future__ import annotations

import asyncio
import signal

import httpx
import pytest

from tests.fixtures.cluster import admin_headers, running_cluster
from tests.system.helpers import create_semaphore, eventually, semaphore_view

pytestmark = [pytest.mark.system, pytest.mark.redis]


async def test_a_generation_cut_short_by_shutdown_gets_a_json_503() -> None:
    with running_cluster(replicas=2, env={"DRAIN_SECONDS": "1"}, latency=30.0) as cluster:
        create_semaphore(cluster, "drain-1", 1)
        async with httpx.AsyncClient(timeout=60, headers=admin_headers()) as client:
            request = asyncio.create_task(
                client.post(
                    cluster.url(0) + "/generate",
                    json={
                        "model_name": "flux-dev",
                        "prompt": "a long one",
                        "external_semaphore_id": "drain-1",
                    },
                )
            )
            await eventually(lambda: cluster.token_stats().get("created", 0) == 1, timeout_s=20)
            cluster.signal(0, signal.SIGTERM)
            response = await request

        assert response.status_code == 503, response.text
        assert response.headers["content-type"].startswith("application/json")
        error = response.json()["error"]
        assert "shut down" in error and "cancelled" in error
        assert response.headers["Retry-After"] == "1"
        stats = cluster.token_stats()
        assert stats["by_status"]["canceled"] == 1
        await eventually(lambda: semaphore_view(cluster, "drain-1", replica=1)["in_use"] == 0, 10)
