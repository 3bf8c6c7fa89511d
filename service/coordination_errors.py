"""The one mapping from the coordination library's errors to the service's answers.

Every boundary where coordination is called from a request (generation, the semaphore and
lease routes, jobs) maps through `service_error`; what differs between them is only how the
semaphore is named in a message and what cannot happen while Redis is away:

    AcquireTimeout            429 LimitTimeout: which limit, how long we waited, Retry-After
    SemaphoreNotFound         404 "<Subject> '<id>' not found"
    SemaphoreExists           409, naming the PATCH that changes a limit
    InvalidLimit              400 naming the field and its rule
    CoordinationUnavailable   503, with Redis' reason and Retry-After when it gave one
    anything else             503 "unreachable" (fail closed: no limit can be checked)
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

from service.config import LIMIT_RULE
from service.coordination import (
    AcquireTimeout,
    CoordinationError,
    CoordinationUnavailable,
    InvalidLimit,
    SemaphoreExists,
    SemaphoreNotFound,
)
from service.errors import BadRequest, Conflict, LimitTimeout, NotFound, ServiceError, Unavailable


@dataclass(frozen=True)
class Context:
    """Where the error is answered: how it names a semaphore, and what Redis' absence stops."""

    subject: str  # "External semaphore" (generation) or "Semaphore" (its own routes)
    stops: str  # "no generation can start", "leases cannot be granted, ..."


GENERATION = Context("External semaphore", "no generation can start")
SEMAPHORES = Context("Semaphore", "semaphores cannot be read or changed")
LEASES = Context("Semaphore", "leases cannot be granted, renewed or released")
JOBS = Context("External semaphore", "jobs cannot be submitted, read or cancelled")

# What each AcquireTimeout scope is called in an answer.
_LIMIT_NAMES = {
    "semaphore": "{subject} '{id}'",
    "account_concurrency": "the account's concurrency limit (REPLICATE_CONCURRENT_LIMIT)",
    "account_rate": "the account's requests-per-minute limit (REPLICATE_REQUESTS_PER_MINUTE)",
}


def service_error(exc: CoordinationError, context: Context = GENERATION) -> ServiceError:
    if isinstance(exc, AcquireTimeout):
        subject = context.subject[0].lower() + context.subject[1:]
        what = _LIMIT_NAMES.get(exc.scope, exc.scope).format(subject=subject, id=exc.limit_id)
        return LimitTimeout(
            f"Timed out after {exc.waited_s:.1f}s waiting for {what} (limit {exc.limit}); "
            f"retry after {max(1, math.ceil(exc.retry_after_s))}s",
            scope=exc.scope,
            limit_id=exc.limit_id if exc.scope == "semaphore" else "account",
            retry_after_s=exc.retry_after_s,
        )
    if isinstance(exc, SemaphoreNotFound):
        return NotFound(f"{context.subject} '{exc.semaphore_id}' not found")
    if isinstance(exc, SemaphoreExists):
        return Conflict(
            f"Semaphore '{exc.semaphore_id}' already exists; use PATCH "
            f"/global-semaphores/{exc.semaphore_id} to change its limit",
            fields={"semaphore_id": exc.semaphore_id},
        )
    if isinstance(exc, InvalidLimit):
        return BadRequest(f"Invalid field 'limit': {LIMIT_RULE}")
    return unavailable(exc, context)


def unavailable(exc: CoordinationError | None = None, context: Context = GENERATION) -> Unavailable:
    """Fail closed: no limit can be checked, so nothing starts. Says why when Redis said."""
    if not isinstance(exc, CoordinationUnavailable):
        return Unavailable(
            f"Coordination store (Redis) is unreachable; {context.stops} until it is back",
            headers={"Retry-After": "5"},
        )
    return Unavailable(
        f"Coordination store (Redis) cannot be used: {exc.reason}; {context.stops} until it "
        "is back",
        fields={"reason": exc.reason},
        headers={"Retry-After": str(max(1, math.ceil(exc.retry_after_s)))},
    )


@contextlib.contextmanager
def answered_as(context: Context) -> Iterator[None]:
    """Coordination errors raised in the block become the service's answers."""
    try:
        yield
    except CoordinationError as exc:
        raise service_error(exc, context) from None
