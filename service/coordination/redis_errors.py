"""The one boundary where redis-py's failures become CoordinationUnavailable, and where a
cancellation that redis-py swallowed is restored.

Redis error replies are mapped by the class redis-py's parser gives them (its
`BaseParser.EXCEPTION_CLASSES`): the parser strips the code ("OOM", "READONLY") from the text,
so the text cannot be matched. Codes the parser has no class for arrive as a plain
ResponseError with the code still in front, and only those are matched by code.

Every reply below means that nothing can be written safely, or that this replica cannot tell:
fail closed, like an outage. Any other ResponseError is a bug (a script error, a wrong type) and
propagates unchanged.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from redis import exceptions as redis_exceptions

from .connection import PoolExhausted
from .errors import CoordinationSaturated, CoordinationUnavailable

T = TypeVar("T")

# Most specific first: MasterDownError is a ClusterDownError, BusyLoadingError and
# AuthenticationError are ConnectionErrors.
_REASONS: tuple[tuple[type[Exception], str], ...] = (
    (redis_exceptions.OutOfMemoryError, "Redis is out of memory (used memory > maxmemory)"),
    (
        redis_exceptions.ReadOnlyError,
        "Redis is a read-only replica: writes need the primary (REDIS_URL names a replica, or "
        "a failover demoted this server)",
    ),
    (redis_exceptions.MasterDownError, "Redis replica has lost its link to the primary"),
    (redis_exceptions.ClusterDownError, "Redis Cluster is down"),
    (redis_exceptions.TryAgainError, "Redis Cluster is moving this key's slot"),
    (redis_exceptions.BusyLoadingError, "Redis is loading its dataset into memory"),
    (redis_exceptions.AuthenticationError, "Redis refused this service's credentials"),
    (redis_exceptions.AuthorizationError, "Redis refused this service's credentials"),
    (
        redis_exceptions.NoPermissionError,
        "Redis refused a command: its ACL user lacks a permission",
    ),
    (redis_exceptions.TimeoutError, "Redis did not answer in time"),
    (TimeoutError, "Redis did not answer in time"),
    (redis_exceptions.ConnectionError, "Redis is unreachable"),
    (OSError, "Redis is unreachable"),
)

# redis-py's parser makes "ERR max number of clients reached" a plain ConnectionError: only its
# text tells it from a refused connect.
_MAXCLIENTS = "max number of clients reached"

# Error codes redis-py's parser has no class for (its ResponseError keeps the code in front).
_UNCLASSIFIED_CODES = {
    "BUSY": "Redis is busy running a long script",
    "NOREPLICAS": "Redis has too few replicas in sync to accept writes (min-replicas-to-write)",
    "MISCONF": "Redis refuses writes: it cannot save its snapshots to disk",
}


def unavailable(exc: BaseException) -> CoordinationUnavailable | None:
    """The fail-closed error for one of redis-py's exceptions, or None: not an availability
    problem (a script error, a wrong type: a bug that must surface as itself)."""
    if isinstance(exc, PoolExhausted):
        return CoordinationSaturated(max_connections=exc.max_connections, waited_s=exc.waited_s)
    detail = f"{type(exc).__name__}: {exc}"
    if type(exc) is redis_exceptions.ConnectionError and str(exc) == _MAXCLIENTS:
        return CoordinationUnavailable(
            "Redis refuses new connections: it has reached maxclients", detail=detail
        )
    for exception_class, reason in _REASONS:
        if isinstance(exc, exception_class):
            return CoordinationUnavailable(reason, detail=detail)
    if type(exc) is redis_exceptions.ResponseError:
        code_reason = _UNCLASSIFIED_CODES.get(str(exc).split(" ", 1)[0])
        if code_reason is not None:
            return CoordinationUnavailable(code_reason, detail=detail)
    return None


async def guarded(operation: Awaitable[T]) -> T:
    try:
        result = await operation
    except (redis_exceptions.RedisError, OSError) as exc:
        mapped = unavailable(exc)
        if mapped is None:
            raise
        raise mapped from exc
    # On Python 3.11, redis-py's asyncio client loses a cancellation that lands inside its read
    # timeout (measured: about 2 in 3 cancels of an in-flight command return normally). A task
    # that was asked to stop must stop: a cancelled acquire must never hand back a lease.
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
    return result
