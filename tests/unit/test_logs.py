"""service.observability.logs: JSON lines, context fields, and redaction by construction."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from service.observability.logs import (
    REDACTED,
    Redactor,
    configure_logging,
    remove_logging,
    request_id_var,
)

TOKEN = "r8_Abc123def456GHI789jkl012mno345pqr678"
ADMIN_KEY = "admin-key-unit-logs-91f3e2"


@pytest.fixture
def configure() -> Iterator[Any]:
    installed: list[logging.Handler] = []

    def install(fmt: str = "json", **options: Any) -> io.StringIO:
        stream = io.StringIO()
        installed.append(configure_logging("DEBUG", fmt, stream=stream, **options))
        return stream

    try:
        yield install
    finally:
        for handler in installed:
            remove_logging(handler)


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_every_event_is_one_json_line_with_the_standard_fields(configure: Any) -> None:
    stream = configure(replica_id="api-7")
    log = logging.getLogger("service.example")
    log.info("prediction created", extra={"prediction_id": "p-1", "model": "flux-dev", "n": 3})
    log.warning("multi\nline message")
    first, second = lines(stream)
    assert list(first)[:4] == ["ts", "level", "logger", "message"]
    assert first["ts"].endswith("Z")
    assert first["level"] == "INFO"
    assert first["logger"] == "service.example"
    assert first["message"] == "prediction created"
    assert first["replica_id"] == "api-7"
    assert first["prediction_id"] == "p-1"
    assert first["model"] == "flux-dev"
    assert first["n"] == 3
    assert "request_id" not in first
    assert second["message"] == "multi\nline message"
    assert len(stream.getvalue().splitlines()) == 2


def test_the_request_id_comes_from_the_context(configure: Any) -> None:
    stream = configure()
    token = request_id_var.set("req-123")
    try:
        logging.getLogger("service.x").info("inside a request")
    finally:
        request_id_var.reset(token)
    logging.getLogger("service.x").info("outside")
    inside, outside = lines(stream)
    assert inside["request_id"] == "req-123"
    assert "request_id" not in outside


def test_secret_fields_and_token_looking_text_never_print(configure: Any) -> None:
    stream = configure(known_secrets=[ADMIN_KEY])
    log = logging.getLogger("service.secrets")
    log.info(
        "calling Replicate with %s (admin %s)",
        TOKEN,
        ADMIN_KEY,
        extra={
            "token": "r8_secret",
            "api_key": "plain-value",
            "Authorization": "Bearer abcdefghijklmnop1234",
            "password": "hunter2",
            "client_secret": "s3cr3t",
            "credentials": {"replicate_api_token": TOKEN},
            "payload": {"nested": {"apiKey": "k", "note": f"has {TOKEN} inside"}},
            "headers": [f"Authorization: Bearer {TOKEN}", "Accept: */*"],
            "account": "0123abcd4567ef89",
        },
    )
    text = stream.getvalue()
    for secret in (
        TOKEN,
        "r8_secret",
        ADMIN_KEY,
        "plain-value",
        "hunter2",
        "s3cr3t",
        "abcdefghijklmnop1234",
    ):
        assert secret not in text
    (line,) = lines(stream)
    assert line["message"] == f"calling Replicate with r8_{REDACTED} (admin {REDACTED})"
    for name in ("token", "api_key", "Authorization", "password", "client_secret", "credentials"):
        assert line[name] == REDACTED
    assert line["payload"]["nested"]["apiKey"] == REDACTED
    assert line["payload"]["nested"]["note"] == f"has r8_{REDACTED} inside"
    assert line["headers"][1] == "Accept: */*"
    assert line["account"] == "0123abcd4567ef89"  # a fingerprint is not a secret


def test_tracebacks_are_masked_too(configure: Any) -> None:
    stream = configure()
    try:
        raise ValueError(f"bad token {TOKEN}")
    except ValueError:
        logging.getLogger("service.err").exception("it failed")
    (line,) = lines(stream)
    assert "ValueError" in line["exception"]
    assert TOKEN not in stream.getvalue()


def test_auth_header_values_are_masked_but_ordinary_words_kept(configure: Any) -> None:
    stream = configure()
    logging.getLogger("service.upstream").info("token rejected by Replicate")
    logging.getLogger("service.upstream").info("Bearer tokens are masked, words are not")
    logging.getLogger("service.upstream").info("header Authorization: Bearer abcdefghij0123456789")
    first, second, third = lines(stream)
    assert first["message"] == "token rejected by Replicate"
    assert second["message"] == "Bearer tokens are masked, words are not"
    assert third["message"] == f"header Authorization: Bearer {REDACTED}"


def test_unserialisable_values_become_text_and_are_masked(configure: Any) -> None:
    class Opaque:
        def __str__(self) -> str:
            return f"Opaque({TOKEN})"

    stream = configure()
    logging.getLogger("service.x").info("object", extra={"thing": Opaque(), "when": {1, 2}})
    (line,) = lines(stream)
    assert line["thing"] == f"Opaque(r8_{REDACTED})"
    assert sorted(line["when"]) == [1, 2]


def test_text_format_has_the_same_fields_and_redaction(configure: Any) -> None:
    stream = configure("text", replica_id="api-1")
    logging.getLogger("service.t").info("hello %s", TOKEN, extra={"token": TOKEN, "n": 1})
    text = stream.getvalue()
    assert TOKEN not in text
    assert "service.t: hello r8_[REDACTED]" in text
    assert 'replica_id="api-1"' in text
    assert 'token="[REDACTED]"' in text


def test_configuring_twice_replaces_the_handler(configure: Any) -> None:
    first = configure()
    second = configure()
    logging.getLogger("service.once").info("one line")
    assert first.getvalue() == ""
    assert len(lines(second)) == 1


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="log format"):
        configure_logging("INFO", "yaml")


def test_short_known_secrets_are_not_used_as_patterns() -> None:
    redactor = Redactor(known_secrets=["abc", ""])
    assert redactor.text("abc def") == "abc def"


def test_removing_the_handler_puts_the_touched_loggers_back() -> None:
    root, access, httpx_log = (logging.getLogger(n) for n in ("", "uvicorn.access", "httpx"))
    before = (root.level, access.disabled, access.propagate, httpx_log.level, list(root.handlers))
    handler = configure_logging("DEBUG", "json", stream=io.StringIO())
    assert access.disabled
    assert httpx_log.level == logging.WARNING
    remove_logging(handler)
    after = (root.level, access.disabled, access.propagate, httpx_log.level, list(root.handlers))
    assert after == before
