"""Webhooks of durable jobs across real processes: Replicate's, fanned out to the replica that
polls the prediction, and the job's own, retried until a receiver that was down accepts them,
once per id (split from test_jobs.py so that pytest-xdist runs both side by side)."""

from __future__ import annotations

import asyncio
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fixtures.cluster import Cluster, admin_headers, running_cluster
from tests.fixtures.redis_server import require_redis_binary
from tests.system.helpers import eventually
from tests.system.test_jobs import ENV, batch, job

pytestmark = [pytest.mark.system, pytest.mark.redis, pytest.mark.slow]


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
