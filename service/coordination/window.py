"""An exact sliding-window rate limit: at most N admissions in any span of a given length.

A window is named by a scope of its own, or is attached to a semaphore (keys.AttachedWindow),
whose slot acquisitions can then take an entry with the slot (Coordinator.acquire). A worked
timeline, limit 2 per 60 s (Redis server time):

    t=0    take → log [0]        admitted, 1 left
    t=10   take → log [0,10]     admitted, 0 left
    t=30   take → full           wait = 0 + 60 - 30 = 30 s (exact: when t=0 leaves the window)
    t=60   take → log [10,60]    admitted (t=0 left); a fixed window would have allowed 2 more
                                 at t=60 on top of t=10 already: never more than 2 in any 60 s here

Rejected attempts write nothing, so hammering a full window does not push admission back.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass

from .connection import RedisClient
from .errors import AcquireTimeout
from .keys import KeySpace, WindowName
from .redis_errors import guarded
from .script_calls import ScriptCalls
from .scripts import Scripts

WINDOW_S = 60.0


@dataclass(frozen=True)
class WindowResult:
    admitted: bool
    remaining: int
    wait_s: float
    entry_id: str = ""  # the admitted entry, for give_back


@dataclass(frozen=True)
class WindowState:
    """A window as an operator sees it, at `now_ms` (Redis server time)."""

    now_ms: int
    admissions: int  # entries in the last window
    oldest_leaves_in_ms: float | None  # when the oldest of them leaves it (None: empty)
    next_free_in_ms: float  # when the next entry may be taken (0: now)


class SlidingWindow:
    def __init__(self, *, client: RedisClient, scripts: Scripts, keyspace: KeySpace) -> None:
        self._client = client
        self._calls = ScriptCalls(scripts, keyspace)
        self._keyspace = keyspace

    def key(self, window: WindowName) -> str:
        """The window's log (a sorted set: entry id -> Redis ms), for read-only readers."""
        return self._keyspace.window(window)

    async def take(
        self, window: WindowName, limit: int, window_s: float = WINDOW_S
    ) -> WindowResult:
        """One try: admitted with an entry, or the exact wait until one frees."""
        entry_id = secrets.token_hex(8)
        taken = await guarded(
            self._calls.take_window(
                window, limit=limit, window_ms=int(window_s * 1000), request_id=entry_id
            )
        )
        return WindowResult(
            admitted=taken.admitted,
            remaining=taken.remaining,
            wait_s=taken.wait_ms / 1000,
            entry_id=entry_id if taken.admitted else "",
        )

    async def give_back(self, window: WindowName, entry_id: str) -> None:
        """Remove an entry whose admission was never used (the request it admitted was not
        made), so that it does not count against the window."""
        await guarded(self._client.zrem(self._keyspace.window(window), entry_id))

    async def wait_take(
        self,
        window: WindowName,
        limit: int,
        timeout_s: float,
        *,
        window_s: float = WINDOW_S,
        limit_scope: str = "window",
        limit_id: str = "",
    ) -> WindowResult:
        """Take, sleeping the exact wait the script names, for at most `timeout_s`; then
        AcquireTimeout, naming `limit_scope` and `limit_id` (default: the window's scope)."""
        started = time.monotonic()
        while True:
            result = await self.take(window, limit, window_s)
            if result.admitted:
                return result
            waited = time.monotonic() - started
            if waited + result.wait_s > timeout_s:
                raise AcquireTimeout(
                    scope=limit_scope,
                    limit_id=limit_id or _label(window),
                    limit=limit,
                    waited_s=waited,
                    retry_after_s=result.wait_s,
                )
            # A little jitter so that waiters due at the same moment do not collide exactly.
            await asyncio.sleep(result.wait_s + secrets.randbelow(20) / 1000)

    async def inspect(
        self, window: WindowName, limit: int, window_s: float = WINDOW_S, *, now_ms: int = 0
    ) -> WindowState:
        """Read-only, mirroring take_from_window (redis_scripts/lib/common.lua): an entry counts
        while its score > now - window; when full, the next entry frees 1 ms after the one at
        rank (count - limit) leaves the window. `now_ms`: Redis time read already (0: read it).
        At most three commands, whatever the window holds."""
        key = self._keyspace.window(window)
        if not now_ms:
            seconds, micros = await guarded(self._client.time())
            now_ms = int(seconds) * 1000 + int(micros) // 1000
        window_ms = int(window_s * 1000)
        low = f"({now_ms - window_ms}"
        pipe = self._client.pipeline(transaction=False)
        pipe.zcount(key, low, "+inf")
        pipe.zrangebyscore(key, low, "+inf", start=0, num=1, withscores=True)
        count_reply, oldest = await guarded(pipe.execute())
        admissions = int(count_reply)
        next_free_in_ms = 0.0
        if admissions >= limit:
            entry = await guarded(
                self._client.zrangebyscore(
                    key, low, "+inf", start=admissions - limit, num=1, withscores=True
                )
            )
            if entry:
                next_free_in_ms = max(0.0, float(entry[0][1]) + window_ms - now_ms + 1)
        return WindowState(
            now_ms=now_ms,
            admissions=admissions,
            oldest_leaves_in_ms=float(oldest[0][1]) + window_ms - now_ms if oldest else None,
            next_free_in_ms=next_free_in_ms,
        )

    async def count(self, window: WindowName, window_s: float = WINDOW_S) -> int:
        """Admissions in the last window (for operators)."""
        key = self._keyspace.window(window)
        seconds, micros = await guarded(self._client.time())
        now_ms = int(seconds) * 1000 + int(micros) // 1000
        return int(
            await guarded(self._client.zcount(key, now_ms - int(window_s * 1000) + 1, "+inf"))
        )


def _label(window: WindowName) -> str:
    return window if isinstance(window, str) else window.semaphore_id
