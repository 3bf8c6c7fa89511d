"""Durable jobs across real processes: three replicas, the simulator, a real Redis.

A 200-task job whose replica is SIGKILLed mid-run completes from another replica, with exactly
one prediction per task at the simulator and never more than the account's limit running there;
a job cancelled mid-run leaves nothing running upstream.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fixtures.cluster import Cluster, admin_headers, running_cluster
from tests.fixtures.redis_server import require_redis_binary
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
    with running_cluster(env=ENV, latency=1.0) as cluster:
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


async def test_replicates_webhook_completes_a_task_before_its_next_poll() -> None:
    """PUBLIC_BASE_URL set: the simulator POSTs its signed `completed` webhook to one replica,
    which fans it out; the replica polling the prediction completes the task at once. Without
    it the task would wait for its next poll (polls at 1, 2.5, 4.75, 8.1 s after the create's
    1 s hold: about 2 s after a 6 s prediction ends)."""
    require_redis_binary()
    with tempfile.TemporaryDirectory(prefix="rcg-system-") as workdir:
        cluster = Cluster(
            Path(workdir),
            replicas=2,
            env=dict(ENV),
            sim_flags={"latency": 6.0, "jitter": 0.0, "seed": 7},
        )
        cluster.env["PUBLIC_BASE_URL"] = cluster.url(1)  # Replicate reaches replica 1 only
        try:
            cluster.start()
            async with httpx.AsyncClient(timeout=30, headers=admin_headers()) as client:
                body = {"model_name": "flux-dev", "prompt": "webhook me"}
                submitted = await client.post(cluster.url(0) + "/jobs", json=body)
                job_id = submitted.json()["id"]

                async def finished() -> bool:
                    view = await job(client, cluster, 0, job_id)
                    return bool(view["status"] in ("succeeded", "failed"))

                await eventually(finished, 30)
                done = await job(client, cluster, 0, job_id)
            stats = cluster.sim("GET", "/_sim/stats")
        finally:
            cluster.stop()
    assert done["status"] == "succeeded", done
    assert stats["webhooks"]["sent"] == 1
    prediction_end = cluster_interval_end(stats)
    completed = datetime.fromisoformat(done["completed_at"].replace("Z", "+00:00")).timestamp()
    assert completed - prediction_end < 1.0, completed - prediction_end


def cluster_interval_end(stats: dict[str, Any]) -> float:
    [token] = stats["tokens"].values()
    [[_, end]] = token["intervals"]
    return float(end)


async def test_webhooks_reach_a_receiver_that_was_down_once_per_id() -> None:
    from tests.api.test_jobs import WEBHOOK_SECRET, Receiver
    from tests.fixtures.threaded_server import serve_in_thread

    receiver = Receiver()
    env = {**ENV, "WEBHOOK_SECRET": WEBHOOK_SECRET, "WEBHOOK_ALLOW_PRIVATE": "true"}
    with (
        serve_in_thread(receiver.app(), name="webhook-receiver") as url,
        running_cluster(env=env, latency=0.5) as cluster,
    ):
        async with httpx.AsyncClient(timeout=30, headers=admin_headers()) as client:
            body = {**batch(3), "webhook": {"url": f"{url}/hook", "events": ["task", "completed"]}}
            job_id = (await client.post(cluster.url(0) + "/jobs", json=body)).json()["id"]
            await eventually(lambda: len(set(receiver.attempts)) == 4, 30)
            await asyncio.sleep(3)  # refused for a while: retried with backoff
            receiver.down = False
            await eventually(lambda: len(receiver.accepted) == 4, 60)
            await asyncio.sleep(2)  # nothing more arrives once delivered
            view = await job(client, cluster, 2, job_id)
    assert receiver.bad_signatures == 0
    assert sorted(receiver.accepted) == sorted(
        [f"msg_{job_id}_completed"] + [f"msg_{job_id}_task-{i}" for i in range(3)]
    )
    delivered_after = receiver.attempts[receiver.attempts.index(f"msg_{job_id}_completed") :]
    assert len(receiver.attempts) > 4
    assert delivered_after.count(f"msg_{job_id}_completed") >= 2  # retried, same webhook-id
    assert all(d["status"] == "delivered" for d in view["webhook"]["deliveries"])
