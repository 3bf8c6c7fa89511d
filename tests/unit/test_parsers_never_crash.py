"""Property: whatever a caller sends, every request parser answers with a valid request or a
ServiceError with a 4xx status (issue 11), never another exception, and whatever came through
the decoder can be encoded in the answer (no lone surrogate reaches a response).

Parsers: decode_json (bytes → value), request_token, parse_generate, parse_batch, and the body
checks of the lease and semaphore routes. Inputs: arbitrary JSON values with lone surrogates,
NULs, huge and non-finite numbers, deep nesting, many keys, long strings, and near-valid bodies
built from the real field names, so that the checks past the first one are reached too.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.api import leases, semaphores
from service.api.body import decode_json
from service.errors import ServiceError
from service.schemas import MODELS, parse_batch, parse_generate, request_token

SETTINGS = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

PARAMETERS = sorted({name for spec in MODELS.values() for name in spec.parameter_names})
FIELDS = [
    "model_name",
    "prompt",
    "tasks",
    "prompts",
    "custom_filenames",
    "output_filename",
    "external_semaphore_id",
    "credentials",
    "replicate_api_token",
    "semaphore_id",
    "limit",
    "timeout_s",
    "holder",
    "ttl_s",
]

CHARACTERS = (
    st.characters()
    | st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)  # lone surrogates
    | st.sampled_from(["\x00", "\u2028", "\ufeff", "\U0001f600", "é", " "])
)
TEXT = st.text(CHARACTERS, max_size=24)
LONG_TEXT = st.builds(
    lambda piece, count: piece * count,
    st.sampled_from(["x", " ", "é", "\x00", "data:image/png;", "https://a.b/", "\ud800"]),
    st.integers(0, 12_000),
)
NUMBERS = (
    st.integers()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.sampled_from([2**63, -(2**63) - 1, 10**4000, 0, -0.0, 1e308, 5e-324])
    | st.floats()  # NaN and infinities included
)
SCALARS = st.none() | st.booleans() | NUMBERS | TEXT | LONG_TEXT
KEYS = st.sampled_from(FIELDS + PARAMETERS) | TEXT


def nested(depth: int, leaf: object) -> object:
    value = leaf
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=5),
    max_leaves=25,
)
HOSTILE = (
    VALUES
    | st.builds(nested, st.integers(0, 60), SCALARS)
    | st.integers(0, 3_000).map(lambda n: {f"k{i}": i for i in range(n)})
)
MODEL_NAMES = st.sampled_from([*MODELS, "sdxl", ""]) | SCALARS
PARAMS = st.dictionaries(st.sampled_from(PARAMETERS) | KEYS, VALUES, max_size=6)
CREDENTIALS = st.none() | VALUES | st.fixed_dictionaries({"replicate_api_token": TEXT | VALUES})


@st.composite
def generate_bodies(draw: st.DrawFn) -> dict[str, Any]:
    body: dict[str, Any] = {"model_name": draw(MODEL_NAMES), "prompt": draw(SCALARS)}
    body.update(draw(PARAMS))
    for key in ("output_filename", "external_semaphore_id", "credentials"):
        if draw(st.booleans()):
            body[key] = draw(CREDENTIALS if key == "credentials" else SCALARS)
    return body


@st.composite
def batch_bodies(draw: st.DrawFn) -> dict[str, Any]:
    body: dict[str, Any] = {"model_name": draw(MODEL_NAMES)}
    if draw(st.booleans()):
        task = st.fixed_dictionaries({"prompt": SCALARS}, optional={"output_filename": SCALARS})
        body["tasks"] = draw(st.lists(st.builds(lambda t, p: {**t, **p}, task, PARAMS) | VALUES))
    else:
        body["prompts"] = draw(st.lists(SCALARS, max_size=6))
        if draw(st.booleans()):
            body["custom_filenames"] = draw(st.lists(SCALARS, max_size=6) | SCALARS)
    body.update(draw(PARAMS))
    if draw(st.booleans()):
        body["credentials"] = draw(CREDENTIALS)
    return body


BODIES = HOSTILE | generate_bodies() | batch_bodies()


def answer(parser: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """The parser's result, or None after checking its error is a 4xx that can be sent."""
    try:
        return parser(*args, **kwargs)
    except ServiceError as exc:
        assert 400 <= exc.status_code < 500, (exc.status_code, exc.message)
        json.dumps(exc.body(), allow_nan=False)
        return None


def sendable(content: object) -> bytes:
    """What starlette's JSONResponse does with a body; raises where it would fail."""
    return json.dumps(content, ensure_ascii=False, allow_nan=False).encode("utf-8")


def check_request_parsers(body: object) -> None:
    answer(request_token, body)
    answer(parse_generate, body)
    answer(parse_batch, body, max_tasks=5)


def check_lease_and_semaphore_checks(body: object) -> None:
    if isinstance(body, dict):
        answer(leases._check_fields, body, 30.0)
        answer(semaphores._check_fields, body, ("semaphore_id", "limit"))
        for key in ("timeout_s", "holder", "semaphore_id", "limit"):
            value = body.get(key)
            answer(leases._check_timeout, value, 300.0)
            answer(leases._check_holder, value)
            answer(semaphores._check_id, value)
            answer(semaphores._check_limit, value)
    else:
        answer(leases._check_timeout, body, 300.0)
        answer(leases._check_holder, body)
        answer(semaphores._check_id, body)
        answer(semaphores._check_limit, body)


@SETTINGS
@given(BODIES)
def test_request_parsers_on_any_value(body: object) -> None:
    check_request_parsers(body)


@SETTINGS
@given(BODIES)
def test_lease_and_semaphore_checks_on_any_value(body: object) -> None:
    check_lease_and_semaphore_checks(body)


@SETTINGS
@given(BODIES, st.booleans())
def test_decoded_bodies_are_sendable_and_parse_safely(body: object, ascii_only: bool) -> None:
    """Through the decoder, as a route sees them: surrogates arrive as `\\ud800` escapes (or
    as invalid UTF-8), NaN as a bare constant; anything decoded can go back out as JSON."""
    raw = json.dumps(body, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
    decoded = answer(decode_json, raw)
    if decoded is None:
        return
    sendable(decoded)
    check_request_parsers(decoded)
    check_lease_and_semaphore_checks(decoded)
    for parser in (parse_generate, lambda b: parse_batch(b, max_tasks=5)):
        try:
            request = parser(decoded)
        except ServiceError as exc:
            sendable(exc.body())
            continue
        tasks = getattr(request, "tasks", [request])
        sendable([[t.prompt, t.output_filename, t.replicate_input] for t in tasks])


@SETTINGS
@given(
    st.binary(max_size=300)
    | st.text(CHARACTERS, max_size=100).map(lambda t: t.encode("utf-8", "surrogatepass"))
)
def test_decode_json_on_any_bytes(raw: bytes) -> None:
    decoded = answer(decode_json, raw, "text/plain")
    if decoded is not None:
        sendable(decoded)
