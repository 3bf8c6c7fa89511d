"""Limits hold across real replicas: asserted on what the upstream simulator saw. Each test runs
once per Redis deployment (docs/redis-ha.md): one server, a Redis Cluster, Sentinel."""

from __future__ import annotations

import httpx
import pytest

from tests.fixtures.cluster import REDIS_MODES, Cluster, RedisMode, SharedClusters
from tests.system.helpers import create_semaphore, max_overlap, post_all, semaphore_view

pytestmark = [pytest.mark.system, pytest.mark.redis]

# Replicas of another Replicate account, on the same Redis and simulator: the account test's.
ACCOUNT_TOKEN = "r8_system_test_account_limit_2"


@pytest.fixture(scope="module", params=REDIS_MODES)
def redis_mode(request: pytest.FixtureRequest) -> RedisMode:
    """Module-scoped, so that the module's tests run grouped by mode."""
    mode: RedisMode = request.param
    return mode


@pytest.fixture
def cluster(shared_cluster_in: SharedClusters, redis_mode: RedisMode) -> Cluster:
    """The cluster of this mode the system tests share (tests/system/conftest.py): reset before
    each test, replicas a test killed or stopped run again; each test uses semaphores of its
    own."""
    return shared_cluster_in(redis_mode)


def body(prompt: str, **extra: object) -> dict[str, object]:
    return {"model_name": "flux-dev", "prompt": prompt, **extra}


async def test_a_semaphore_of_four_holds_across_three_replicas(cluster: Cluster) -> None:
    create_semaphore(cluster, "shared-4", 4)
    responses = await post_all(
        cluster,
        "/generate",
        [body(f"cat {i}", external_semaphore_id="shared-4") for i in range(48)],
    )
    assert [r.status_code for r in responses] == [200] * 48, [r.text for r in responses][:3]
    stats = cluster.token_stats()
    assert stats["created"] == 48
    assert stats["max_in_flight"] <= 4
    assert max_overlap(stats["intervals"]) <= 4
    assert stats["max_in_flight"] >= 3  # and the limit was actually used
    view = semaphore_view(cluster, "shared-4")
    assert view["in_use"] == 0 and view["waiting"] == 0
    replicas_used = {r.json()["prediction_id"] for r in responses}
    assert len(replicas_used) == 48


async def test_batches_spanning_replicas_share_one_semaphore(cluster: Cluster) -> None:
    create_semaphore(cluster, "batch-3", 3)
    batch = {
        "model_name": "flux-dev",
        "external_semaphore_id": "batch-3",
        "tasks": [{"prompt": f"tree {i}", "output_filename": f"tree_{i}"} for i in range(8)],
    }
    responses = await post_all(cluster, "/generate-batch", [batch, batch, batch])
    for response in responses:
        assert response.status_code == 200, response.text
        data = response.json()
        assert data["successful_count"] == 8 and data["failed_count"] == 0
        assert [r["task_index"] for r in data["results"]] == list(range(8))
        assert [r["generated_files"][0]["filename"] for r in data["results"]] == [
            f"tree_{i}.webp" for i in range(8)
        ]
    stats = cluster.token_stats()
    assert stats["created"] == 24
    assert max_overlap(stats["intervals"]) <= 3


async def test_the_account_concurrency_limit_holds_across_replicas(cluster: Cluster) -> None:
    # Three more replicas, of an account of their own with a limit of 2, on the shared Redis
    # and simulator (the shared replicas' account has the default limit).
    env = {"REPLICATE_CONCURRENT_LIMIT": "2", "REPLICATE_API_TOKEN": ACCOUNT_TOKEN}
    with cluster.more_replicas("account", 3, env) as account:
        responses = await post_all(account, "/generate", [body(f"dog {i}") for i in range(18)])
        assert [r.status_code for r in responses] == [200] * 18, [
            r.text for r in responses if r.status_code != 200
        ][:3]
        stats = account.token_stats(ACCOUNT_TOKEN)
        assert stats["created"] == 18
        assert max_overlap(stats["intervals"]) <= 2
        assert stats["max_in_flight"] <= 2
        health = httpx.get(account.url(1) + "/health", timeout=5).json()
        assert health["concurrency_status"]["concurrent_limit"] == 2
