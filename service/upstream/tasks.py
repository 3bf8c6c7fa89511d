"""Finishing work that must not be abandoned halfway: a create whose id we still need, a cancel."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Settled(Generic[T]):
    """How `settle` ended: the task's result (None if it failed or ran out of time)."""

    result: T | None
    finished: bool  # the task completed (with a result or an error) within the limit
    interrupted: bool  # the waiting task was cancelled meanwhile: the caller must re-raise


async def settle(task: asyncio.Task[T], limit_s: float) -> Settled[T]:
    """Wait up to `limit_s` for `task`, even if the current task is cancelled meanwhile.

    A cancellation of the waiter is absorbed and reported as `interrupted` (the caller re-raises
    it once the work is safe); the task itself is only cancelled when the limit runs out.
    """
    loop = asyncio.get_running_loop()
    end = loop.time() + limit_s
    interrupted = False
    while not task.done():
        remaining = end - loop.time()
        if remaining <= 0:
            break
        try:
            await asyncio.wait({task}, timeout=remaining)
        except asyncio.CancelledError:
            interrupted = True
    task.add_done_callback(_consume)
    if not task.done():
        task.cancel()
        return Settled(None, finished=False, interrupted=interrupted)
    if task.cancelled() or task.exception() is not None:
        return Settled(None, finished=True, interrupted=interrupted)
    return Settled(task.result(), finished=True, interrupted=interrupted)


def _consume(task: asyncio.Task[T]) -> None:
    """Mark a background task's exception as retrieved (no 'never retrieved' warning)."""
    if not task.cancelled():
        task.exception()
