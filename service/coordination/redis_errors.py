"""The one boundary where redis-py's failures become CoordinationUnavailable, and where a
cancellation that redis-py swallowed is restored."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from redis import exceptions as redis_exceptions

from .errors import CoordinationUnavailable

T = TypeVar("T")

# OOM ("command not allowed when used memory > maxmemory") and READONLY (a demoted master) mean
# nothing can be written safely: fail closed, like an outage.
_UNAVAILABLE_REPLIES = ("OOM", "READONLY", "LOADING", "MASTERDOWN", "BUSY")


async def guarded(operation: Awaitable[T]) -> T:
    try:
        result = await operation
    except (redis_exceptions.ConnectionError, redis_exceptions.TimeoutError, OSError) as exc:
        raise CoordinationUnavailable(f"Redis is unreachable: {type(exc).__name__}") from exc
    except redis_exceptions.ResponseError as exc:
        if str(exc).startswith(_UNAVAILABLE_REPLIES):
            raise CoordinationUnavailable(f"Redis refused the operation: {exc}") from exc
        raise
    # On Python 3.11, redis-py's asyncio client loses a cancellation that lands inside its read
    # timeout (measured: about 2 in 3 cancels of an in-flight command return normally). A task
    # that was asked to stop must stop: a cancelled acquire must never hand back a lease.
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
    return result
