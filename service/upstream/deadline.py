"""`Cancel-After` on every create: Replicate itself ends each prediction by the run's deadline.

Replicate ends a prediction whose `Cancel-After` duration has passed (`aborted` if it never
started, `canceled` if it was running), so no prediction outlives its run, even if every replica
dies before it can cancel. Client 1.0.7 has no per-request headers, so the header goes in the way
`exchange.record_response` reads responses: the run opens `cancel_after_scope(seconds)` around
its create call, and an httpx `request` event hook (httpx documents that hooks may modify the
request) copies the value from a ContextVar onto that request. The hook also checks that it is a
create (a POST to `.../predictions`), so a GET or a cancel never carries it, whatever the scope.

The scope is opened inside the task that makes the request, so concurrent runs sharing one
client never see each other's value.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from contextvars import ContextVar

import httpx

HEADER = "Cancel-After"
MIN_CANCEL_AFTER_S = 5  # Replicate refuses shorter deadlines

_CURRENT: ContextVar[str | None] = ContextVar("service_upstream_cancel_after", default=None)


def cancel_after_s(remaining_s: float) -> int | None:
    """Whole seconds for the header (rounded up), or None when under Replicate's minimum."""
    if remaining_s < MIN_CANCEL_AFTER_S:
        return None
    return math.ceil(remaining_s)


@contextlib.contextmanager
def cancel_after_scope(seconds: int) -> Iterator[None]:
    """Creates made inside this block carry `Cancel-After: <seconds>s`."""
    token = _CURRENT.set(f"{seconds}s")
    try:
        yield
    finally:
        _CURRENT.reset(token)


def is_create(request: httpx.Request) -> bool:
    """POST /v1/predictions or POST /v1/models/{owner}/{name}/predictions (not .../cancel)."""
    return request.method == "POST" and request.url.path.endswith("/predictions")


async def add_cancel_after(request: httpx.Request) -> None:
    """httpx `request` event hook: add the scope's `Cancel-After` to a create request."""
    value = _CURRENT.get()
    if value is not None and is_create(request):
        request.headers[HEADER] = value
