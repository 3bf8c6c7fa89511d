"""Durable jobs across real processes when their replica stops, freezes or is cut off from a
follower: one prediction per task, and the events stream whole (split from test_jobs.py so that
pytest-xdist runs the two files side by side)."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import httpx
import pytest

from tests.fixtures.cluster import admin_headers, running_cluster
from tests.fixtures.sse import parse_sse
from tests.system.helpers import eventually, max_overlap
from tests.system.test_jobs import ENV, LIMIT, adopted, batch, job, runner_of

pytestmark = [pytest.mark.system, pytest.mark.redis, pytest.mark.slow]


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
                # The extra caller's own prediction, created once a job's prediction ends, need
                # not be long.
                cluster.sim("PATCH", "/_sim/config", json={"latency_s": 1.0})
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
