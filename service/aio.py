"""The one asyncio toolkit: finishing work under cancellation, stopping tasks, keeping
background tasks. A leaf module (the standard library only), so every layer uses it.

Three ways to end a wait on a task, by what the caller needs:

    cancel_and_wait(task)     the task must stop, and we wait until it has cleaned up (a
                              second cancellation of ours does not cut that wait short)
    settle(task, limit_s)     the task should finish (a create whose id we need, a cancel):
                              wait up to a limit, even through our own cancellation
    shielded(op, what=...)    cleanup that must run to its end even if we are cancelled (a
                              release); its failure is logged, never raised

No helper here swallows an exception silently: a failure is either re-raised, returned, or
logged with what failed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

log = logging.getLogger("service.aio")

T = TypeVar("T")


def cancelling() -> bool:
    """Whether the current task has been asked to stop (a cancellation is pending)."""
    task = asyncio.current_task()
    return bool(task is not None and task.cancelling())


def raise_if_cancelling() -> None:
    """Re-raise a cancellation that a library swallowed. On Python 3.11 redis-py's asyncio
    client loses a cancellation that lands inside its read timeout (measured: about 2 in 3
    cancels of an in-flight command return normally); a task asked to stop must stop."""
    if cancelling():
        raise asyncio.CancelledError


class Background:
    """Tasks that run beside the caller's work (annotations, adoptions, shielded cleanups):
    kept referenced until done, their failures logged, all cancelled and awaited by close()."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, work: Coroutine[Any, Any, object]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(work)
        self.track(task)
        return task

    def track(self, task: asyncio.Task[Any]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def __len__(self) -> int:
        return len(self._tasks)

    def __iter__(self) -> Any:
        return iter(list(self._tasks))

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.info(
                "background work failed",
                extra={"group": self._name, "error": f"{type(exc).__name__}: {exc}"},
            )

    async def close(self) -> None:
        """Cancel every task and wait until each has cleaned up."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


# Shielded cleanups outlive the task that started them: kept here until done.
_cleanups = Background("cleanup")


async def shielded(operation: Awaitable[T], *, what: str = "cleanup") -> T | None:
    """Run cleanup to completion even if the caller is cancelled meanwhile (the caller's
    cancellation is raised at once; the cleanup goes on). A failure is logged with `what` and
    answered None: a slot that cannot be released now expires with its lease."""
    task: asyncio.Task[T] = asyncio.ensure_future(operation)
    _cleanups.track(task)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log.info("%s failed: %s: %s", what, type(exc).__name__, exc)
        return None


async def cancel_and_wait(
    task: asyncio.Task[T], undo: Callable[[T], Awaitable[object]] | None = None
) -> None:
    """Cancel and wait until the task has cleaned up. A second cancellation of the caller does
    not cut that wait short (the cleanup is bounded by the work's own timeouts); it is
    re-raised once the task is done. `undo` gives back a result the task produced in the
    instant it was cancelled; the task's own failure is not the caller's answer."""
    task.cancel()
    interrupted = False
    while not task.done():
        try:
            await asyncio.wait({task})
        except asyncio.CancelledError:
            interrupted = True
    if not task.cancelled():
        if (exc := task.exception()) is not None:
            log.debug("cancelled work ended with %s", type(exc).__name__)
        elif undo is not None:
            await shielded(undo(task.result()), what="undoing abandoned work")
    if interrupted:
        raise asyncio.CancelledError


async def stop_task(task: asyncio.Task[Any]) -> None:
    """Cancel until the task is done. One cancel is not always enough: a cancellation that lands
    inside a client library's own timeout handling can be swallowed there, and the task would
    then go on to its next sleep and never end."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=0.5)
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.info("stopped task had failed: %s: %s", type(exc).__name__, exc)


@dataclass(frozen=True)
class Settled(Generic[T]):
    """How `settle` ended: the task's result (None if it failed or ran out of time)."""

    result: T | None
    finished: bool  # the task completed (with a result or an error) within the limit
    interrupted: bool  # the waiting task was cancelled meanwhile: the caller must re-raise
    error: BaseException | None = None


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
    if not task.done():
        task.add_done_callback(_retrieve)
        task.cancel()
        return Settled(None, finished=False, interrupted=interrupted)
    if task.cancelled():
        return Settled(None, finished=True, interrupted=interrupted)
    if (exc := task.exception()) is not None:
        return Settled(None, finished=True, interrupted=interrupted, error=exc)
    return Settled(task.result(), finished=True, interrupted=interrupted)


def _retrieve(task: asyncio.Task[Any]) -> None:
    """A task left to finish on its own: its failure is the caller's no longer."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.debug("abandoned work ended with %s", type(exc).__name__)
