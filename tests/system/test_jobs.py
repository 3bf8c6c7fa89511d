"""Durable jobs across real processes: three replicas, the simulator, a real Redis.

A 200-task job whose replica is SIGKILLed mid-run completes from another replica, with exactly
one prediction per task at the simulator and never more than the account's limit running there;
a job cancelled mid-run leaves nothing running upstream.
"""

from __future__ import annotations

import asyncio
import signal
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fixtures.cluster import Cluster, admin_headers, running_cluster
from tests.fixtures.redis_server import require_redis_binary
from tests.fixtures.sse import parse_sse
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


@pytest.mark.parametrize("how", ["SIGTERM", "SIGSTOP"])
async def test_a_job_keeps_one_prediction_per_task_when_its_replica_stops_or_freezes(
    how: str,
) -> None:
    """A graceful shutdown leaves the job's running predictions running (never cancelled and
    created again); a replica frozen while another takes its job over leaves them running when
    it wakes (never cancels what the new runner follows). Either way: one create per task, all
    succeeded, the limit held upstream."""
    # Frozen: predictions long enough to be running still when the frozen replica wakes.
    count, latency = (16, 6.0) if how == "SIGTERM" else (LIMIT, 15.0)
    env = {**ENV, "JOB_CLAIM_IDLE_SECONDS": "3", "DRAIN_SECONDS": "1"}
    with running_cluster(env=env, latency=latency) as cluster:
        async with httpx.AsyncClient(timeout=30, headers=admin_headers()) as client:
            submitted = await client.post(cluster.url(0) + "/jobs", json=batch(count))
            assert submitted.status_code == 202, submitted.text
            job_id = submitted.json()["id"]
            await eventually(lambda: cluster.token_stats().get("in_flight", 0) >= LIMIT, 30)
            victim = runner_of(cluster, job_id)
            other = (victim + 1) % cluster.count
            if how == "SIGTERM":
                cluster.signal(victim, signal.SIGTERM)
                cluster.replicas[victim].wait(timeout=30)  # type: ignore[union-attr]
            else:
                cluster.signal(victim, signal.SIGSTOP)

            async def resumed() -> bool:
                return runner_of(cluster, job_id) != victim

            await eventually(resumed, 30)
            extra = None
            if how == "SIGSTOP":
                # Another caller on the account makes the frozen replica's expired slots
                # orphans, which a live replica adopts: the frozen one has lost them.
                extra = asyncio.create_task(
                    client.post(
                        cluster.url(other) + "/generate",
                        json={"model_name": "flux-dev", "prompt": "another caller"},
                        timeout=90,
                    )
                )
                await eventually(lambda: adopted(cluster), 20)
                cluster.signal(victim, signal.SIGCONT)

            async def finished() -> bool:
                view = await job(client, cluster, other, job_id)
                return bool(view["status"] in ("succeeded", "failed", "canceled"))

            await eventually(finished, 120, interval_s=0.5)
            done = await job(client, cluster, other, job_id)
            if extra is not None:
                assert (await extra).status_code == 200
        stats = cluster.token_stats()
    failed = [t for t in done["tasks"] if t["error"]][:3]
    assert done["status"] == "succeeded" and done["counts"]["succeeded"] == count, failed
    # Never a second create for a task (the frozen case has one more caller).
    assert stats["created"] == count + (extra is not None), stats["created"]
    assert stats["by_status"].get("canceled", 0) == 0
    assert max_overlap(stats["intervals"]) <= LIMIT


async def test_events_cut_mid_stream_resume_on_another_replica_without_loss_or_duplicates() -> None:
    """Real processes: follow a running job's events on one replica, cut the connection in the
    middle of the job, resume on another replica with Last-Event-ID, and read to the end: the
    two parts together are exactly the job's whole stream, in order."""
    count = 12
    with running_cluster(env={**ENV, "REPLICATE_CONCURRENT_LIMIT": "2"}, latency=0.5) as cluster:
        async with httpx.AsyncClient(timeout=60, headers=admin_headers()) as client:
            submitted = await client.post(cluster.url(0) + "/jobs", json=batch(count))
            job_id = submitted.json()["id"]
            first: list[dict[str, Any]] = []
            async with client.stream("GET", f"{cluster.url(1)}/jobs/{job_id}/events") as stream:
                lines: list[str] = []
                async for line in stream.aiter_lines():
                    if line:
                        lines.append(line)
                        continue
                    first += parse_sse("\n".join(lines) + "\n\n")
                    lines = []
                    if sum(e["event"] == "task" for e in first) >= count // 2:
                        break  # cut: the connection closes in the middle of the job
            assert first and first[-1]["event"] != "job"
            resumed = await client.get(
                f"{cluster.url(2)}/jobs/{job_id}/events",
                headers={"Last-Event-ID": first[-1]["id"]},
            )
            rest = parse_sse(resumed.text)
            whole = parse_sse((await client.get(f"{cluster.url(0)}/jobs/{job_id}/events")).text)
    assert rest[-1]["event"] == "job" and rest[-1]["data"]["status"] == "succeeded"
    ids = [e["id"] for e in first + rest]
    assert ids == [e["id"] for e in whole]  # nothing lost, nothing repeated, in order
    assert len(set(ids)) == len(ids)
