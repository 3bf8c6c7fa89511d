"""Predictions Replicate told us about by webhook, handed to the run that polls them.

A run waiting between two polls (PredictionRun._poll) waits here instead of sleeping: a
verified `completed` webhook for its prediction (POST /replicate/webhook on any replica, fanned
out to every replica through Redis) ends the wait with the prediction's JSON, so the task
completes without waiting for its next poll. Arrivals are kept a minute (a webhook can beat
the create's answer), at most MAX_KEPT.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from typing import Any

KEEP_S = 60.0
MAX_KEPT = 10_000


class Arrivals:
    def __init__(self) -> None:
        self._kept: OrderedDict[str, tuple[float, dict[str, Any]]] = OrderedDict()
        self._waiters: dict[str, set[asyncio.Future[dict[str, Any]]]] = {}
        self.delivered = 0

    def deliver(self, prediction_id: str, prediction: dict[str, Any]) -> None:
        now = time.monotonic()
        self._kept[prediction_id] = (now, prediction)
        self._kept.move_to_end(prediction_id)
        while self._kept and (
            len(self._kept) > MAX_KEPT or next(iter(self._kept.values()))[0] < now - KEEP_S
        ):
            self._kept.popitem(last=False)
        for waiter in self._waiters.pop(prediction_id, set()):
            if not waiter.done():
                waiter.set_result(prediction)
                self.delivered += 1

    async def wait(self, prediction_id: str, timeout_s: float) -> dict[str, Any] | None:
        """The prediction's JSON if a webhook brings it within `timeout_s` (or brought it
        already), else None."""
        kept = self._kept.get(prediction_id)
        if kept is not None:
            return kept[1]
        waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(prediction_id, set()).add(waiter)
        try:
            return await asyncio.wait_for(asyncio.shield(waiter), timeout_s)
        except TimeoutError:
            return None
        finally:
            waiters = self._waiters.get(prediction_id)
            if waiters is not None:
                waiters.discard(waiter)
                if not waiters:
                    del self._waiters[prediction_id]
