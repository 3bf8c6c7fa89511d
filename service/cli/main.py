"""Entry point: parse, connect, run one command, and turn every failure into an exit code with a
one-line message (no tracebacks): 0 ok, 1 not found or refused, 2 usage, 3 Redis unreachable."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from collections.abc import Sequence
from urllib.parse import urlsplit, urlunsplit

from redis import exceptions as redis_exceptions

from service.coordination import (
    CoordinationUnavailable,
    Coordinator,
    CoordinatorConfig,
    InvalidLimit,
    SemaphoreExists,
    SemaphoreNotFound,
)
from service.coordination.connection import options_from_environment

from .commands import COMMANDS, Context, Refused
from .parser import Connection, UsageError, build_parser, connection

OK, REFUSED, USAGE, UNREACHABLE = 0, 1, 2, 3
INTERRUPTED = 130
REPLICA_ID = "operator-cli"


def redacted(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + host))


def _fail(message: str, code: int) -> int:
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()
    return code


async def run(args: argparse.Namespace, conn: Connection) -> int:
    try:
        coordinator = Coordinator(
            CoordinatorConfig(
                redis_url=conn.redis_url,
                prefix=conn.prefix,
                replica_id=REPLICA_ID,
                redis_timeout_s=conn.timeout_s,
                # REDIS_CLUSTER, REDIS_SENTINELS...: a Cluster or Sentinel (docs/redis-ha.md)
                **options_from_environment(os.environ),
            )
        )
    except ValueError as exc:  # redis-py rejects the URL's scheme or shape, or a mode variable
        return _fail(f"invalid Redis URL {redacted(conn.redis_url)}: {exc}", USAGE)
    ctx = Context(coordinator=coordinator, out=sys.stdout, err=sys.stderr, as_json=args.json)
    try:
        return await COMMANDS[args.command](ctx, args)
    except CoordinationUnavailable as exc:
        cause = f" ({exc.__cause__})" if exc.__cause__ else ""
        return _fail(f"{exc} at {redacted(conn.redis_url)}{cause}", UNREACHABLE)
    except (SemaphoreNotFound, SemaphoreExists, Refused) as exc:
        return _fail(str(exc), REFUSED)
    except (InvalidLimit, UsageError) as exc:  # UsageError: a setting read by the command
        return _fail(str(exc), USAGE)
    except redis_exceptions.InvalidResponse as exc:  # something that does not speak Redis
        return _fail(f"no Redis at {redacted(conn.redis_url)}: {exc}", UNREACHABLE)
    except redis_exceptions.RedisError as exc:  # e.g. NOPERM from an ACL, WRONGTYPE
        return _fail(f"Redis refused the command: {exc}", REFUSED)
    finally:
        # Never started, so close() only drops the connection pools (no lease to release).
        with contextlib.suppress(Exception):
            await coordinator.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # exits 2 on a usage error
    try:
        conn = connection(args)
    except UsageError as exc:
        parser.error(str(exc))
    try:
        return asyncio.run(run(args, conn))
    except KeyboardInterrupt:
        # Ctrl-C ends a --watch normally; anything else it interrupts exits like a shell would.
        sys.stdout.write("\n")
        return OK if getattr(args, "watch", None) else INTERRUPTED
