"""The per-account sliding window across replicas."""

from __future__ import annotations

import pytest

from tests.fixtures.cluster import running_cluster
from tests.system.helpers import post_all

pytestmark = [pytest.mark.system, pytest.mark.redis, pytest.mark.slow]


def in_any_60s(times: list[float]) -> int:
    times = sorted(times)
    return max(sum(1 for t in times if start <= t < start + 60) for start in times)


async def test_requests_beyond_the_window_get_429_with_retry_after() -> None:
    env = {"REPLICATE_REQUESTS_PER_MINUTE": "10", "QUEUE_TIMEOUT_SECONDS": "2"}
    with running_cluster(env=env) as cluster:
        bodies = [{"model_name": "flux-dev", "prompt": f"p{i}"} for i in range(15)]
        responses = await post_all(cluster, "/generate", bodies)
        ok = [r for r in responses if r.status_code == 200]
        limited = [r for r in responses if r.status_code == 429]
        assert (len(ok), len(limited)) == (10, 5), [r.text for r in responses]
        for response in limited:
            assert response.json()["limit_scope"] == "account_rate"
            assert 50 <= int(response.headers["Retry-After"]) <= 62
            assert response.headers["X-Limit-Scope"] == "account_rate"
        stats = cluster.token_stats()
        assert stats["created"] == 10
        assert in_any_60s(stats["created_at"]) <= 10


async def test_requests_that_may_wait_for_the_window_all_succeed() -> None:
    env = {"REPLICATE_REQUESTS_PER_MINUTE": "10", "QUEUE_TIMEOUT_SECONDS": "90"}
    with running_cluster(env=env) as cluster:
        bodies = [{"model_name": "flux-dev", "prompt": f"p{i}"} for i in range(15)]
        responses = await post_all(cluster, "/generate", bodies, timeout=150)
        assert [r.status_code for r in responses] == [200] * 15
        stats = cluster.token_stats()
        assert stats["created"] == 15
        assert in_any_60s(stats["created_at"]) <= 10
