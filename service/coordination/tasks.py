"""Stopping background tasks reliably."""

from __future__ import annotations

import asyncio


async def stop_task(task: asyncio.Task[None]) -> None:
    """Cancel until the task is done. One cancel is not always enough: a cancellation that lands
    inside a client library's own timeout handling can be swallowed there, and the task would
    then go on to its next sleep and never end."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=0.5)
    if not task.cancelled() and task.exception() is not None:
        return
