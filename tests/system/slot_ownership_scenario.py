"""The scenario of tests/system/test_slot_ownership*.py (docs/slot-ownership.md).

Three replicas, the simulator, a real Redis; a semaphore of 2; the holders' predictions run
12 s, four times the lease TTL of 3 s. Replica 0 holds both slots, two callers wait on replica 1;
then replica 0 is killed, frozen, cut off from Redis or restarted. In every case, measured at the
simulator: never more than 2 predictions running at once, the waiting callers' predictions start
within 2 s of the orphans' cancellation, and nothing the service answered as succeeded was
cancelled. (The waiters' own predictions are short: nothing is checked after they start but
their end.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from tests.fixtures.cluster import TOKEN, Cluster
from tests.system.helpers import create_semaphore, eventually, max_overlap, semaphore_view

PREDICTION_S = 12.0
WAITER_PREDICTION_S = 2.0
LIMIT = 2


def body(prompt: str) -> dict[str, Any]:
    return {"model_name": "flux-dev", "prompt": prompt, "external_semaphore_id": "owned"}


# The create is held open for PREFER_WAIT_SECONDS (1 s here): a replica that vanishes within it
# never learned its predictions' ids; after it, the ids are in the leases' records.
ENV = {"PREFER_WAIT_SECONDS": "1"}


async def scenario(
    cluster: Cluster,
    client: httpx.AsyncClient,
    vanish: Callable[[], Awaitable[None]],
    *,
    named: bool = True,
) -> tuple[list[httpx.Response], list[httpx.Response]]:
    """Replica 0 takes both slots, replica 1 queues two callers, then `vanish` happens: after
    replica 0 learned its predictions' ids (`named`), or while its creates are still held."""
    create_semaphore(cluster, "owned", LIMIT)
    cluster.sim("PATCH", "/_sim/config", json={"latency_s": PREDICTION_S})
    holders = [
        asyncio.create_task(client.post(cluster.url(0) + "/generate", json=body(f"h{i}")))
        for i in range(LIMIT)
    ]
    await eventually(lambda: cluster.token_stats().get("created", 0) == LIMIT, 15)
    if named:

        def ids_known() -> bool:
            view = semaphore_view(cluster, "owned", 1)
            return all(h["prediction_id"] for h in view["holders"])

        await eventually(ids_known, 15)
    cluster.sim("PATCH", "/_sim/config", json={"latency_s": WAITER_PREDICTION_S})
    waiters = [
        asyncio.create_task(client.post(cluster.url(1) + "/generate", json=body(f"w{i}")))
        for i in range(LIMIT)
    ]
    await eventually(lambda: semaphore_view(cluster, "owned", 1)["waiting"] == LIMIT, 15)
    await vanish()
    served = await asyncio.gather(*waiters)
    first = await asyncio.gather(*holders, return_exceptions=True)
    return [r for r in first if isinstance(r, httpx.Response)], list(served)


def check_invariant(
    cluster: Cluster, served: list[httpx.Response], *, cancelled: bool = True
) -> None:
    assert [r.status_code for r in served] == [200] * LIMIT, [r.text for r in served]
    stats = cluster.token_stats()
    assert stats["created"] == 2 * LIMIT
    intervals = stats["intervals"]
    assert max_overlap(intervals) <= LIMIT, intervals
    # The holders' predictions (created first) ended, cancelled early when their ids were
    # known; the waiters' started within 2 s of the end that freed their slot.
    order = sorted(range(len(intervals)), key=lambda i: intervals[i][0])
    ended = sorted(intervals[i][1] for i in order[:LIMIT])
    started = sorted(intervals[i][0] for i in order[LIMIT:])
    for end, start in zip(ended, started, strict=True):
        assert end is not None
        if cancelled:
            assert end < intervals[order[0]][0] + PREDICTION_S - 1
        assert start - end <= 2.0, (start, end)
    assert stats["by_status"]["canceled"] == (LIMIT if cancelled else 0)
    # Nothing answered 200 was cancelled at the upstream.
    for response in served:
        prediction = httpx.get(
            f"{cluster.sim_url}/v1/predictions/{response.json()['prediction_id']}",
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=10,
        ).json()
        assert prediction["status"] == "succeeded"
    view = semaphore_view(cluster, "owned", 1)
    assert view["in_use"] == 0 and view["waiting"] == 0, view
