"""Event-loop lag: how late the loop wakes a task that asked to sleep for a set time.

A replica renews its leases from its event loop. When the loop stalls (one long CPU-bound
call), nothing renews, and a stall longer than LEASE_TTL_SECONDS loses the leases: Redis hands
the slots to other replicas while this one still works (over-admission). The monitor makes
every stall visible:

- every `interval_s` it sleeps and measures how much later than asked it woke up: the lag, the
  time ready callbacks waited for the loop;
- each sample goes to `on_sample` (Metrics.observe_loop_lag: the `event_loop_lag_seconds`
  histogram and the largest lag of the last minute);
- a stall of at least `warn_after_s` is logged at WARNING, naming how long it lasted.

Timeline, interval 0.1 s:

    t=0.00   the monitor sleeps until t=0.10
    t=0.05   a request holds the loop (decoding a hostile body) until t=1.35
    t=1.35   the monitor wakes: 1.25 s late → sample 1.25, WARNING "event loop stalled for
             1.25 s"; it sleeps again until t=1.45

The lag is only seen once the stall ends (nothing runs during it, the monitor included), and a
stall shorter than the interval may show partly; the histogram is about stalls, not averages.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable

log = logging.getLogger("service.observability.loop_lag")

INTERVAL_S = 0.1
# A stall this long is worth a log line: a few of them in a row approach a lease TTL.
WARN_AFTER_S = 1.0
RECENT_WINDOW_S = 60.0


class LoopLagMonitor:
    """Samples the lag of the running loop until stopped. `clock` and `sleep` are injectable
    (a test drives them; the service uses the loop's own)."""

    def __init__(
        self,
        on_sample: Callable[[float], None],
        *,
        interval_s: float = INTERVAL_S,
        warn_after_s: float = WARN_AFTER_S,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        self._on_sample = on_sample
        self.interval_s = interval_s
        self.warn_after_s = warn_after_s
        self._clock = clock
        self._sleep = sleep
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="loop-lag-monitor"
            )

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            started = self._clock()
            await self._sleep(self.interval_s)
            self.sample(max(0.0, self._clock() - started - self.interval_s))

    def sample(self, lag_s: float) -> None:
        try:
            self._on_sample(lag_s)
        except Exception:  # a broken listener must not stop the monitor
            log.exception("loop lag listener failed")
        if lag_s >= self.warn_after_s:
            log.warning(
                "event loop stalled for %.2f s: no task ran meanwhile (lease renewals, "
                "probes and requests included)",
                lag_s,
                extra={"stall_s": round(lag_s, 3)},
            )


class RecentMax:
    """The largest value added in the last `window_s` (a monotonic deque: O(1) amortized)."""

    def __init__(self, window_s: float = RECENT_WINDOW_S) -> None:
        self.window_s = window_s
        self._items: deque[tuple[float, float]] = deque()  # (time, value), values decreasing

    def add(self, now: float, value: float) -> None:
        while self._items and self._items[-1][1] <= value:
            self._items.pop()
        self._items.append((now, value))

    def value(self, now: float) -> float:
        while self._items and self._items[0][0] < now - self.window_s:
            self._items.popleft()
        return self._items[0][1] if self._items else 0.0
