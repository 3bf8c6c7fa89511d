"""python -m service.simulator [--host H --port P --latency S --jitter F --tokens r8_a,r8_b ...]

Flags override the SIM_* environment variables, which override the defaults (config.py).
Prints exactly one line, "replicate-simulator ready on http://H:P", once it accepts connections.
"""

from __future__ import annotations

import argparse
import socket
import sys
from collections.abc import Callable, Sequence

import uvicorn

from service.simulator.app import create_app
from service.simulator.config import (
    SimulatorConfig,
    parse_model_latency,
    parse_tokens,
)

READY_PREFIX = "replicate-simulator ready on "

# flag → (config field, converter); each mirrors a SIM_* variable of config.ENV_VARS.
_FLAGS: dict[str, tuple[str, Callable[[str], object]]] = {
    "--host": ("host", str),
    "--port": ("port", int),
    "--latency": ("latency_s", float),
    "--jitter": ("jitter_fraction", float),
    "--model-latency": ("model_latency_s", parse_model_latency),
    "--queue-fraction": ("queue_fraction", float),
    "--tokens": ("tokens", parse_tokens),
    "--create-limit": ("create_limit", int),
    "--other-limit": ("other_limit", int),
    "--rate-window": ("rate_window_s", float),
    "--output-ttl": ("output_ttl_s", float),
    "--public-base-url": ("public_base_url", str),
    "--seed": ("seed", int),
}

_HELP = {
    "--host": "bind address (SIM_HOST, default 127.0.0.1)",
    "--port": "port, 0 = any free one (SIM_PORT, default 8100)",
    "--latency": "mean seconds per prediction (SIM_LATENCY_SECONDS, default 3.0)",
    "--jitter": "latency spread as a fraction, ±F (SIM_JITTER, default 0.1)",
    "--model-latency": "per-model override, owner/name=S,... (SIM_MODEL_LATENCY)",
    "--queue-fraction": "share of the latency spent 'starting' (SIM_QUEUE_FRACTION, 0.1)",
    "--tokens": "comma-separated valid tokens; default any r8_ token (SIM_TOKENS)",
    "--create-limit": "creates per window per token (SIM_CREATE_LIMIT, default 600)",
    "--other-limit": "other requests per window per token (SIM_OTHER_LIMIT, default 3000)",
    "--rate-window": "rate window seconds (SIM_RATE_WINDOW_SECONDS, default 60)",
    "--output-ttl": "seconds outputs live after completion (SIM_OUTPUT_TTL_SECONDS, 3600)",
    "--public-base-url": "origin written into URLs (SIM_PUBLIC_BASE_URL, default the request's)",
    "--seed": "random seed for latencies and failures (SIM_SEED)",
}


def parse_args(argv: Sequence[str] | None = None) -> tuple[SimulatorConfig, str]:
    """Build the config from SIM_* variables, then the flags; returns (config, log level)."""
    parser = argparse.ArgumentParser(
        prog="python -m service.simulator", description="Local fake of Replicate's HTTP API."
    )
    for flag in _FLAGS:
        parser.add_argument(flag, default=None, help=_HELP[flag])
    parser.add_argument("--log-level", default="warning", help="uvicorn log level")
    args = parser.parse_args(argv)
    try:
        base = SimulatorConfig.from_env()
        changes: dict[str, object] = {}
        for flag, (name, convert) in _FLAGS.items():
            raw = getattr(args, flag.lstrip("-").replace("-", "_"))
            if raw is not None:
                changes[name] = convert(raw)
        return base.replace(**changes), str(args.log_level)
    except ValueError as exc:
        parser.error(str(exc))


class _AnnouncingServer(uvicorn.Server):
    """Prints the ready line once the listening sockets exist."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started and self.servers:
            port = self.servers[0].sockets[0].getsockname()[1]
            print(f"{READY_PREFIX}http://{self.config.host}:{port}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    config, log_level = parse_args(argv)
    server = _AnnouncingServer(
        uvicorn.Config(
            create_app(config),
            host=config.host,
            port=config.port,
            log_level=log_level,
            access_log=False,
            ws="none",
            lifespan="off",
            timeout_graceful_shutdown=2,
        )
    )
    server.run()
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
