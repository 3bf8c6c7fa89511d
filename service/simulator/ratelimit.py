"""Per-token sliding-window rate limits, one window per bucket ("create" and "other").

Timeline (limit 2, window 60 s)::

    t=0   hit → allowed, remaining 1      window [0]
    t=10  hit → allowed, remaining 0      window [0, 10]
    t=30  hit → refused, retry_after 30   (the hit at t=0 leaves the window at t=60)
    t=60  hit → allowed, remaining 0      window [10, 60]

Refused hits are not recorded, so a client that keeps retrying does not extend its own ban.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class RateDecision:
    allowed: bool
    remaining: int
    # Whole seconds until the oldest counted hit leaves the window (>= 1).
    reset_s: int


class SlidingWindowLimiter:
    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._hits: dict[tuple[str, str], deque[float]] = {}

    def hit(self, key: str, bucket: str, limit: int, now: float) -> RateDecision:
        """Count one request of `key` in `bucket` at `now` if the window has room."""
        hits = self._hits.setdefault((key, bucket), deque())
        while hits and hits[0] <= now - self.window_s:
            hits.popleft()
        allowed = len(hits) < limit
        if allowed:
            hits.append(now)
        reset_s = max(1, math.ceil(hits[0] + self.window_s - now)) if hits else 1
        return RateDecision(allowed, max(0, limit - len(hits)), reset_s)

    def clear(self) -> None:
        self._hits.clear()
