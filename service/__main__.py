"""python -m service: settings from the environment → one uvicorn process (one replica).

- A bad setting stops the process with exit code 2 and a message naming the variable.
- REDIS_URL unset → an embedded in-process Redis, with a loud warning (one replica only).
- REPLICATE_API_TOKEN unset → demo mode: the Replicate simulator in-process, announced by a
  banner with ready-to-paste curl lines (service/demo.py).
- SIGTERM/SIGINT: uvicorn stops accepting, gives in-flight requests DRAIN_SECONDS, then the
  lifespan cancels what is left and releases every lease (service/app.py).

Prints `replicate-concurrent-generation ready on http://HOST:PORT` once it accepts connections.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import secrets
import socket
import sys
from collections.abc import Callable
from types import FrameType

import uvicorn
from pydantic import SecretStr, ValidationError
from pydantic_settings import SettingsError

from service import SERVICE_NAME
from service.config import Settings

log = logging.getLogger("service")

READY_PREFIX = f"{SERVICE_NAME} ready on "
_SECRET_VARIABLES = {
    "REPLICATE_API_TOKEN",
    "CONCURRENT_DOCKER_ADMIN_API_KEY",
    "REDIS_URL",
    "REDIS_SENTINEL_PASSWORD",
    "TOKEN_SEALING_KEY",
    "WEBHOOK_SECRET",
}
_LOG_LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG")


def describe_settings_error(exc: ValidationError) -> str:
    """One line per bad variable; values of secrets (and of REDIS_URL: it may hold a password)
    are never echoed."""
    lines = ["Invalid configuration (environment variables):"]
    for error in exc.errors(include_url=False):
        loc = error.get("loc") or ("?",)
        variable = str(loc[0]).upper()
        value = error.get("input")
        # pydantic prefixes a validator's own message with "Value error, ": the message is ours.
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        shown = ""
        if (
            variable not in _SECRET_VARIABLES
            and isinstance(value, str)
            and len(value) <= 80
            and repr(value) not in message  # a validator that already quotes the value
        ):
            # "…, got 'foo' (in 'a=1,foo')": the value, after a validator quoted its bad part
            shown = f" (in {value!r})" if "got " in message else f" (got {value!r})"
        lines.append(f"  {variable}: {message}{shown}")
    return "\n".join(lines)


def load_settings() -> Settings | str:
    """Settings, or the message to print before exiting with code 2."""
    try:
        settings = Settings()
    except ValidationError as exc:
        return describe_settings_error(exc)
    except SettingsError as exc:
        return f"Invalid configuration (environment variables): {exc}"
    if settings.log_level.upper() not in _LOG_LEVELS:
        return (
            "Invalid configuration (environment variables):\n"
            f"  LOG_LEVEL: must be one of {', '.join(_LOG_LEVELS)} (got {settings.log_level!r})"
        )
    return settings


def configure_logging(settings: Settings) -> None:
    """JSON (or text) lines on stderr, secrets masked (service/observability/logs.py)."""
    from service.observability.logs import configure_logging as install

    secrets = [
        secret.get_secret_value()
        for secret in (
            settings.replicate_api_token,
            settings.concurrent_docker_admin_api_key,
            settings.token_sealing_key,
            settings.webhook_secret,
            settings.redis_sentinel_password,
        )
        if secret is not None
    ]
    install(
        settings.log_level.upper(),
        settings.log_format,
        replica_id=settings.effective_replica_id,
        known_secrets=secrets,
    )


class _AnnouncingServer(uvicorn.Server):
    """Calls `on_ready(url)` once the listening socket exists; exits normally on SIGTERM."""

    def __init__(self, config: uvicorn.Config, on_ready: Callable[[str], None]) -> None:
        super().__init__(config)
        self._on_ready = on_ready

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Not ready from now on: /readyz answers 503 while in-flight requests drain.
        app = self.config.app
        if hasattr(app, "state"):
            app.state.draining = True
        super().handle_exit(sig, frame)
        # uvicorn re-raises a captured SIGTERM/SIGINT once it has shut down, which would kill
        # the process before the embedded Redis and the demo simulator stop. A drained,
        # graceful stop is a normal exit: code 0.
        # (private: pinned, tests/unit/test_private_contracts.py)
        captured = getattr(self, "_captured_signals", None)
        if isinstance(captured, list):
            captured.clear()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started and self.servers:
            port = self.servers[0].sockets[0].getsockname()[1]
            host = self.config.host
            if host in ("0.0.0.0", "::", ""):
                host = "127.0.0.1"
            self._on_ready(f"http://{host}:{port}")


def usage() -> str:
    """`python -m service --help`: what it does and every setting, with its default."""
    lines = [
        f"usage: python -m service   ({SERVICE_NAME}: one replica, configured by the environment)",
        "",
        "environment variables (default):",
    ]
    for name, field in Settings.model_fields.items():
        default = field.default
        shown = "unset" if default is None or isinstance(default, SecretStr) else repr(default)
        lines.append(f"  {name.upper():<34} {shown}")
    lines += [
        "",
        "REDIS_URL unset: an embedded Redis (one replica only). REPLICATE_API_TOKEN unset: demo",
        "mode against a local Replicate simulator. Details: README.md, Configuration.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args:
        if args[0] in ("-h", "--help"):
            print(usage())
            return 0
        print(f"unknown argument {args[0]!r}: python -m service takes none (see --help)")
        return 2
    loaded = load_settings()
    if isinstance(loaded, str):
        print(loaded, file=sys.stderr)
        return 2
    settings = loaded
    demo_admin_key: str | None = None
    if settings.replicate_api_token is None and settings.concurrent_docker_admin_api_key is None:
        # Demo mode without an admin key: one of its own, printed in the banner (the README's
        # examples send it), and made before the logs start so that they mask it.
        demo_admin_key = "demo-" + secrets.token_urlsafe(18)
        settings = settings.model_copy(
            update={"concurrent_docker_admin_api_key": SecretStr(demo_admin_key)}
        )
    configure_logging(settings)

    # Imported here so that a configuration error exits before anything heavy loads.
    from service.app import create_app
    from service.coordination import KeySpace
    from service.demo import DEMO_SEMAPHORES, DEMO_TOKEN, DemoSimulator, banner, demo_config
    from service.embedded_redis import WARNING_BANNER, EmbeddedRedis
    from service.sealing import new_key

    embedded: EmbeddedRedis | None = None
    simulator: DemoSimulator | None = None
    try:
        if not settings.redis_url:
            embedded = EmbeddedRedis()
            url = embedded.start()
            embedded.mark_store_known(KeySpace(settings.redis_key_prefix).epoch)
            print(WARNING_BANNER, file=sys.stderr, flush=True)
            log.warning("REDIS_URL unset: embedded in-process Redis at %s (one replica only)", url)
            settings = settings.model_copy(update={"redis_url": url})

        if settings.replicate_api_token is None:
            simulator = DemoSimulator(demo_config())
            simulator_url = simulator.start()
            log.warning("demo mode: REPLICATE_BASE_URL -> simulator at %s", simulator_url)
            settings = settings.model_copy(
                update={
                    "replicate_base_url": simulator_url,
                    "replicate_api_token": SecretStr(DEMO_TOKEN),
                    "allow_env_fallback": True,
                    # Job webhooks may target a local receiver in the demo (http, loopback).
                    "webhook_allow_private": True,
                    # So that callers' own tokens can be settled by the demo too.
                    "token_sealing_key": settings.token_sealing_key or SecretStr(new_key()),
                    # The semaphore the README's examples name (set before anything reads
                    # declared_semaphores: model_copy would keep a cached value).
                    "global_semaphores": settings.global_semaphores.strip() or DEMO_SEMAPHORES,
                }
            )

        def on_ready(service_url: str) -> None:
            if simulator is not None:
                text = banner(
                    simulator.base_url,
                    service_url,
                    simulator.config.latency_s,
                    admin_key=demo_admin_key,
                    semaphores=settings.global_semaphores,
                    embedded_redis_url=embedded.url if embedded is not None else None,
                )
                print(text, flush=True)
            print(f"{READY_PREFIX}{service_url}", flush=True)

        server = _AnnouncingServer(
            uvicorn.Config(
                create_app(settings),
                host=settings.flask_host,
                port=settings.flask_port,
                proxy_headers=True,
                timeout_graceful_shutdown=math.ceil(settings.drain_seconds),
                log_config=None,
                access_log=False,  # one request line per request comes from our middleware
                lifespan="on",
                ws="none",
            ),
            on_ready,
        )
        server.run()
        return 0 if server.started else 1
    finally:
        if simulator is not None:
            simulator.stop()
        if embedded is not None:
            embedded.stop()


def exit_now(code: int) -> None:
    """Leave without the interpreter's teardown. By now uvicorn has drained, the lifespan has
    closed everything (leases released, predictions cancelled) and the demo's simulator and
    embedded Redis have stopped: what is left is collecting ~100k objects of ~1000 modules,
    which took longer than the shutdown itself (and several times longer on a busy host).
    Logs and stdio are flushed first. Tests that call main() keep their interpreter."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    exit_now(main())
