"""A soak with random replica kills and freezes (opt-in locally; CI runs it for 5 minutes, in a
file of its own so that it starts first, beside the rest: tests/conftest.py)."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time

import httpx
import pytest

from tests.fixtures.cluster import admin_headers, running_cluster
from tests.system.helpers import eventually, max_overlap

pytestmark = [pytest.mark.system, pytest.mark.redis, pytest.mark.slow, pytest.mark.soak]


# Opt-in: CI sets SOAK_SECONDS=300 (.ci/run); locally the soak runs only when asked for.
SOAK_SECONDS = float(os.environ.get("SOAK_SECONDS") or 0)


@pytest.mark.slow
@pytest.mark.timeout(SOAK_SECONDS + 180)
async def test_soak_with_random_replica_kills_and_freezes_loses_nothing_and_leaks_nothing() -> None:
    """Predictions of seconds, longer than the lease TTL; replicas killed, frozen and restarted
    at random while they hold slots. Never more than the limit running at the simulator, and at
    the end no slot, orphan or queue entry left (docs/slot-ownership.md)."""
    if SOAK_SECONDS <= 0:
        if os.environ.get("CI") == "true":
            pytest.fail("SOAK_SECONDS is not set; CI runs the soak (.ci/run sets 300)")
        pytest.skip("SOAK SKIPPED: opt-in locally, set SOAK_SECONDS=60 (CI runs 300) to run it")
    rng = random.Random(11)
    # A slot whose create timed out unanswered (a replica frozen during its create) is held
    # until its prediction's deadline: PREDICTION_TIMEOUT_SECONDS + 30 s, kept short here so
    # that the end of the soak sees it given back.
    env = {"LEASE_TTL_SECONDS": "2", "PREFER_WAIT_SECONDS": "1", "PREDICTION_TIMEOUT_SECONDS": "15"}
    with running_cluster(env=env, latency=3.0, jitter=0.5) as cluster:
        httpx.post(
            cluster.url(0) + "/global-semaphores",
            json={"semaphore_id": "soak", "limit": 5},
            headers=admin_headers(),
            timeout=10,
        ).raise_for_status()
        end = time.monotonic() + SOAK_SECONDS
        outcomes = {"ok": 0, "killed": 0, "other": 0, "lost": 0}
        answered_tasks = 0

        async def caller(index: int) -> None:
            nonlocal answered_tasks
            async with httpx.AsyncClient(timeout=60, headers=admin_headers()) as client:
                while time.monotonic() < end:
                    replica = rng.randrange(cluster.count)
                    batch = rng.random() < 0.3
                    try:
                        if batch:
                            tasks = [{"prompt": f"soak {index}"} for _ in range(rng.randint(2, 5))]
                            response = await client.post(
                                cluster.url(replica) + "/generate-batch",
                                json={
                                    "model_name": "flux-dev",
                                    "tasks": tasks,
                                    "external_semaphore_id": "soak",
                                },
                            )
                            if response.status_code == 200:
                                data = response.json()
                                assert data["successful_count"] + data["failed_count"] == len(tasks)
                                answered_tasks += len(tasks)
                        else:
                            response = await client.post(
                                cluster.url(replica) + "/generate",
                                json={
                                    "model_name": "flux-dev",
                                    "prompt": f"soak {index}",
                                    "external_semaphore_id": "soak",
                                },
                            )
                        outcomes["ok" if response.status_code == 200 else "other"] += 1
                        if response.status_code == 502 and any(
                            # a frozen replica's caller: its slot was taken over, or its create
                            # timed out while it was frozen
                            text in response.text
                            for text in ("Lost the slot", "did not answer the create request")
                        ):
                            outcomes["lost"] += 1
                    except httpx.TransportError:
                        outcomes["killed"] += 1  # its replica was killed under it
                        await asyncio.sleep(0.2)

        async def chaos() -> None:
            while time.monotonic() < end - 5:
                await asyncio.sleep(rng.uniform(4, 8))
                victim = rng.randrange(cluster.count)
                if rng.random() < 0.5:
                    cluster.stop_replica(victim)  # SIGKILL
                    await asyncio.sleep(0.5)
                    cluster.start_replica(victim)
                    await asyncio.to_thread(cluster.wait_ready, victim)
                else:  # a freeze, shorter or longer than the lease TTL
                    cluster.signal(victim, signal.SIGSTOP)
                    await asyncio.sleep(rng.uniform(0.5, 6))
                    cluster.signal(victim, signal.SIGCONT)

        await asyncio.gather(*(caller(i) for i in range(12)), chaos())
        # 5 slots, predictions of ~3 s: at most ~100 a minute; kills and freezes cost some.
        assert outcomes["ok"] > SOAK_SECONDS / 3, outcomes
        # A frozen replica's callers may learn that their slot was taken over; nothing else.
        assert outcomes["other"] <= outcomes["lost"], outcomes
        # Orphans left by the last kills are settled by the next replica that waits on the
        # semaphore: one more request, then nothing may be left at all.
        async with httpx.AsyncClient(timeout=60, headers=admin_headers()) as client:
            last = await client.post(
                cluster.url(0) + "/generate",
                json={"model_name": "flux-dev", "prompt": "last", "external_semaphore_id": "soak"},
            )
        assert last.status_code == 200, last.text
        redis_client = cluster.redis.sync_client()
        keys = "rcg:{sem:soak}"

        def nothing_left() -> bool:
            return (
                redis_client.zcard(f"{keys}:holders") == 0
                and redis_client.zcard(f"{keys}:orphans") == 0
                and redis_client.zcard(f"{keys}:queue") == 0
            )

        await eventually(nothing_left, 90)
        stats = cluster.token_stats()
        assert max_overlap(stats["intervals"]) <= 5
