"""Reading a request body as one JSON value, under MAX_BODY_BYTES, with a 4xx for every problem.

- The cap is checked against Content-Length before reading, and against the bytes actually
  received (chunked bodies, lying headers).
- Content-Type is lenient, like the seed's clients expect: missing, `application/json`,
  `text/plain` or curl's default `application/x-www-form-urlencoded` are all read as JSON.
  Only `multipart/*` is refused outright (it is a form encoding, never JSON); any other type
  is read as JSON and, if it does not parse, the error names the type that was sent.
- Strict JSON: NaN/Infinity are refused, and so is nesting deeper than MAX_JSON_DEPTH.
- Bounded work (service.api.json_parser): the decoder stops after `max_values` values
  (MAX_JSON_VALUES, more for a large MAX_BATCH_TASKS: see `max_json_values`), numbers are at
  most 4400 characters long, and `read_json` decodes in slices, letting the event loop run
  between them. The body is decoded before authentication (the user-tier token is inside it),
  so an anonymous 16 MB body must cost little and never stall the replica.
- A string holding a lone UTF-16 surrogate (`"\\ud800"`) is refused here, with the path of the
  field (`tasks[2].prompt`): such a string cannot be encoded as UTF-8, so it would fail later,
  in Redis, a log line or the response, possibly after a prediction was paid for.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import ClientDisconnect, Request

from service.api.json_parser import (
    JSONDecodeError,
    LoneSurrogate,
    TooDeep,
    TooManyValues,
    parse_steps,
)
from service.errors import BadRequest, PayloadTooLarge, ServiceError
from service.schemas.cooperative import Steps, finish, finish_async
from service.schemas.requests import json_type

MAX_JSON_DEPTH = 32
# No valid request comes near this many values (keys count): a task has a prompt, at most ~20
# parameters and two lists of at most 16 entries. Refusing past it bounds what a hostile body
# costs to decode, whatever its size (about 0.1 s of work, in slices).
MAX_JSON_VALUES = 100_000
VALUES_PER_TASK = 128


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


def max_json_values(max_batch_tasks: int) -> int:
    """The value limit for a body that may carry `max_batch_tasks` tasks."""
    return max(MAX_JSON_VALUES, VALUES_PER_TASK * max_batch_tasks)


def decode_json(
    raw: bytes, content_type: str | None = None, *, max_values: int = MAX_JSON_VALUES
) -> object:
    """One JSON value from `raw`; BadRequest (400) naming the problem and where it is."""
    return finish(_decode_steps(raw, content_type, max_values))


async def decode_json_async(
    raw: bytes, content_type: str | None = None, *, max_values: int = MAX_JSON_VALUES
) -> object:
    """`decode_json`, letting the event loop run while a large body is decoded."""
    return await finish_async(_decode_steps(raw, content_type, max_values))


def _decode_steps(raw: bytes, content_type: str | None, max_values: int) -> Steps[object]:
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
    yield  # decoding 16 MB of UTF-8 takes a few ms: a pause before the parse
    try:
        return (
            yield from parse_steps(
                text,
                max_depth=MAX_JSON_DEPTH,
                max_values=max_values,
                parse_constant=_reject_constant,
            )
        )
    except JSONDecodeError as exc:
        raise BadRequest(
            f"Malformed JSON in request body{sent_as}: {exc.msg} at line {exc.lineno} "
            f"column {exc.colno} (char {exc.pos})"
        ) from None
    except TooDeep:
        raise _too_deep() from None
    except TooManyValues:
        raise BadRequest(
            f"Request body has more than {max_values} JSON values (keys, list items and "
            "scalars); no valid request has that many"
        ) from None
    except LoneSurrogate as exc:
        raise _lone_surrogate(exc) from None
    except ValueError as exc:  # NaN/Infinity, or a number with too many digits
        raise BadRequest(f"Invalid JSON in request body{sent_as}: {_first_line(exc)}") from None


async def read_json(
    request: Request, max_bytes: int, *, max_values: int = MAX_JSON_VALUES
) -> object:
    raw = await read_body(request, max_bytes)
    return await decode_json_async(raw, request.headers.get("content-type"), max_values=max_values)


async def read_json_object(request: Request, max_bytes: int) -> dict[str, Any]:
    value = await read_json(request, max_bytes)
    if not isinstance(value, dict):
        raise BadRequest(f"Request body must be a JSON object, got {json_type(value)}")
    return value


def _too_deep() -> BadRequest:
    return BadRequest(f"Request body is nested too deeply (limit {MAX_JSON_DEPTH} levels)")


def _lone_surrogate(exc: LoneSurrogate) -> BadRequest:
    rule = (
        f"contains a lone UTF-16 surrogate (\\u{exc.code_point:04x}), which is not valid "
        "Unicode; send the character itself or a complete surrogate pair"
    )
    if not exc.path:
        return BadRequest(f"Invalid string in request body: {rule}")
    what = "key" if exc.in_key else "field"
    return BadRequest(
        f"Invalid {what} '{exc.path}': {rule}",
        fields={"details": [{"field": exc.path, "rule": "lone UTF-16 surrogate"}]},
    )


def _first_line(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:200]
