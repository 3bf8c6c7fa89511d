"""Reads the registry does not offer: an account's window logs and the list of accounts.

Read-only, and bounded: a window log holds at most its limit of entries inside the window, and
only a few are fetched; accounts are found with SCAN in pages (never KEYS), on every primary of
a Cluster (SemaphoreRegistry.scan). The client is the Coordinator's: a single server's, a
Sentinel primary's or a Cluster's (whose commands go to the node of their key's slot; TIME to
any node).
"""

from __future__ import annotations

from dataclasses import dataclass

from service.coordination import Coordinator, WindowName
from service.fingerprint import ACCOUNT


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


async def read_window(
    coordinator: Coordinator, window: WindowName, limit: int, window_s: float, *, scope: str
) -> WindowReport:
    """One window's report (SlidingWindow.inspect). `scope`: how the report names it."""
    state = await coordinator.window.inspect(window, limit, window_s)
    oldest_age_s = (
        None
        if state.oldest_leaves_in_ms is None
        else (window_s * 1000 - state.oldest_leaves_in_ms) / 1000
    )
    return WindowReport(
        scope=scope,
        key=coordinator.window.key(window),
        window_s=window_s,
        limit=limit,
        admissions=state.admissions,
        remaining=max(0, limit - state.admissions),
        oldest_age_s=None if oldest_age_s is None else round(oldest_age_s, 3),
        next_free_in_s=round(state.next_free_in_ms / 1000, 3),
    )


async def scan_accounts(coordinator: Coordinator) -> list[str]:
    """Fingerprints of every account whose concurrency semaphore exists (its meta key lives 24 h
    after the account's last acquisition or renewal)."""
    return await coordinator.registry.scan(ACCOUNT)
