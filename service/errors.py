"""The service's exception tree and its one mapping to HTTP.

    ServiceError                      status, message, extra JSON fields, headers
    ├── BadRequest (400)              malformed body, wrong field, unknown parameter
    │   └── ModelNotSupported (400)   adds supported_models
    ├── Unauthorized (401)            the three authentication messages
    ├── Forbidden (403)               authenticated, but not allowed (non-admin managing semaphores)
    ├── NotFound (404)                semaphore, lease
    ├── Conflict (409)                semaphore already exists
    ├── PayloadTooLarge (413)         body size cap
    ├── LimitTimeout (429)            waited on a limit for too long: names the limit, Retry-After
    ├── UpstreamError (502)           Replicate answered with an error we cannot fix by retrying
    └── Unavailable (503)             Redis unreachable, draining

Coordination errors (service.coordination.errors) are mapped to these at the API boundary.
Routes never build error responses by hand: they raise.
"""

from __future__ import annotations

import math
from typing import Any


class ServiceError(Exception):
    status_code = 500

    def __init__(
        self,
        message: str,
        *,
        fields: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.fields = fields or {}
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": self.message, **self.fields}


class BadRequest(ServiceError):
    status_code = 400


class ModelNotSupported(BadRequest):
    def __init__(self, model_name: str, supported: list[str]) -> None:
        super().__init__(
            f"Model '{model_name}' not supported", fields={"supported_models": supported}
        )


class Unauthorized(ServiceError):
    status_code = 401


class Forbidden(ServiceError):
    status_code = 403


class NotFound(ServiceError):
    status_code = 404


class Conflict(ServiceError):
    status_code = 409


class PayloadTooLarge(ServiceError):
    status_code = 413


class LimitTimeout(ServiceError):
    """A limit stayed full for the whole wait. `scope` says which one."""

    status_code = 429

    def __init__(self, message: str, *, scope: str, limit_id: str, retry_after_s: float) -> None:
        retry = max(1, math.ceil(retry_after_s))
        super().__init__(
            message,
            fields={"limit_scope": scope, "limit_id": limit_id, "retry_after": retry},
            headers={"Retry-After": str(retry), "X-Limit-Scope": scope},
        )


class UpstreamError(ServiceError):
    status_code = 502


class Unavailable(ServiceError):
    status_code = 503


class UpstreamThrottled(ServiceError):
    """Replicate kept answering 429 after our retries."""

    status_code = 429

    def __init__(self, message: str, *, retry_after_s: float) -> None:
        retry = max(1, math.ceil(retry_after_s))
        super().__init__(
            message,
            fields={"limit_scope": "upstream", "retry_after": retry},
            headers={"Retry-After": str(retry), "X-Limit-Scope": "upstream"},
        )


class UpstreamRejected(BadRequest):
    """Replicate refused the input (422) or the model (404): the caller must change the request."""


class PredictionFailed(UpstreamError):
    """The prediction ended `failed`, `canceled` or `aborted`; message is Replicate's error text."""

    def __init__(self, message: str, *, prediction_id: str, status: str) -> None:
        super().__init__(message, fields={"prediction_id": prediction_id, "status": status})
        self.prediction_id = prediction_id
        self.status = status
