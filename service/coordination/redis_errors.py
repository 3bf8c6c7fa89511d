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

import re
from collections.abc import Awaitable
from typing import TypeVar

from redis import exceptions as redis_exceptions
from redis import sentinel as sync_sentinel
from redis.asyncio import sentinel as async_sentinel

from service.aio import raise_if_cancelling

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
    # What the cluster client raises once its redirections ran out (a MOVED storm: slots
    # moving, a failover under way), and MOVED from a client that does not follow it.
    (
        redis_exceptions.ClusterError,
        "Redis Cluster kept redirecting the command: its slots are moving or a failover is "
        "under way",
    ),
    (
        redis_exceptions.AskError,
        "Redis answered with a Cluster redirection: REDIS_URL names a Cluster node, set "
        "REDIS_CLUSTER=true",
    ),
    (
        redis_exceptions.SlotNotCoveredError,
        "Redis Cluster has slots no node serves (a shard is down or failing over)",
    ),
    (
        async_sentinel.MasterNotFoundError,
        "Redis Sentinel names no reachable primary (down, or a failover is under way)",
    ),
    (
        sync_sentinel.MasterNotFoundError,
        "Redis Sentinel names no reachable primary (down, or a failover is under way)",
    ),
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

# The same for the Sentinel client's "this primary was demoted" (a READONLY reply it turned into
# a ConnectionError, after which it asks the sentinels again), and for the cluster client's
# failures that have no class of their own: only their text tells an outage from a bug (a
# command without a key, keys of several slots).
_TEXT_REASONS = {
    "The previous master is now a slave": (
        "Redis primary was demoted by a failover: the next call goes to the new primary"
    ),
    "Redis Cluster cannot be connected": "Redis Cluster is unreachable: no node answered",
    "All slots are not covered": (
        "Redis Cluster has slots no node serves (a shard is down or failing over)"
    ),
}

# Where redis-py says it failed ("Error 111 connecting to 10.0.0.5:6379. ...", "Timeout reading
# from node-a:6379"): the host and port only, never a URL, so never a password.
_ADDRESS = re.compile(r"(?:connecting to|reading from|writing to) (\[[\w.:]+\]:\d+|[\w.:-]+:\d+)")
# The reasons that name the server when redis-py's message does, and how.
_LOCATED = {
    "Redis is unreachable": "Redis is unreachable at {}",
    "Redis did not answer in time": "Redis did not answer in time ({})",
}


def _located(reason: str, exc: BaseException) -> str:
    """`reason` with the server's host:port, where redis-py's message names it (a Cluster
    node, or the primary a Sentinel named: not necessarily the one REDIS_URL names)."""
    template = _LOCATED.get(reason)
    found = _ADDRESS.search(str(exc)) if template else None
    return template.format(found.group(1)) if template and found else reason


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
    if isinstance(exc, redis_exceptions.MaxConnectionsError):
        # A Cluster node's connections all busy: the cluster client fails at once, no wait.
        limit = getattr(getattr(exc, "connection", None), "max_connections", 0)
        return CoordinationSaturated(max_connections=int(limit), waited_s=0.0)
    if isinstance(exc, (redis_exceptions.ConnectionError, redis_exceptions.RedisClusterException)):
        for prefix, reason in _TEXT_REASONS.items():
            if str(exc).startswith(prefix):
                return CoordinationUnavailable(reason, detail=detail)
    for exception_class, reason in _REASONS:
        if isinstance(exc, exception_class):
            return CoordinationUnavailable(_located(reason, exc), detail=detail)
    if type(exc) is redis_exceptions.ResponseError:
        code_reason = _UNCLASSIFIED_CODES.get(str(exc).split(" ", 1)[0])
        if code_reason is not None:
            return CoordinationUnavailable(code_reason, detail=detail)
    return None


async def guarded(operation: Awaitable[T]) -> T:
    try:
        result = await operation
    except (redis_exceptions.RedisError, redis_exceptions.RedisClusterException, OSError) as exc:
        mapped = unavailable(exc)
        if mapped is None:
            raise
        raise mapped from exc
    raise_if_cancelling()  # a cancelled acquire must never hand back a lease
    return result
