"""A JSON decoder that parses in slices and refuses hostile input while it reads.

`json.loads` is one C call: a 16 MB body of 1.3 M keys holds the event loop (and the GIL, so a
thread does not help) for most of a second. `parse_steps` gives the same values and the same
`JSONDecodeError` messages (it follows the stdlib's own pure-Python scanner, `json.decoder`,
and uses the C `scanstring` for strings), but:

- it is a generator that yields every YIELD_EVERY values or YIELD_EVERY_CHARS characters (see
  service.schemas.cooperative);
- it stops at the first container nested deeper than `max_depth` (`TooDeep`) and after
  `max_values` values (`TooManyValues`; keys count as values), so the work spent on a body it
  refuses is bounded by the limits, whatever the body's size;
- it refuses a string (value or key) holding a lone UTF-16 surrogate such as `"\\ud800"`
  (`LoneSurrogate`, with the path of the field). Python decodes those into a `str` that cannot
  be encoded as UTF-8: it fails later, anywhere (Redis, logs, the response), even after a
  prediction was paid for. A surrogate *pair* is a valid character and is accepted.

Numbers are parsed as json does (`int` / `float`; an integer over Python's digit limit raises
`ValueError`), and `parse_constant` is called for NaN / Infinity / -Infinity.
"""

from __future__ import annotations

import json
import json.scanner
import re
from _json import scanstring
from collections.abc import Callable, Generator
from typing import Any, cast

# Work between two yields: YIELD_EVERY values or YIELD_EVERY_CHARS of text, whichever comes
# first (then one more value: a single string is scanned in one C call, ~1 ms per MB).
YIELD_EVERY = 32
YIELD_EVERY_CHARS = 1 << 20
# Longest number read: Python refuses integers of more than 4300 digits anyway, and matching or
# converting a 16 MB run of digits would take over 100 ms in one piece.
MAX_NUMBER_CHARS = 4400

_WS_CHARS = " \t\n\r"
# json.decoder.WHITESPACE; a `*` pattern matches (maybe empty) at any index, never None.
_ws = cast(Callable[[str, int], re.Match[str]], re.compile(r"[ \t\n\r]*").match)
_number = json.scanner.NUMBER_RE.match
_SURROGATE = re.compile("[\ud800-\udfff]")
# A surrogate can only come from a \uD800-\uDFFF escape (the text itself was valid UTF-8), so
# when the body has none, no string needs checking. Matches a few harmless false positives
# (an escaped backslash before "ud8..."), which only turn the per-string check on.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")

JSONDecodeError = json.JSONDecodeError


class TooDeep(ValueError):
    """A container nested deeper than the limit."""


class TooManyValues(ValueError):
    """More values (keys included) than the limit."""


class LoneSurrogate(ValueError):
    """A string with an unpaired UTF-16 surrogate; `path` names where (`tasks[2].prompt`)."""

    def __init__(self, path: str, code_point: int, *, in_key: bool) -> None:
        super().__init__(f"lone surrogate \\u{code_point:04x} at {path or 'the top level'}")
        self.path = path
        self.code_point = code_point
        self.in_key = in_key


# One open container: the dict or list, and for a dict the key whose value is being read.
_Frame = list[Any]


def parse_steps(
    text: str,
    *,
    max_depth: int,
    max_values: int,
    parse_constant: Callable[[str], Any],
) -> Generator[None, None, object]:
    """Parse one JSON value from `text` (strict: no trailing data, no control characters)."""
    if text.startswith("\ufeff"):
        raise JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
    check_strings = _SURROGATE_ESCAPE.search(text) is not None
    yield  # that search read the whole text
    memo: dict[str, str] = {}
    stack: list[_Frame] = []
    count = 0
    next_pause = YIELD_EVERY
    next_pause_idx = YIELD_EVERY_CHARS
    idx = _ws(text, 0).end()
    while True:
        # -- one value starts at idx ------------------------------------------------------
        count += 1
        if count > max_values:
            raise TooManyValues(max_values)
        if count >= next_pause or idx >= next_pause_idx:
            next_pause = count + YIELD_EVERY
            next_pause_idx = idx + YIELD_EVERY_CHARS
            yield
        char = text[idx : idx + 1]
        value: object
        if char == '"':
            value, idx = scanstring(text, idx + 1, True)
            if check_strings:
                _check_string(value, stack, None)
        elif char == "{" or char == "[":
            if len(stack) >= max_depth:
                raise TooDeep(max_depth)
            idx += 1
            nextchar = text[idx : idx + 1]
            if char == "{":
                if nextchar != '"':
                    if nextchar in _WS_CHARS:
                        idx = _ws(text, idx).end()
                        nextchar = text[idx : idx + 1]
                    if nextchar == "}":
                        value, idx = {}, idx + 1
                    elif nextchar != '"':
                        raise JSONDecodeError(
                            "Expecting property name enclosed in double quotes", text, idx
                        )
                if nextchar == '"':
                    obj: dict[str, Any] = {}
                    frame: _Frame = [obj, None]
                    stack.append(frame)
                    count += 1
                    if count > max_values:
                        raise TooManyValues(max_values)
                    frame[1], idx = _key(text, idx + 1, stack, memo, check_strings)
                    continue
            else:
                if nextchar in _WS_CHARS:
                    idx = _ws(text, idx + 1).end()
                    nextchar = text[idx : idx + 1]
                if nextchar == "]":
                    value, idx = [], idx + 1
                else:
                    stack.append([[], None])
                    continue
        elif char == "n" and text.startswith("null", idx):
            value, idx = None, idx + 4
        elif char == "t" and text.startswith("true", idx):
            value, idx = True, idx + 4
        elif char == "f" and text.startswith("false", idx):
            value, idx = False, idx + 5
        else:
            match = _number(text, idx, idx + MAX_NUMBER_CHARS + 1)
            if match is not None:
                if match.end() - idx > MAX_NUMBER_CHARS:
                    raise ValueError(f"a number is longer than {MAX_NUMBER_CHARS} characters")
                integer, frac, exp = match.groups()
                value = float(match.group()) if frac or exp else int(integer)
                idx = match.end()
            elif char == "N" and text.startswith("NaN", idx):
                value, idx = parse_constant("NaN"), idx + 3
            elif char == "I" and text.startswith("Infinity", idx):
                value, idx = parse_constant("Infinity"), idx + 8
            elif char == "-" and text.startswith("-Infinity", idx):
                value, idx = parse_constant("-Infinity"), idx + 9
            else:
                raise JSONDecodeError("Expecting value", text, idx)

        # -- a complete value: put it in its container; close the containers it ends --------
        while True:
            if not stack:
                idx = _ws(text, idx).end()
                if idx != len(text):
                    raise JSONDecodeError("Extra data", text, idx)
                return value
            frame = stack[-1]
            container = frame[0]
            if isinstance(container, dict):
                container[frame[1]] = value
                try:
                    nextchar = text[idx]
                    if nextchar in _WS_CHARS:
                        idx = _ws(text, idx + 1).end()
                        nextchar = text[idx]
                except IndexError:
                    nextchar = ""
                idx += 1
                if nextchar == "}":
                    stack.pop()
                    value = container
                    continue
                if nextchar != ",":
                    raise JSONDecodeError("Expecting ',' delimiter", text, idx - 1)
                idx = _ws(text, idx).end()
                nextchar = text[idx : idx + 1]
                idx += 1
                if nextchar != '"':
                    raise JSONDecodeError(
                        "Expecting property name enclosed in double quotes", text, idx - 1
                    )
                count += 1
                if count > max_values:
                    raise TooManyValues(max_values)
                frame[1], idx = _key(text, idx, stack, memo, check_strings)
                break
            container.append(value)
            nextchar = text[idx : idx + 1]
            if nextchar in _WS_CHARS:
                idx = _ws(text, idx + 1).end()
                nextchar = text[idx : idx + 1]
            idx += 1
            if nextchar == "]":
                stack.pop()
                value = container
                continue
            if nextchar != ",":
                raise JSONDecodeError("Expecting ',' delimiter", text, idx - 1)
            try:
                if text[idx] in _WS_CHARS:
                    idx += 1
                    if text[idx] in _WS_CHARS:
                        idx = _ws(text, idx + 1).end()
            except IndexError:
                pass
            break


def _key(
    text: str, idx: int, stack: list[_Frame], memo: dict[str, str], check_strings: bool
) -> tuple[str, int]:
    """A key (its opening quote is just before idx), the ':' and the blanks after it."""
    key, idx = scanstring(text, idx, True)
    if check_strings:
        _check_string(key, stack[:-1], key)
    key = memo.setdefault(key, key)
    if text[idx : idx + 1] != ":":
        idx = _ws(text, idx).end()
        if text[idx : idx + 1] != ":":
            raise JSONDecodeError("Expecting ':' delimiter", text, idx)
    idx += 1
    try:
        if text[idx] in _WS_CHARS:
            idx += 1
            if text[idx] in _WS_CHARS:
                idx = _ws(text, idx + 1).end()
    except IndexError:
        pass
    return key, idx


def _check_string(value: str, stack: list[_Frame], key: str | None) -> None:
    found = _SURROGATE.search(value)
    if found is None:
        return
    path = format_path(stack)
    if key is not None:
        path = _join(path, show_key(key))
    raise LoneSurrogate(path, ord(found.group()), in_key=key is not None)


def format_path(stack: list[_Frame]) -> str:
    """`tasks[2].prompt`: where the value being read sits, from the open containers."""
    path = ""
    for container, key in stack:
        if isinstance(container, dict):
            path = _join(path, show_key(key))
        else:
            path += f"[{len(container)}]"
    return path


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def show_key(key: str, limit: int = 64) -> str:
    """A key as it can be printed: cut to `limit`, surrogates written as `\\udXXX`."""
    short = key if len(key) <= limit else key[:limit] + "…"
    return short.encode("utf-8", "backslashreplace").decode("utf-8")
