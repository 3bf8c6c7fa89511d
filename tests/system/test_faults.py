"""Crashes, freezes, outages, disconnects, upstream trouble and shutdown, with real processes."""

from __future__ import annotations

import asyncio
import signal

import httpx
import pytest

from tests.fixtures.cluster import Cluster, admin_headers, running_cluster
from tests.system.helpers import create_semaphore, eventually, max_overlap, post_all, semaphore_view

pytestmark = [pytest.mark.system, pytest.mark.redis]


@pytest.fixture
def cluster(shared_cluster: Cluster) -> Cluster:
    """The cluster the system tests share (tests/system/conftest.py): reset before each test,
    replicas a test killed or stopped run again; each test uses semaphores of its own."""
    return shared_cluster


def body(prompt: str, **extra: object) -> dict[str, object]:
    return {"model_name": "flux-dev", "prompt": prompt, **extra}


def start_requests(
    client: httpx.AsyncClient, url: str, count: int, **extra: object
) -> list[asyncio.Task[httpx.Response]]:
    return [
        asyncio.create_task(client.post(url + "/generate", json=body(f"slow {i}", **extra)))
        for i in range(count)
    ]


async def test_a_killed_replicas_slots_come_back_once_its_predictions_ended(
    cluster: Cluster,
) -> None:
    """Its leases expire within one TTL, but its predictions still run at Replicate: the slots
    stay taken (orphans, docs/slot-ownership.md) until those end, and only then come back."""
    create_semaphore(cluster, "crash", 2)
    cluster.sim("PATCH", "/_sim/config", json={"latency_s": 6})
    async with httpx.AsyncClient(timeout=60, headers=admin_headers()) as client:
        doomed = start_requests(client, cluster.url(0), 3, external_semaphore_id="crash")
        await eventually(lambda: semaphore_view(cluster, "crash")["in_use"] == 2, 10)
        await eventually(lambda: semaphore_view(cluster, "crash")["waiting"] == 1, 10)
        cluster.stop_replica(0)  # SIGKILL: no release, no cancel
        await asyncio.gather(*doomed, return_exceptions=True)
        cluster.sim("PATCH", "/_sim/config", json={"latency_s": 0.2})
        # One TTL (3 s) later the leases have expired, but the slots are still taken.
        await asyncio.sleep(3.5)
        assert semaphore_view(cluster, "crash", 1)["in_use"] == 2
        # The dead waiter vanishes; a newcomer gets a slot once the predictions ended.
        await eventually(lambda: semaphore_view(cluster, "crash", 1)["waiting"] == 0, 15)
        response = await client.post(
            cluster.url(1) + "/generate", json=body("after", external_semaphore_id="crash")
        )
        assert response.status_code == 200, response.text
    stats = cluster.token_stats()
    assert max_overlap(stats["intervals"]) <= 2
    doomed_ends = sorted(end for start, end in stats["intervals"][:2])
    assert stats["intervals"][2][0] >= doomed_ends[0]


async def test_a_frozen_replica_learns_its_lease_is_lost_and_does_not_over_admit(
    cluster: Cluster,
) -> None:
    """Frozen past its lease's TTL while its prediction runs: the slot stays taken until another
    replica, waiting for it, adopts the orphan and settles its prediction; the frozen replica,
    back, finds its lease taken over and says so."""
    create_semaphore(cluster, "freeze", 1)
    cluster.sim("PATCH", "/_sim/config", json={"latency_s": 8})
    async with httpx.AsyncClient(timeout=60, headers=admin_headers()) as client:
        frozen = start_requests(client, cluster.url(0), 1, external_semaphore_id="freeze")
        await eventually(lambda: semaphore_view(cluster, "freeze", 1)["in_use"] == 1, 10)
        cluster.signal(0, signal.SIGSTOP)
        cluster.sim("PATCH", "/_sim/config", json={"latency_s": 1})
        replacement = start_requests(client, cluster.url(1), 1, external_semaphore_id="freeze")
        assert (await asyncio.gather(*replacement))[0].status_code == 200
        cluster.signal(0, signal.SIGCONT)
        first = (await asyncio.gather(*frozen))[0]
        # Frozen while its create was held open, it may also find that request timed out.
        assert first.status_code == 502, first.text
        error = first.json()["error"]
        assert "Lost the slot" in error or "did not answer the create request" in error
    stats = cluster.token_stats()
    assert max_overlap(stats["intervals"]) <= 1
    view = semaphore_view(cluster, "freeze")
    assert view["in_use"] == 0
    assert view["counters"].get("orphaned", 0) >= 1 and view["counters"].get("adopted", 0) >= 1


async def test_redis_outage_fails_fast_and_recovers_without_over_admission() -> None:
    with running_cluster(env={"GLOBAL_SEMAPHORES": "outage=2"}) as cluster:
        async with httpx.AsyncClient(timeout=30, headers=admin_headers()) as client:
            cluster.redis.stop()
            started = asyncio.get_running_loop().time()
            response = await client.post(
                cluster.url(0) + "/generate", json=body("x", external_semaphore_id="outage")
            )
            assert response.status_code == 503
            assert "Redis" in response.json()["error"]
            assert asyncio.get_running_loop().time() - started < 8
            health = await client.get(cluster.url(1) + "/health")
            assert health.status_code == 503 and health.json()["status"] == "degraded"
            cluster.redis.start()  # empty: no epoch, a young store
            await eventually(
                lambda: httpx.get(cluster.url(2) + "/health", timeout=5).status_code == 200, 20
            )
            cluster.sim("POST", "/_sim/reset")
            responses = await post_all(
                cluster,
                "/generate",
                [body(f"r{i}", external_semaphore_id="outage") for i in range(9)],
            )
            assert [r.status_code for r in responses] == [200] * 9, [r.text for r in responses]
        assert max_overlap(cluster.token_stats()["intervals"]) <= 2


async def test_a_caller_that_hangs_up_cancels_its_prediction_and_frees_its_slots(
    cluster: Cluster,
) -> None:
    create_semaphore(cluster, "hangup", 2)
    cluster.sim("PATCH", "/_sim/config", json={"latency_s": 30})
    async with httpx.AsyncClient(timeout=2, headers=admin_headers()) as client:
        with pytest.raises(httpx.ReadTimeout):
            await client.post(
                cluster.url(0) + "/generate", json=body("bye", external_semaphore_id="hangup")
            )
    await eventually(lambda: cluster.token_stats().get("by_status", {}).get("canceled") == 1, 5)
    await eventually(lambda: semaphore_view(cluster, "hangup")["in_use"] == 0, 5)
    assert cluster.token_stats()["in_flight"] == 0


async def test_upstream_trouble_never_exceeds_a_limit_or_loses_a_task(cluster: Cluster) -> None:
    create_semaphore(cluster, "trouble", 3)
    cluster.sim(
        "POST",
        "/_sim/faults",
        json={
            "create_429": 4,
            "retry_after_s": 1,
            "create_5xx": 3,
            "fail_fraction": 0.25,
            "slow_start_s": 0.3,
        },
    )
    batch = {
        "model_name": "flux-dev",
        "external_semaphore_id": "trouble",
        "tasks": [{"prompt": f"storm {i}"} for i in range(10)],
    }
    responses = await post_all(cluster, "/generate-batch", [batch, batch, batch])
    total_failed = 0
    for response in responses:
        assert response.status_code == 200, response.text
        data = response.json()
        assert data["total_tasks"] == 10
        assert data["successful_count"] + data["failed_count"] == 10
        assert [r["task_index"] for r in data["results"]] == list(range(10))
        for failed in data["failed_results"]:
            assert failed["status"] == "failed" and failed["error"]
        total_failed += data["failed_count"]
    stats = cluster.token_stats()
    assert max_overlap(stats["intervals"]) <= 3
    assert stats["by_status"].get("failed", 0) == total_failed
    assert semaphore_view(cluster, "trouble")["in_use"] == 0


async def test_sigterm_finishes_or_cancels_in_flight_work_and_releases_every_lease(
    cluster: Cluster,
) -> None:
    create_semaphore(cluster, "drain", 4)
    cluster.sim("PATCH", "/_sim/config", json={"latency_s": 1.5})
    async with httpx.AsyncClient(timeout=30, headers=admin_headers()) as client:
        inflight = start_requests(client, cluster.url(0), 3, external_semaphore_id="drain")
        await eventually(lambda: semaphore_view(cluster, "drain", 1)["in_use"] == 3, 10)
        cluster.signal(0, signal.SIGTERM)
        results = await asyncio.gather(*inflight, return_exceptions=True)
        process = cluster.replicas[0]
        assert process is not None and process.wait(timeout=20) is not None
        for result in results:
            assert isinstance(result, httpx.Response) and result.status_code == 200, result
        with pytest.raises(httpx.ConnectError):
            await client.post(cluster.url(0) + "/generate", json=body("late"))
    assert semaphore_view(cluster, "drain", 1)["in_use"] == 0
    assert cluster.token_stats()["in_flight"] == 0
