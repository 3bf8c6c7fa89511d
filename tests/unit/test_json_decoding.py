"""The request-body decoder (service.api.body + service.api.json_parser): json's answers and
messages, lone surrogates refused with the field's path, and bounded, sliced work."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.api.body import MAX_JSON_VALUES, decode_json, max_json_values
from service.api.json_parser import MAX_NUMBER_CHARS, YIELD_EVERY, parse_steps
from service.errors import BadRequest
from service.schemas.cooperative import finish


def _reject(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse(text: str, max_values: int = 10**9) -> object:
    return finish(parse_steps(text, max_depth=10**6, max_values=max_values, parse_constant=_reject))


def outcome(decoder: Any, text: str) -> tuple[Any, ...]:
    try:
        return ("value", decoder(text))
    except json.JSONDecodeError as exc:
        return ("malformed", exc.msg, exc.pos)
    except ValueError as exc:
        return ("invalid", str(exc))


def stdlib(text: str) -> object:
    return json.loads(text, parse_constant=_reject)


def decode_error(raw: bytes, **kwargs: Any) -> str:
    with pytest.raises(BadRequest) as info:
        decode_json(raw, **kwargs)
    return info.value.message


# -- the same answers as json.loads ------------------------------------------------------------

JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(exclude_categories=["Cs"]), max_size=20)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=40,
)
# Pieces of JSON and of near-JSON, so that random texts hit every error branch.
PIECES = st.sampled_from(
    [
        *'{}[]",: \t\n\r0123456789-+.eE\\',
        *("true", "false", "null", "NaN", "-Infinity", '"a"', '"k":', "\\u00e9", "\x00", "é"),
    ]
)


@settings(max_examples=300, deadline=None)
@given(JSON_VALUES, st.booleans(), st.sampled_from([None, 2]))
def test_same_values_as_json_loads(value: Any, ascii_only: bool, indent: int | None) -> None:
    text = json.dumps(value, ensure_ascii=ascii_only, indent=indent)
    assert parse(text) == json.loads(text)


@settings(max_examples=1000, deadline=None)
@given(st.lists(PIECES, max_size=25).map("".join))
def test_same_answer_and_message_as_json_loads_on_any_text(text: str) -> None:
    assert outcome(parse, text) == outcome(stdlib, text)


@settings(max_examples=300, deadline=None)
@given(JSON_VALUES)
def test_mutated_json_gets_json_loads_message(value: Any) -> None:
    text = json.dumps(value)
    for cut in {len(text) // 2, len(text) - 1, 1}:
        broken = text[:cut]
        assert outcome(parse, broken) == outcome(stdlib, broken)


# -- lone surrogates (issue 11, item 7) --------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "where"),
    [
        (b'{"model_name": "flux-dev", "prompt": "a\\ud800"}', "Invalid field 'prompt'"),
        (
            b'{"tasks": [{"prompt": "a"}, {"prompt": "b"}, {"prompt": "\\uDFFF c"}]}',
            "Invalid field 'tasks[2].prompt'",
        ),
        (b'{"prompts": ["ok", "\\udc00"]}', "Invalid field 'prompts[1]'"),
        (
            b'{"credentials": {"replicate_api_token": "r8_\\ud83d"}}',
            "Invalid field 'credentials.replicate_api_token'",
        ),
        (b'{"a": {"b\\ud800": 1}}', "Invalid key 'a.b\\ud800'"),
        (b'["\\ud800"]', "Invalid field '[0]'"),
    ],
)
def test_lone_surrogate_is_refused_naming_the_field(raw: bytes, where: str) -> None:
    message = decode_error(raw)
    assert message.startswith(where), message
    assert "lone UTF-16 surrogate" in message
    message.encode("utf-8")  # the answer itself must be encodable


def test_lone_surrogate_at_the_top_level() -> None:
    assert decode_error(b'"\\ud800"').startswith("Invalid string in request body")


def test_surrogate_pair_is_one_valid_character() -> None:
    assert decode_json(b'{"prompt": "cat \\ud83d\\ude00"}') == {"prompt": "cat \U0001f600"}
    assert decode_json(b'{"p": "\\\\ud800"}') == {"p": "\\ud800"}  # an escaped backslash


# -- bounded work (issue 11, item 1) -----------------------------------------------------------


def test_too_many_values_is_refused() -> None:
    raw = json.dumps({f"k{i}": 1 for i in range(MAX_JSON_VALUES)}).encode()
    message = decode_error(raw)
    assert message.startswith(f"Request body has more than {MAX_JSON_VALUES} JSON values")


def test_the_value_limit_stops_the_parse_early() -> None:
    """Past the limit nothing more is read: the work is bounded by the limit, not the body."""
    text = json.dumps({f"k{i}": 1 for i in range(50_000)})
    steps = parse_steps(text, max_depth=32, max_values=1_000, parse_constant=_reject)
    pauses = 0
    with pytest.raises(ValueError, match="1000"):
        while True:
            next(steps)
            pauses += 1
    assert pauses <= 1 + 1_000 // YIELD_EVERY  # one more after the surrogate search


def test_value_limit_grows_with_the_batch_limit() -> None:
    assert max_json_values(100) == MAX_JSON_VALUES
    assert max_json_values(10_000) > MAX_JSON_VALUES
    raw = json.dumps({"prompts": ["x"] * (MAX_JSON_VALUES + 10)}).encode()
    assert decode_json(raw, max_values=max_json_values(10_000)) == json.loads(raw)


def test_decoding_pauses_between_slices() -> None:
    """The decoder is a generator that yields every YIELD_EVERY values or so, which is where
    `finish_async` lets the event loop run."""
    values = 20_000
    text = json.dumps([{"prompt": "x"} for _ in range(values // 3)])
    steps = parse_steps(text, max_depth=32, max_values=MAX_JSON_VALUES, parse_constant=_reject)
    pauses = 0
    try:
        while True:
            next(steps)
            pauses += 1
    except StopIteration as done:
        assert done.value == json.loads(text)
    assert pauses >= values // (2 * YIELD_EVERY)


def test_long_number_is_refused_without_converting_it() -> None:
    message = decode_error(b'{"seed": ' + b"1" * 100_000 + b"}")
    assert message.startswith("Invalid JSON in request body")
    assert f"longer than {MAX_NUMBER_CHARS}" in message
    # An integer Python can hold is still read as before.
    assert decode_json(b'{"seed": ' + b"9" * 4000 + b"}") == {"seed": int("9" * 4000)}


def test_nesting_stops_at_the_limit_even_without_a_closing_bracket() -> None:
    assert "nested too deeply" in decode_error(b"[" * 100_000)
