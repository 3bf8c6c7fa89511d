"""Small helpers for driving a cluster of replicas over HTTP."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from tests.fixtures.cluster import Cluster, admin_headers


def create_semaphore(cluster: Cluster, semaphore_id: str, limit: int) -> None:
    response = httpx.post(
        cluster.url(0) + "/global-semaphores",
        json={"semaphore_id": semaphore_id, "limit": limit},
        headers=admin_headers(),
        timeout=10,
    )
    assert response.status_code == 201, response.text


def semaphore_view(cluster: Cluster, semaphore_id: str, replica: int = 0) -> dict[str, Any]:
    response = httpx.get(f"{cluster.url(replica)}/global-semaphores/{semaphore_id}", timeout=10)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def max_overlap(intervals: list[list[float | None]]) -> int:
    """Most intervals open at once; an open end counts as still running."""
    events: list[tuple[float, int]] = []
    for start, end in intervals:
        assert start is not None
        events.append((start, 1))
        events.append((end if end is not None else float("inf"), -1))
    events.sort(key=lambda item: (item[0], item[1]))
    current = peak = 0
    for _, delta in events:
        current += delta
        peak = max(peak, current)
    return peak


async def post_all(
    cluster: Cluster, path: str, bodies: list[dict[str, Any]], *, timeout: float = 120.0
) -> list[httpx.Response]:
    """POST every body concurrently, spread round-robin over the replicas."""
    async with httpx.AsyncClient(timeout=timeout, headers=admin_headers()) as client:
        return list(
            await asyncio.gather(
                *(
                    client.post(cluster.url(i % cluster.count) + path, json=body)
                    for i, body in enumerate(bodies)
                )
            )
        )


async def eventually(
    check: Callable[[], Awaitable[bool] | bool], timeout_s: float, interval_s: float = 0.1
) -> float:
    """Wait until `check` is true; returns the seconds it took."""
    started = time.monotonic()
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return time.monotonic() - started
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"condition not met within {timeout_s}s")
        await asyncio.sleep(interval_s)
