"""Reading a request body as one JSON value, under MAX_BODY_BYTES, with a 4xx for every problem.

- The cap is checked against Content-Length before reading, and against the bytes actually
  received (chunked bodies, lying headers).
- Content-Type is lenient, like the seed's clients expect: missing, `application/json`,
  `text/plain` or curl's default `application/x-www-form-urlencoded` are all read as JSON.
  Only `multipart/*` is refused outright (it is a form encoding, never JSON); any other type
  is read as JSON and, if it does not parse, the error names the type that was sent.
- Strict JSON: NaN/Infinity are refused, and so is nesting deeper than MAX_JSON_DEPTH (Python's
  decoder raises RecursionError on very deep input; it is caught too).
"""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import ClientDisconnect, Request

from service.errors import BadRequest, PayloadTooLarge, ServiceError
from service.schemas.requests import json_type

MAX_JSON_DEPTH = 32


class UnsupportedMediaType(ServiceError):
    status_code = 415


class ClientClosedRequest(ServiceError):
    """The caller hung up; nobody reads this answer (status as nginx's 499)."""

    status_code = 499


def _too_large(max_bytes: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"Request body too large: limit is {max_bytes} bytes (MAX_BODY_BYTES)")


async def read_body(request: Request, max_bytes: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            length = int(declared)
        except ValueError:
            raise BadRequest("Invalid Content-Length header: must be an integer") from None
        if length > max_bytes:
            raise _too_large(max_bytes)
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                raise _too_large(max_bytes)
            chunks.append(chunk)
    except ClientDisconnect:
        raise ClientClosedRequest("Client closed the request while sending its body") from None
    return b"".join(chunks)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def decode_json(raw: bytes, content_type: str | None = None) -> object:
    """One JSON value from `raw`; BadRequest (400) naming the problem and where it is."""
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if media_type.startswith("multipart/"):
        raise UnsupportedMediaType(
            f"Unsupported Content-Type '{media_type}': send a JSON object "
            "(Content-Type: application/json)"
        )
    if not raw.strip():
        raise BadRequest("Request body is empty; expected a JSON object")
    sent_as = "" if media_type in ("", "application/json") else f" (sent as '{media_type}')"
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BadRequest(
            f"Request body is not valid UTF-8 (byte {exc.start}); expected a JSON object{sent_as}"
        ) from None
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise BadRequest(
            f"Malformed JSON in request body{sent_as}: {exc.msg} at line {exc.lineno} "
            f"column {exc.colno} (char {exc.pos})"
        ) from None
    except RecursionError:
        raise _too_deep() from None
    except ValueError as exc:  # NaN/Infinity, or an integer with too many digits
        raise BadRequest(f"Invalid JSON in request body{sent_as}: {_first_line(exc)}") from None
    _check_depth(value)
    return value


async def read_json(request: Request, max_bytes: int) -> object:
    raw = await read_body(request, max_bytes)
    return decode_json(raw, request.headers.get("content-type"))


async def read_json_object(request: Request, max_bytes: int) -> dict[str, Any]:
    value = await read_json(request, max_bytes)
    if not isinstance(value, dict):
        raise BadRequest(f"Request body must be a JSON object, got {json_type(value)}")
    return value


def _too_deep() -> BadRequest:
    return BadRequest(f"Request body is nested too deeply (limit {MAX_JSON_DEPTH} levels)")


def _check_depth(value: object) -> None:
    """Iteratively (no recursion to exhaust): refuse containers nested beyond MAX_JSON_DEPTH."""
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: list[object] = list(item.values())
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > MAX_JSON_DEPTH:
            raise _too_deep()
        stack.extend((child, depth + 1) for child in children)


def _first_line(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:200]
