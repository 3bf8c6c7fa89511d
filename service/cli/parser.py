"""The command line: commands, options, and the checks that make a bad invocation exit 2."""

from __future__ import annotations

import argparse
import math
import os
import re
from dataclasses import dataclass

# The same as service.config.SEMAPHORE_ID_PATTERN (a test keeps them equal); repeated here so the
# CLI needs nothing but the coordination library. Checked on `create` only: existing ids of any
# shape can still be shown, released and deleted.
SEMAPHORE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
PREFIX_PATTERN = r"^[A-Za-z0-9_.:-]{1,32}$"
MIN_WATCH_S = 0.2
MAX_WATCH_S = 3600.0

EPILOG = """\
connection: --redis-url or REDIS_URL; --prefix or REDIS_KEY_PREFIX (default rcg).
exit codes: 0 ok, 1 not found or refused, 2 usage, 3 Redis unreachable.
key layout and redis-cli equivalents: docs/redis-keys.md"""


class UsageError(Exception):
    """A bad value that argparse could not see (an environment variable); exits 2."""


@dataclass(frozen=True)
class Connection:
    redis_url: str
    prefix: str
    timeout_s: float


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def semaphore_id(text: str) -> str:
    if not re.match(SEMAPHORE_ID_PATTERN, text):
        raise argparse.ArgumentTypeError(
            f"invalid id {text!r}: letters, digits and . _ : - (up to 128, starting alphanumeric)"
        )
    return text


def watch_interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or not MIN_WATCH_S <= value <= MAX_WATCH_S:
        raise argparse.ArgumentTypeError(
            f"refresh interval must be between {MIN_WATCH_S} and {MAX_WATCH_S:.0f} seconds"
        )
    return value


def timeout_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or not 0 < value <= 60:
        raise argparse.ArgumentTypeError("must be > 0 and <= 60 seconds")
    return value


def _shared_options(parser: argparse.ArgumentParser, *, in_command: bool) -> None:
    # Accepted before or after the command. In the command's parser the default is SUPPRESS, so
    # an option given before the command is not overwritten by the command's default.
    def default(value: object) -> object:
        return argparse.SUPPRESS if in_command else value

    parser.add_argument(
        "--redis-url", default=default(None), help="redis://[:password@]host:port/db (REDIS_URL)"
    )
    parser.add_argument(
        "--prefix", default=default(None), help="key prefix (REDIS_KEY_PREFIX, default rcg)"
    )
    parser.add_argument(
        "--timeout",
        type=timeout_seconds,
        default=default(2.0),
        metavar="SECONDS",
        help="Redis connect and reply timeout (default 2)",
    )
    parser.add_argument(
        "--json", action="store_true", default=default(False), help="machine-readable output"
    )


def build_parser() -> argparse.ArgumentParser:
    shared = argparse.ArgumentParser(add_help=False)
    _shared_options(shared, in_command=True)
    parser = argparse.ArgumentParser(
        prog="python -m service.cli",
        description="Inspect and operate the semaphores and rate windows shared through Redis.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _shared_options(parser, in_command=False)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, parents=[shared], help=help_text, description=help_text)

    command("list", "every registered semaphore: limit, in use, waiting")

    show = command("show", "one semaphore's holders, waiters and counters")
    show.add_argument("id", metavar="ID")
    show.add_argument(
        "--account", action="store_true", help="ID is an account fingerprint (acct semaphore)"
    )
    show.add_argument(
        "--watch",
        type=watch_interval,
        metavar="SECONDS",
        help=f"refresh every SECONDS (>= {MIN_WATCH_S}) until Ctrl-C",
    )

    create = command("create", "register a semaphore")
    create.add_argument("id", metavar="ID", type=semaphore_id)
    create.add_argument("limit", metavar="LIMIT", type=positive_int)

    set_limit = command("set-limit", "change a registered semaphore's limit")
    set_limit.add_argument("id", metavar="ID")
    set_limit.add_argument("limit", metavar="LIMIT", type=positive_int)

    delete = command("delete", "delete a semaphore and everything under it")
    delete.add_argument("id", metavar="ID")
    delete.add_argument("--yes", action="store_true", help="really delete")

    release = command("release", "force-release a stuck lease (its slot goes to the next waiter)")
    release.add_argument("id", metavar="ID")
    release.add_argument("lease_id", metavar="LEASE_ID")
    release.add_argument(
        "--account", action="store_true", help="ID is an account fingerprint (acct semaphore)"
    )

    window = command("window", "an account's 60 s windows and its concurrency semaphore")
    window.add_argument("fingerprint", metavar="FINGERPRINT")
    window.add_argument(
        "--limit",
        type=positive_int,
        help="creations per minute (default REPLICATE_REQUESTS_PER_MINUTE or 600)",
    )
    window.add_argument(
        "--poll-limit",
        type=positive_int,
        help="polls per minute (default POLL_BUDGET_PER_MINUTE or 2400)",
    )

    command("accounts", "account fingerprints with a concurrency semaphore (SCAN, never KEYS)")

    jobs = command("jobs", "durable jobs: `jobs list` (newest first) or `jobs show ID`")
    jobs.add_argument("action", choices=["list", "show"])
    jobs.add_argument("id", nargs="?", metavar="ID")
    jobs.add_argument("--limit", type=positive_int, default=20, help="jobs to list (20)")
    return parser


def env_int(name: str, default: int) -> int:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        return positive_int(text)
    except argparse.ArgumentTypeError as exc:
        raise UsageError(f"{name}: {exc}") from None


def env_seconds(name: str, default: float) -> float:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise UsageError(f"{name}: must be a positive number of seconds (got {text!r})")
    return value


def connection(args: argparse.Namespace) -> Connection:
    url = args.redis_url or os.environ.get("REDIS_URL", "").strip()
    if not url and os.environ.get("REDIS_SENTINELS", "").strip():
        url = "redis://"  # under Sentinel the URL names no server (docs/redis-ha.md)
    if not url:
        raise UsageError("no Redis URL: pass --redis-url or set REDIS_URL")
    prefix = args.prefix or os.environ.get("REDIS_KEY_PREFIX", "").strip() or "rcg"
    if not re.match(PREFIX_PATTERN, prefix):
        raise UsageError(f"invalid key prefix {prefix!r} (expected {PREFIX_PATTERN})")
    return Connection(redis_url=url, prefix=prefix, timeout_s=float(args.timeout))
