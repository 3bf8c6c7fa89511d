"""Errors of the coordination library. They carry context as attributes; the HTTP service maps
them to its own errors at its boundary, another service may catch them directly.

    CoordinationError
    ├── CoordinationUnavailable   Redis cannot be reached or answered too slowly (fail closed)
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
    def __init__(self, message: str = "Redis is unreachable; no limit can be checked") -> None:
        super().__init__(message)


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
