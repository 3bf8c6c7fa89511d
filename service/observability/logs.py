"""Structured logs: one JSON object per line, with the request id, and secrets masked by
construction.

    {"ts": "2025-01-01T12:00:00.123Z", "level": "INFO", "logger": "service.access",
     "message": "POST /generate 200", "request_id": "7f3c...", "replica_id": "api-1",
     "method": "POST", "route": "/generate", "status": 200, "duration_ms": 5312.4}

- `configure_logging(level, fmt)` installs one handler on the root logger (`fmt` "json", or
  "text" for people at a terminal: same fields, same redaction). Calling it again replaces it.
- The request id lives in a ContextVar set by the observability middleware, so every line
  logged while serving a request (and in tasks it starts) carries it.
- Redaction happens in the formatter, so no call site can forget it: any field whose name
  suggests a secret (token, api_key, authorization, password, secret, credentials, cookie) is
  masked, at any depth of nested dicts; `r8_...` Replicate tokens, `Bearer ...` values and any
  configured secret value are masked wherever they appear (message, fields, tracebacks).
- Uvicorn's access log is switched off: the middleware writes its own request line (and skips
  health probes). Run uvicorn with `log_config=None, access_log=False` so it leaves this alone.
  httpx's per-request INFO lines are raised to WARNING (service.upstream logs upstream events).
"""

from __future__ import annotations

import functools
import json
import logging
import re
import sys
from collections.abc import Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any

REDACTED = "[REDACTED]"

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)

# Field names that suggest a secret; matched case-insensitively anywhere in the name.
_SECRET_NAME = re.compile(
    r"token|api_?key|authori[sz]ation|passw(or)?d|secret|credential|cookie|private_?key",
    re.IGNORECASE,
)
# Replicate tokens (r8_ + url-safe characters), and an HTTP auth scheme followed by a
# credential-looking value (16+ characters with a digit: "token rejected" is not one).
_SECRET_TEXT = re.compile(
    r"r8_[A-Za-z0-9_\-]{4,}"
    r"|(?i:\b(?:bearer|token|basic)\s+)(?=[A-Za-z0-9._~+/=\-]*\d)[A-Za-z0-9._~+/=\-]{16,}",
)

# LogRecord attributes that are not `extra=` fields.
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None))) | {
    "message",
    "asctime",
    "taskName",
}

# Fields every line may carry, in this order after ts/level/logger/message.
CONTEXT_FIELDS = ("request_id", "replica_id", "model", "prediction_id", "semaphore_id")


@functools.lru_cache(maxsize=4096)  # field names repeat: a regex search per line otherwise
def is_secret_name(name: str) -> bool:
    return bool(_SECRET_NAME.search(name))


class Redactor:
    """Masks secrets in text and in structured values."""

    def __init__(self, known_secrets: Iterable[str] = ()) -> None:
        # Only values long enough not to mask ordinary words by accident.
        self._known = sorted({s for s in known_secrets if len(s) >= 8}, key=len, reverse=True)

    def text(self, value: str) -> str:
        for secret in self._known:
            if secret in value:
                value = value.replace(secret, REDACTED)
        return _SECRET_TEXT.sub(_mask_match, value)

    def value(self, value: Any, depth: int = 0) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, bool | int | float) or value is None:
            return value
        if depth > 8:
            return REDACTED
        if isinstance(value, dict):
            return {
                str(k): REDACTED if is_secret_name(str(k)) else self.value(v, depth + 1)
                for k, v in value.items()
            }
        if isinstance(value, list | tuple | set | frozenset):
            return [self.value(v, depth + 1) for v in value]
        return self.text(str(value))


def _mask_match(match: re.Match[str]) -> str:
    text = match.group(0)
    if text.startswith("r8_"):
        return "r8_" + REDACTED
    scheme = text.split(None, 1)[0]
    return f"{scheme} {REDACTED}"


class _ContextFields:
    """Fields set once per process (replica id) and per request (request id)."""

    replica_id: str | None = None


# uvicorn's ANSI-coloured copy of its message: noise in a log line.
_DROPPED = frozenset({"color_message"})
_NOT_EXTRA = _RECORD_ATTRS | _DROPPED


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _NOT_EXTRA}


class _Timestamps:
    """`2025-01-01T12:00:00.123Z` for a record's `created`, as
    `datetime.fromtimestamp(created, UTC)` gives it (microseconds rounded half-even, then
    truncated to milliseconds); the part up to the second is computed once per second."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def format(self, created: float) -> str:
        second = int(created)
        micros = round((created - second) * 1_000_000)
        if micros >= 1_000_000:
            second, micros = second + 1, micros - 1_000_000
        if second != self._second:
            moment = datetime.fromtimestamp(second, UTC)
            self._prefix = moment.strftime("%Y-%m-%dT%H:%M:%S.")
            self._second = second
        return f"{self._prefix}{micros // 1000:03d}Z"


# One encoder for every line (json.dumps with options builds a new one per call).
_ENCODER = json.JSONEncoder(default=str, ensure_ascii=False)


class JsonFormatter(logging.Formatter):
    def __init__(self, redactor: Redactor | None = None) -> None:
        super().__init__()
        self.redactor = redactor or Redactor()
        self._timestamps = _Timestamps()

    def format(self, record: logging.LogRecord) -> str:
        return _ENCODER.encode(self.fields(record))

    def fields(self, record: logging.LogRecord) -> dict[str, Any]:
        redact = self.redactor
        out: dict[str, Any] = {
            "ts": self._timestamps.format(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": redact.text(record.getMessage()),
        }
        request_id = request_id_var.get()
        if request_id is not None:
            out["request_id"] = request_id
        if _ContextFields.replica_id:
            out["replica_id"] = _ContextFields.replica_id
        extras = _extras(record)
        for name in CONTEXT_FIELDS:
            if extras.get(name) is not None:
                out[name] = redact.value(extras.pop(name))
            else:
                extras.pop(name, None)
        for name, value in extras.items():
            out[name] = REDACTED if is_secret_name(name) else redact.value(value)
        if record.exc_info:
            out["exception"] = redact.text(self.formatException(record.exc_info))
        if record.stack_info:
            out["stack"] = redact.text(self.formatStack(record.stack_info))
        return out


class TextFormatter(JsonFormatter):
    """`ts LEVEL logger: message key=value ...` with the same fields and redaction."""

    def format(self, record: logging.LogRecord) -> str:
        fields = self.fields(record)
        head = f"{fields.pop('ts')} {fields.pop('level'):<7} {fields.pop('logger')}: "
        head += str(fields.pop("message"))
        tail = fields.pop("exception", None)
        parts = [head, *(f"{k}={json.dumps(v, default=str)}" for k, v in fields.items())]
        line = " ".join(parts)
        return f"{line}\n{tail}" if tail else line


@dataclass
class _LoggerState:
    handlers: list[logging.Handler]
    propagate: bool
    disabled: bool
    level: int


_TOUCHED = ("", "uvicorn", "uvicorn.error", "uvicorn.access", "httpx", "httpcore")
# The loggers' state before the first configure_logging, for remove_logging to put back.
_saved: dict[str, _LoggerState] = {}


class _Installed(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks the handler configure_logging installed, so a second call replaces it."""


def configure_logging(
    level: str | int = "INFO",
    fmt: str = "json",
    *,
    replica_id: str | None = None,
    known_secrets: Iterable[str] = (),
    stream: IO[str] | None = None,
) -> logging.Handler:
    """Install the JSON (or text) formatter on the root logger; silence uvicorn's access log.

    `known_secrets` (the server's Replicate token, the admin key) are masked verbatim wherever
    they would appear. Returns the installed handler.
    """
    if fmt not in ("json", "text"):
        raise ValueError(f"log format must be 'json' or 'text', got {fmt!r}")
    redactor = Redactor(known_secrets)
    handler = _Installed(stream or sys.stderr)
    handler.setFormatter(JsonFormatter(redactor) if fmt == "json" else TextFormatter(redactor))
    if not _saved:
        for name in _TOUCHED:
            logger = logging.getLogger(name)
            _saved[name] = _LoggerState(
                list(logger.handlers), logger.propagate, logger.disabled, logger.level
            )
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Installed)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    _ContextFields.replica_id = replica_id
    for name in ("uvicorn", "uvicorn.error"):  # through the root handler, at the root's level
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
        logger.setLevel(logging.NOTSET)
    access = logging.getLogger("uvicorn.access")
    access.handlers.clear()
    access.propagate = False
    access.disabled = True
    # httpx logs every request at INFO (the replicate client's calls): service.upstream
    # already logs what matters about them, once per event.
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)
    return handler


def remove_logging(handler: logging.Handler) -> None:
    """Undo configure_logging: the handler goes, the touched loggers get their state back."""
    root = logging.getLogger()
    root.removeHandler(handler)
    _ContextFields.replica_id = None
    if any(isinstance(h, _Installed) for h in root.handlers):
        return
    for name, state in _saved.items():
        logger = logging.getLogger(name)
        if name:  # the root's other handlers were never touched (others may own them)
            logger.handlers[:] = state.handlers
        logger.propagate = state.propagate
        logger.disabled = state.disabled
        logger.setLevel(state.level)
    _saved.clear()
