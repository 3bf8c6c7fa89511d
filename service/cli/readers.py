"""Reads the registry does not offer: an account's window logs and the list of accounts.

Read-only, and bounded: a window log holds at most its limit of entries inside the window, and
only a few are fetched; accounts are found with SCAN in pages (never KEYS), on every primary of
a Cluster (SemaphoreRegistry.scan). The client is the Coordinator's: a single server's, a
Sentinel primary's or a Cluster's (whose commands go to the node of their key's slot; TIME to
any node).
"""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis

from service.coordination import ACCOUNT, Coordinator, WindowName
from service.coordination.redis_errors import guarded


@dataclass(frozen=True)
class WindowReport:
    """One sliding window as an operator sees it (Redis server time)."""

    scope: str
    key: str
    window_s: float
    limit: int
    admissions: int
    remaining: int
    oldest_age_s: float | None
    next_free_in_s: float


async def server_now_ms(client: aioredis.Redis) -> int:
    seconds, micros = await guarded(client.time())
    return int(seconds) * 1000 + int(micros) // 1000


async def read_window(
    coordinator: Coordinator, window: WindowName, limit: int, window_s: float, *, scope: str
) -> WindowReport:
    """Mirrors take_from_window (redis_scripts/lib/common.lua): an entry counts while its
    score > now - window, and when full the next slot frees 1 ms after the entry at rank
    (count - limit) leaves the window. `scope`: how the report names the window."""
    client = coordinator.redis
    key = coordinator.window.key(window)
    window_ms = int(window_s * 1000)
    now = await server_now_ms(client)
    low = f"({now - window_ms}"
    pipe = client.pipeline(transaction=False)
    pipe.zcount(key, low, "+inf")
    pipe.zrangebyscore(key, low, "+inf", start=0, num=1, withscores=True)
    count_reply, oldest_reply = await guarded(pipe.execute())
    admissions = int(count_reply)
    oldest_age_s = (now - float(oldest_reply[0][1])) / 1000 if oldest_reply else None
    next_free_in_s = 0.0
    if admissions >= limit:
        entry = await guarded(
            client.zrangebyscore(key, low, "+inf", start=admissions - limit, num=1, withscores=True)
        )
        if entry:
            next_free_in_s = max(0.0, (float(entry[0][1]) + window_ms - now + 1) / 1000)
    return WindowReport(
        scope=scope,
        key=key,
        window_s=window_s,
        limit=limit,
        admissions=admissions,
        remaining=max(0, limit - admissions),
        oldest_age_s=None if oldest_age_s is None else round(oldest_age_s, 3),
        next_free_in_s=round(next_free_in_s, 3),
    )


async def scan_accounts(coordinator: Coordinator) -> list[str]:
    """Fingerprints of every account whose concurrency semaphore exists (its meta key lives 24 h
    after the account's last acquisition or renewal)."""
    return await coordinator.registry.scan(ACCOUNT)
