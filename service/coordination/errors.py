"""Errors of the coordination library. They carry context as attributes; the HTTP service maps
them to its own errors at its boundary, another service may catch them directly.

    CoordinationError
    ├── CoordinationUnavailable   Redis cannot be used: unreachable, too slow, out of memory,
    │   │                         read-only, loading... (fail closed; `reason` says which)
    │   └── CoordinationSaturated this replica's Redis connections all stayed busy for the whole
    │                             pool wait (back-pressure: Redis itself may be healthy)
    ├── SemaphoreNotFound         no semaphore with that id
    ├── SemaphoreExists           create() of an id that exists
    ├── InvalidLimit              limit < 1 or not an integer
    ├── AcquireTimeout            the wait for a slot or a window token ran out
    └── LeaseLost                 a lease expired before it was renewed or released
"""

from __future__ import annotations


class CoordinationError(Exception):
    pass


class CoordinationUnavailable(CoordinationError):
    """No limit can be checked, so nothing is admitted (fail closed).

    `reason` (also the message) is one sentence for the people who see it, an API caller or an
    operator: what is wrong, without redis-py's wording, e.g. "Redis is out of memory".
    `detail` is what redis-py said, for logs (the redis-py exception is also the `__cause__`).
    `retry_after_s` is a hint for the caller's next try."""

    def __init__(
        self,
        reason: str = "Redis is unreachable",
        *,
        detail: str = "",
        retry_after_s: float = 5.0,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail
        self.retry_after_s = retry_after_s


class CoordinationSaturated(CoordinationUnavailable):
    """Every connection of this process's pool stayed busy for the whole pool wait.

    Redis may be healthy: this process has more Redis calls in flight than its pool holds
    (REDIS_MAX_CONNECTIONS), or Redis answers slowly. Still fail closed, but a caller may try
    again soon, or on another replica."""

    def __init__(self, *, max_connections: int, waited_s: float) -> None:
        super().__init__(
            f"This replica is saturated: all {max_connections} of its Redis connections stayed "
            f"busy for {waited_s:g}s",
            retry_after_s=1.0,
        )
        self.max_connections = max_connections
        self.waited_s = waited_s


class SemaphoreNotFound(CoordinationError):
    def __init__(self, semaphore_id: str) -> None:
        super().__init__(f"Semaphore '{semaphore_id}' not found")
        self.semaphore_id = semaphore_id


class SemaphoreExists(CoordinationError):
    def __init__(self, semaphore_id: str) -> None:
        super().__init__(f"Semaphore '{semaphore_id}' already exists")
        self.semaphore_id = semaphore_id


class InvalidLimit(CoordinationError, ValueError):
    def __init__(self, limit: object) -> None:
        super().__init__(f"limit must be an integer >= 1, got {limit!r}")
        self.limit = limit


class AcquireTimeout(CoordinationError):
    """`scope` is "semaphore", "account_concurrency" or "account_rate" (set by the caller)."""

    def __init__(
        self,
        *,
        scope: str,
        limit_id: str,
        limit: int,
        waited_s: float,
        retry_after_s: float,
        position: int = 0,
    ) -> None:
        super().__init__(
            f"Timed out after {waited_s:.1f}s waiting for {scope} limit '{limit_id}' "
            f"(limit {limit}); retry after {retry_after_s:.0f}s"
        )
        self.scope = scope
        self.limit_id = limit_id
        self.limit = limit
        self.waited_s = waited_s
        self.retry_after_s = retry_after_s
        self.position = position


class LeaseLost(CoordinationError):
    def __init__(self, semaphore_id: str, lease_id: str) -> None:
        super().__init__(f"Lease {lease_id} on '{semaphore_id}' was lost (expired unrenewed)")
        self.semaphore_id = semaphore_id
        self.lease_id = lease_id
