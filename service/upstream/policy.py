"""Which failures are retried, and how long to wait: the one place that reads foreign errors.

Create (`POST .../predictions`) — the API has no idempotency key, so a retry must never risk a
second prediction (a duplicate is billed and escapes the concurrency limit):

    failure                                      meaning                  action
    429                                          refused, nothing made    retry after Retry-After
    500/502/503/504 answered                     not created              retry, backoff + jitter
    ConnectError, ConnectTimeout, PoolTimeout    request never sent       retry, backoff + jitter
    ReadTimeout/ReadError/RemoteProtocolError    sent, answer lost        CreateOutcomeUnknown
    401 / 402 / other 4xx                        our request is wrong     Unauthorized/UpstreamError
    404 / 400, 422                               model or input refused   UpstreamRejected

WriteError/WriteTimeout count as ambiguous too: rare, and "maybe sent" is the only safe reading.

GET and cancel name a prediction by id, so every transport error and 429/5xx is retried.
Note the client's own RetryTransport already retries GET 429/503/504 (up to 10 attempts,
honouring a numeric Retry-After) before we see anything; those hidden retries do not pass
through `before_poll`. Our poll loop bounds them with the prediction deadline.
"""

from __future__ import annotations

import random
from typing import Any

import httpx
from replicate.exceptions import ReplicateError

from service.errors import Unauthorized, UpstreamError, UpstreamRejected
from service.upstream.exchange import Exchange

RETRYABLE_STATUS = frozenset({500, 502, 503, 504})
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


class CreateOutcomeUnknown(UpstreamError):
    """The create request was sent but its answer was lost: a prediction may exist, id unknown.

    Not retried (no idempotency key: a retry could start a second, billed prediction).
    """

    def __init__(self, message: str, *, model: str) -> None:
        super().__init__(message, fields={"outcome": "unknown"})
        self.model = model


class Throttled(Exception):
    """Replicate answered 429 (internal: becomes a retry or UpstreamThrottled)."""

    def __init__(self, retry_after_s: float | None) -> None:
        super().__init__(f"throttled (retry after {retry_after_s})")
        self.retry_after_s = retry_after_s


class Transient(Exception):
    """A failure worth retrying after a backoff (internal)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def classify_create(exc: Exception, exchange: Exchange, model: str) -> Exception:
    """The exception to raise for a failed create: Throttled/Transient (retry) or a ServiceError."""
    if isinstance(exc, ReplicateError):
        return _classify_create_status(exc, exchange, model)
    if isinstance(exc, _NOT_SENT):
        return Transient(f"{type(exc).__name__} before the request was sent")
    if isinstance(exc, httpx.TransportError) and not isinstance(
        exc, httpx.UnsupportedProtocol | httpx.LocalProtocolError | httpx.ProxyError
    ):
        return CreateOutcomeUnknown(
            f"Replicate did not answer the create request for {model} ({type(exc).__name__}); "
            "a prediction may have been created. It was not retried, to avoid a duplicate.",
            model=model,
        )
    if isinstance(exc, ValueError):
        return UpstreamRejected(f"Invalid model reference {model!r}: expected owner/name")
    return UpstreamError(f"Calling Replicate failed ({type(exc).__name__})")


def _classify_create_status(exc: ReplicateError, exchange: Exchange, model: str) -> Exception:
    status, detail = exc.status or 0, _detail(exc)
    if status == 429:
        return Throttled(exchange.retry_after_s(exc.detail))
    if status in RETRYABLE_STATUS:
        return Transient(f"HTTP {status}")
    if status == 401:
        return Unauthorized("Invalid Replicate API token in credentials")
    if status == 402:
        return UpstreamError(detail or "Replicate refused the prediction: payment required")
    if status == 404:
        return UpstreamRejected(f"Model '{model}' was not found on Replicate")
    if status in (400, 422):
        fields: dict[str, Any] = {}
        invalid = exchange.body_field("invalid_fields")
        if isinstance(invalid, list):
            fields["invalid_fields"] = invalid
        return UpstreamRejected(
            f"Replicate rejected the input for {model}: {detail or exc.title or 'invalid input'}",
            fields=fields,
        )
    return UpstreamError(f"Replicate refused the prediction (HTTP {status}): {detail}".rstrip(": "))


def classify_by_id(exc: Exception, exchange: Exchange, prediction_id: str) -> Exception:
    """The exception for a failed GET/cancel of a known prediction (always safe to retry)."""
    if isinstance(exc, ReplicateError):
        status = exc.status or 0
        if status == 429:
            return Throttled(exchange.retry_after_s(exc.detail))
        if status in RETRYABLE_STATUS:
            return Transient(f"HTTP {status}")
        if status == 401:
            return Unauthorized("Invalid Replicate API token in credentials")
        if status == 404:
            return UpstreamError(
                f"Prediction {prediction_id} was not found on Replicate",
                fields={"prediction_id": prediction_id},
            )
        return UpstreamError(
            f"Replicate answered HTTP {status} for prediction {prediction_id}: {_detail(exc)}",
            fields={"prediction_id": prediction_id},
        )
    if isinstance(exc, httpx.TransportError):
        return Transient(type(exc).__name__)
    return UpstreamError(
        f"Reading prediction {prediction_id} failed ({type(exc).__name__})",
        fields={"prediction_id": prediction_id},
    )


def backoff_s(attempt: int, *, base_s: float, cap_s: float, rng: random.Random) -> float:
    """Exponential backoff with full jitter: uniform(0, min(cap, base * 2**attempt))."""
    return rng.uniform(0.0, min(cap_s, base_s * (2.0**attempt)))


def throttle_delay_s(
    retry_after_s: float | None, attempt: int, *, cap_s: float, rng: random.Random
) -> float:
    """Retry-After plus up to 10 % jitter (spreads a herd); exponential 1, 2, 4 s... without one."""
    if retry_after_s is None:
        return min(cap_s, 2.0**attempt) * rng.uniform(1.0, 1.1)
    return retry_after_s + rng.uniform(0.0, 0.1 * max(retry_after_s, 1.0))


def _detail(exc: ReplicateError) -> str:
    return (exc.detail or "").strip()
