"""The per-account sliding window across replicas.

The replicas run a short window (ACCOUNT_WINDOW_SECONDS=WINDOW_S instead of 61 s) so that a test
waits one short window rather than a minute; the property is the same, scaled: the service's
window is the upstream's plus one second of skew margin (61 s for Replicate's 60 s), so the
simulator must never see more than the limit in any WINDOW_S - 1 seconds. The exact window
arithmetic at the real length is unit-tested on a controlled clock.
"""

from __future__ import annotations

import pytest

from tests.fixtures.cluster import running_cluster
from tests.system.helpers import post_all

pytestmark = [pytest.mark.system, pytest.mark.redis, pytest.mark.slow]

WINDOW_S = 6  # the service's window (production: 61)
UPSTREAM_WINDOW_S = WINDOW_S - 1  # what the upstream counts in (production: Replicate's 60)
LIMIT = 10
QUEUE_TIMEOUT_S = 2


def in_any_window(times: list[float], window_s: float = UPSTREAM_WINDOW_S) -> int:
    times = sorted(times)
    return max(sum(1 for t in times if start <= t < start + window_s) for start in times)


def window_env(queue_timeout_s: float) -> dict[str, str]:
    return {
        "ACCOUNT_WINDOW_SECONDS": str(WINDOW_S),
        "REPLICATE_REQUESTS_PER_MINUTE": str(LIMIT),
        "QUEUE_TIMEOUT_SECONDS": str(queue_timeout_s),
    }


async def test_requests_beyond_the_window_get_429_with_retry_after() -> None:
    with running_cluster(env=window_env(QUEUE_TIMEOUT_S)) as cluster:
        bodies = [{"model_name": "flux-dev", "prompt": f"p{i}"} for i in range(15)]
        responses = await post_all(cluster, "/generate", bodies)
        ok = [r for r in responses if r.status_code == 200]
        limited = [r for r in responses if r.status_code == 429]
        assert (len(ok), len(limited)) == (LIMIT, 5), [r.text for r in responses]
        for response in limited:
            assert response.json()["limit_scope"] == "account_rate"
            # The window's remaining time: at most the window (+1 s of rounding up), at least
            # what is left of it after the queue timeout (61 s window: between 50 and 62).
            retry_after = int(response.headers["Retry-After"])
            assert WINDOW_S - QUEUE_TIMEOUT_S - 1 <= retry_after <= WINDOW_S + 1
            assert response.headers["X-Limit-Scope"] == "account_rate"
        stats = cluster.token_stats()
        assert stats["created"] == LIMIT
        assert in_any_window(stats["created_at"]) <= LIMIT


async def test_requests_that_may_wait_for_the_window_all_succeed() -> None:
    # The queue timeout covers more than one window (production: 90 s for 61 s).
    with running_cluster(env=window_env(3 * WINDOW_S)) as cluster:
        bodies = [{"model_name": "flux-dev", "prompt": f"p{i}"} for i in range(15)]
        responses = await post_all(cluster, "/generate", bodies, timeout=150)
        assert [r.status_code for r in responses] == [200] * 15
        stats = cluster.token_stats()
        assert stats["created"] == 15
        assert in_any_window(stats["created_at"]) <= LIMIT
