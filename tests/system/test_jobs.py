"""Durable jobs across real processes: three replicas, the simulator, a real Redis.

A 200-task job whose replica is SIGKILLed mid-run completes from another replica, with exactly
one prediction per task at the simulator and never more than the account's limit running there;
a job cancelled mid-run leaves nothing running upstream. (Webhooks: test_job_webhooks.py; a
job's replica stopped or frozen: test_job_takeover.py.)
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest

from tests.fixtures.cluster import Cluster, admin_headers, running_cluster
from tests.system.helpers import eventually, max_overlap

pytestmark = [pytest.mark.system, pytest.mark.redis, pytest.mark.slow]

LIMIT = 8
ENV = {
    "REPLICATE_CONCURRENT_LIMIT": str(LIMIT),
    "MAX_BATCH_TASKS": "200",
    "PREFER_WAIT_SECONDS": "1",
    "JOB_MAX_RUNNING_TASKS": "64",
}


def batch(count: int) -> dict[str, Any]:
    return {"model_name": "flux-dev", "tasks": [{"prompt": f"job task {i}"} for i in range(count)]}


def runner_of(cluster: Cluster, job_id: str) -> int:
    """Which replica runs the job (its consumer is named after REPLICA_ID)."""
    runner = cluster.redis.sync_client().hget(f"rcg:{{job:{job_id}}}:job", "runner")
    assert runner is not None
    return int(runner.decode().split("-")[1])


def adopted(cluster: Cluster) -> bool:
    """Some replica has adopted an orphaned slot (its log says so)."""
    return "adopted an orphaned slot" in cluster.logs()


async def job(client: httpx.AsyncClient, cluster: Cluster, replica: int, job_id: str) -> Any:
    response = await client.get(f"{cluster.url(replica)}/jobs/{job_id}")
    assert response.status_code == 200, response.text
    return response.json()


async def test_a_job_survives_the_sigkill_of_its_replica() -> None:
    # Predictions of 0.8 s, inside the create's 1 s hold: eight always running.
    with running_cluster(env=ENV, latency=0.8) as cluster:
        async with httpx.AsyncClient(timeout=30, headers=admin_headers()) as client:
            submitted = await client.post(cluster.url(0) + "/jobs", json=batch(200))
            assert submitted.status_code == 202, submitted.text
            job_id = submitted.json()["id"]
            await eventually(lambda: cluster.token_stats().get("created", 0) >= 60, 60)
            victim = runner_of(cluster, job_id)
            cluster.stop_replica(victim)  # SIGKILL
            killed_at = time.monotonic()
            other = (victim + 1) % cluster.count

            async def resumed() -> bool:
                return runner_of(cluster, job_id) != victim

            took_over_s = await eventually(resumed, 30)

            async def finished() -> bool:
                view = await job(client, cluster, other, job_id)
                return bool(view["status"] in ("succeeded", "failed", "canceled"))

            await eventually(finished, 180, interval_s=0.5)
            done = await job(client, cluster, other, job_id)
        stats = cluster.token_stats()
    assert done["status"] == "succeeded", done["counts"]
    assert done["counts"]["succeeded"] == 200, [t for t in done["tasks"] if t["error"]][:3]
    ids = [t["prediction_id"] for t in done["tasks"]]
    assert len(set(ids)) == 200
    # Exactly one prediction per task at the simulator, and the limit held upstream.
    assert stats["created"] == 200, stats["created"]
    assert sorted(stats["prediction_ids"]) == sorted(ids)
    assert max_overlap(stats["intervals"]) <= LIMIT
    assert stats["by_status"]["succeeded"] == 200
    print(f"taken over {took_over_s:.1f} s after the kill ({time.monotonic() - killed_at:.0f} s)")


async def test_cancelling_a_running_job_leaves_nothing_running_upstream() -> None:
    with running_cluster(env=ENV, latency=20.0) as cluster:
        async with httpx.AsyncClient(timeout=30, headers=admin_headers()) as client:
            submitted = await client.post(cluster.url(1) + "/jobs", json=batch(40))
            job_id = submitted.json()["id"]
            await eventually(lambda: cluster.token_stats().get("in_flight", 0) >= LIMIT, 30)
            cancelled = await client.post(f"{cluster.url(2)}/jobs/{job_id}/cancel")
            assert cancelled.status_code in (200, 202), cancelled.text

            async def ended() -> bool:
                return bool((await job(client, cluster, 0, job_id))["status"] == "canceled")

            await eventually(ended, 20)
            await eventually(lambda: cluster.token_stats()["in_flight"] == 0, 10)
            view = await job(client, cluster, 0, job_id)
        stats = cluster.token_stats()
    assert view["counts"]["canceled"] == 40
    assert stats["created"] == LIMIT and stats["by_status"]["canceled"] == LIMIT
    assert max_overlap(stats["intervals"]) <= LIMIT
    await asyncio.sleep(0)
