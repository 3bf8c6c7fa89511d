"""Run a route's work in a task that dies with its caller.

The work runs in its own task while the route polls `request.is_disconnected()` every
WATCH_INTERVAL_S: when the caller hangs up (or the route itself is cancelled, e.g. at shutdown)
the task is cancelled and awaited until it has cleaned up — a generation cancels its prediction
and releases its slots, a lease wait leaves the queue — before the route answers 499.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from fastapi import Request

from service.aio import cancel_and_wait
from service.api import Services
from service.api.body import ClientClosedRequest

log = logging.getLogger("service.api.watch")

T = TypeVar("T")
WATCH_INTERVAL_S = 0.3


async def until_disconnected(
    request: Request,
    found: Services,
    work: Coroutine[Any, Any, T],
    *,
    message: str,
    undo: Callable[[T], Awaitable[object]] | None = None,
) -> T:
    """`work`'s result, unless the caller hangs up first (→ ClientClosedRequest(message)).
    `undo` gives back a result the work produced in the instant it was abandoned."""
    task: asyncio.Task[T] = asyncio.create_task(work)
    found.inflight.add(task)  # shutdown cancels and awaits these too
    task.add_done_callback(found.inflight.discard)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=WATCH_INTERVAL_S)
            if done:
                return task.result()
            if await request.is_disconnected():
                log.info("client disconnected: %s", message)
                await cancel_and_wait(task, undo)
                raise ClientClosedRequest(message)
    except asyncio.CancelledError:
        await cancel_and_wait(task, undo)
        raise
