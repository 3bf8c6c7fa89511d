"""Replicate's JSON bodies for the errors the simulator answers with (replicate-api.md §1.5)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from starlette.responses import JSONResponse

from service.simulator.validation import InvalidField, detail_text

NOT_FOUND_DETAIL = "The requested resource could not be found."


def json_response(
    body: Any, status_code: int = 200, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(body, status_code=status_code, headers=dict(headers or {}))


def unauthenticated(token_given: bool) -> JSONResponse:
    detail = (
        "You did not pass a valid authentication token"
        if token_given
        else "You did not pass an authentication token"
    )
    return json_response({"title": "Unauthenticated", "detail": detail, "status": 401}, 401)


def not_found(headers: Mapping[str, str] | None = None) -> JSONResponse:
    return json_response({"detail": NOT_FOUND_DETAIL, "status": 404}, 404, headers)


def throttled(retry_after_s: int, headers: Mapping[str, str] | None = None) -> JSONResponse:
    body = {
        "detail": f"Request was throttled. Your rate limit resets in ~{retry_after_s}s.",
        "status": 429,
        "retry_after": retry_after_s,
    }
    merged = {**(headers or {}), "Retry-After": str(retry_after_s), "ratelimit-remaining": "0"}
    return json_response(body, 429, merged)


def server_error(status_code: int) -> JSONResponse:
    titles = {
        500: "Internal Server Error",
        502: "Bad Gateway",
        503: "Service Unavailable",
        504: "Gateway Timeout",
    }
    title = titles.get(status_code, "Server Error")
    detail = "The server encountered an unexpected problem. Please try again."
    return json_response({"title": title, "detail": detail, "status": status_code}, status_code)


def validation_failed(
    problems: Sequence[InvalidField], headers: Mapping[str, str] | None = None
) -> JSONResponse:
    body = {
        "title": "Input validation failed",
        "status": 422,
        "detail": detail_text(problems),
        "invalid_fields": [p.as_json() for p in problems],
    }
    return json_response(body, 422, headers)


def invalid_version(headers: Mapping[str, str] | None = None) -> JSONResponse:
    body = {
        "title": "Invalid version or not permitted",
        "detail": (
            "The specified version does not exist (or perhaps you don't have permission to use it?)"
        ),
        "status": 422,
    }
    return json_response(body, 422, headers)


def bad_request(detail: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return json_response({"title": "Bad request", "detail": detail, "status": 400}, 400, headers)
