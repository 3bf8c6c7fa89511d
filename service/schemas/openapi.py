"""What a route decorator says about itself in the OpenAPI document: who may call it, the body
it reads, and the errors it answers.

    @router.post(
        "/global-semaphores",
        status_code=201,
        response_model=SemaphoreCreated,
        responses=errors(400, 401, 409, 413, 415, 503),
        openapi_extra=operation(body="SemaphoreCreateRequest", auth=ADMIN_ONLY),
    )

`errors(...)` documents each status with the error envelope (ErrorResponse) and what it means
for a caller; `operation(...)` names the request body (service.schemas.bodies: built from the
validating models, not declared to FastAPI, which would parse the body itself) and the security
requirement (the X-Admin-API-Key header; the user-tier token is a body field, `credentials`).
"""

from __future__ import annotations

from typing import Any, Literal

from service.schemas.bodies import request_body
from service.schemas.responses import ErrorResponse

ADMIN_SCHEME = "AdminApiKey"
TOKEN_SCHEME = "ReplicateToken"  # Authorization: Bearer <a job's own Replicate token>

# Who may call: the admin key is required, optional (a generation may use `credentials`
# instead; a semaphore's detail shows whole ids with it), the admin key or the caller's own
# token as Bearer (a job), or never looked at.
Auth = Literal["admin", "admin-or-credentials", "admin-optional", "admin-or-bearer", "none"]
ADMIN_ONLY: Auth = "admin"
ADMIN_OR_CREDENTIALS: Auth = "admin-or-credentials"
ADMIN_OPTIONAL: Auth = "admin-optional"
ADMIN_OR_BEARER: Auth = "admin-or-bearer"
NO_AUTH: Auth = "none"

_AUTH_NOTES: dict[Auth, str] = {
    "admin": "Requires the `X-Admin-API-Key` header.",
    "admin-or-credentials": "Authenticate with the `X-Admin-API-Key` header (the server's "
    "Replicate token), or with your own token in the body's `credentials` (then send no "
    "header); neither is 401 unless the server sets ALLOW_ENV_FALLBACK.",
    "admin-optional": "Open to anyone; with the `X-Admin-API-Key` header it shows more (a wrong "
    "key is 401, never a quiet fall-back).",
    "admin-or-bearer": "The job's own account, with the Replicate token it was submitted with "
    "as `Authorization: Bearer <token>`, or the `X-Admin-API-Key` header; anyone else gets 404, "
    "as for an unknown id. No credential is 401 (unless the server sets ALLOW_ENV_FALLBACK: then "
    "a job submitted without credentials is readable without any).",
    "none": "",
}

_MEANING: dict[int, str] = {
    400: "Invalid request: malformed JSON or a wrong, missing or unknown field; the message "
    "names the field and the rule (`details` lists every problem)",
    401: "Authentication failed; the message says which credential was missing or wrong",
    403: "Authenticated, but not allowed",
    404: "Not found: the message names what",
    409: "Conflict with the current state: the message says what to do instead",
    413: "Request body larger than MAX_BODY_BYTES",
    415: "Unsupported Content-Type (multipart); send JSON",
    422: "The `Idempotency-Key` was already used with a different body: the message names the "
    "key; use a new key for a new request",
    429: "A limit stayed full for the whole wait: `limit_scope` and the `X-Limit-Scope` header "
    "name it, `retry_after` and `Retry-After` say when to retry",
    500: "Unexpected error: quote `request_id` (also the X-Request-ID header)",
    502: "Replicate failed the prediction or answered with an error; the message is its text",
    503: "Unavailable: Redis unreachable, the replica starting or shutting down, or no server "
    "token; retry (often with `Retry-After`)",
}

_RETRY_AFTER = {
    "description": "Seconds to wait before retrying",
    "schema": {"type": "string", "pattern": "^[0-9]+$"},
}
_HEADERS: dict[int, dict[str, Any]] = {
    429: {
        "Retry-After": _RETRY_AFTER,
        "X-Limit-Scope": {"description": "Which limit stayed full", "schema": {"type": "string"}},
    },
    503: {"Retry-After": _RETRY_AFTER},
}


def error_meaning(status: int) -> str:
    return _MEANING.get(status, "Error")


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a decorator: each status with the error envelope and its meaning."""
    found: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        entry: dict[str, Any] = {"model": ErrorResponse, "description": error_meaning(status)}
        if status in _HEADERS:
            entry["headers"] = _HEADERS[status]
        found[status] = entry
    return found


def security(auth: Auth) -> list[dict[str, list[str]]] | None:
    """The OpenAPI security requirement (an empty object: may be called without the key; None:
    no credential is looked at, nothing to state)."""
    if auth == "admin":
        return [{ADMIN_SCHEME: []}]
    if auth in ("admin-or-credentials", "admin-optional"):
        return [{ADMIN_SCHEME: []}, {}]
    if auth == "admin-or-bearer":
        return [{ADMIN_SCHEME: []}, {TOKEN_SCHEME: []}]
    return None


def links(*operation_ids: str, **parameters: str) -> dict[str, dict[str, Any]]:
    """OpenAPI links from an answer to the operations it enables (`$response.body#/lease_id`):
    the docs show them, and Schemathesis' stateful tests follow them."""
    return {
        "".join(word.title() for word in operation_id.split("_")): {
            "operationId": operation_id,
            "parameters": dict(parameters),
        }
        for operation_id in operation_ids
    }


def operation(*, body: str | None = None, auth: Auth = NO_AUTH) -> dict[str, Any]:
    """`openapi_extra=` for a decorator: the request body by name, and who may call."""
    extra: dict[str, Any] = dict(request_body(body)) if body else {}
    required = security(auth)
    if required is not None:
        extra["security"] = required
    note = _AUTH_NOTES[auth]
    if note:
        extra["x-auth"] = note
    return extra


__all__ = [
    "ADMIN_ONLY",
    "ADMIN_OPTIONAL",
    "ADMIN_OR_BEARER",
    "ADMIN_OR_CREDENTIALS",
    "ADMIN_SCHEME",
    "NO_AUTH",
    "TOKEN_SCHEME",
    "Auth",
    "error_meaning",
    "errors",
    "links",
    "operation",
    "security",
]
