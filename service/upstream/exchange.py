"""What the HTTP layer saw: the facts `replicate.ReplicateError` throws away.

The client turns a 4xx/5xx into `ReplicateError(status, title, detail)` and drops the
response: no `Retry-After` header, no `retry_after` or `invalid_fields` body keys, and for a
prediction with an unknown status (`aborted`) only a pydantic ValidationError is left. An httpx
response event hook records the last response of the current request scope in an `Exchange`.

Concurrency: many predictions share one client (and so one hook). The hook writes into the
`Exchange` found in a ContextVar, and every call site opens its own scope (`exchange_scope`),
so concurrent tasks never see each other's responses. A task created inside the scope (an
`asyncio.shield`ed create) copies the context and so shares the same `Exchange` object.
"""

from __future__ import annotations

import contextlib
import email.utils
import math
import re
import time
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import httpx

_RESETS_IN = re.compile(r"~\s*(\d+(?:\.\d+)?)\s*s")


@dataclass
class Exchange:
    """The last response of one request scope (`None` until one arrives)."""

    response: httpx.Response | None = None

    def json(self) -> Any:
        """The response body as JSON, or None when there is none (not read, not JSON)."""
        if self.response is None:
            return None
        try:
            return self.response.json()
        except (httpx.ResponseNotRead, ValueError):
            return None

    def body_field(self, name: str) -> Any:
        data = self.json()
        return data.get(name) if isinstance(data, dict) else None

    def retry_after_s(self, detail: str | None = None) -> float | None:
        """Seconds to wait: body `retry_after`, else `Retry-After` header, else `~Ns` in detail."""
        from_body = _as_seconds(self.body_field("retry_after"))
        if from_body is not None:
            return from_body
        if self.response is not None:
            from_header = parse_retry_after_header(self.response.headers.get("Retry-After"))
            if from_header is not None:
                return from_header
        if detail:
            match = _RESETS_IN.search(detail)
            if match:
                return float(match.group(1))
        return None


_CURRENT: ContextVar[Exchange | None] = ContextVar("service_upstream_exchange", default=None)


@contextlib.contextmanager
def exchange_scope() -> Iterator[Exchange]:
    """Record the responses of the requests made inside this block into a fresh `Exchange`."""
    exchange = Exchange()
    token = _CURRENT.set(exchange)
    try:
        yield exchange
    finally:
        _CURRENT.reset(token)


async def record_response(response: httpx.Response) -> None:
    """httpx `response` event hook: remember the response (headers now, body once read)."""
    exchange = _CURRENT.get()
    if exchange is not None:
        exchange.response = response


def parse_retry_after_header(value: str | None) -> float | None:
    """`Retry-After` as seconds: delta-seconds or an HTTP-date; None when absent or unparseable."""
    if not value:
        return None
    value = value.strip()
    seconds = _as_seconds(value)
    if seconds is not None:
        return seconds
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - time.time())


def _as_seconds(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) and number >= 0 else None
