"""Demo mode (`python -m service` without REPLICATE_API_TOKEN): the Replicate simulator in-process.

Nothing here is switched silently: `python -m service` prints `banner()` saying what is
simulated, and the service itself still only talks to REPLICATE_BASE_URL (pointed at the
simulator). The simulator is tuned by the usual SIM_* variables (service/simulator/config.py);
its latency defaults to DEFAULT_LATENCY_S here, so a demo prediction feels real but short.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Mapping

import uvicorn

from service.simulator import SimulatorConfig, create_app

DEMO_TOKEN = "r8_demo_simulator"
DEFAULT_LATENCY_S = 2.0
# Declared by the demo when GLOBAL_SEMAPHORES is unset: the semaphore the README's examples name.
DEMO_SEMAPHORES = "image-generation-global=4"
# Where the banner puts the embedded Redis' URL for the README's Python example. Not REDIS_URL:
# a later ./scripts/run.sh in the same shell would take it, and that Redis is gone by then.
REDIS_URL_VARIABLE = "RCG_REDIS_URL"

GENERATE_EXAMPLE = {
    "model_name": "flux-dev",
    "prompt": "A serene mountain landscape at sunset",
    "output_filename": "mountain_sunset",
    "aspect_ratio": "16:9",
}
BATCH_EXAMPLE = {
    "model_name": "flux-dev",
    "tasks": [
        {"prompt": "A red sports car", "output_filename": "red_car.jpg", "aspect_ratio": "16:9"},
        {"prompt": "A blue ocean wave", "output_filename": "blue_wave", "num_outputs": 2},
    ],
}


def demo_config(environ: Mapping[str, str] | None = None) -> SimulatorConfig:
    """SIM_* settings, on a free loopback port, accepting the demo token."""
    env = os.environ if environ is None else environ
    config = SimulatorConfig.from_env(env)
    changes: dict[str, object] = {"host": "127.0.0.1", "port": _free_port()}
    if not env.get("SIM_LATENCY_SECONDS", "").strip():
        changes["latency_s"] = DEFAULT_LATENCY_S
    if config.tokens is not None:
        changes["tokens"] = config.tokens | {DEMO_TOKEN}
    return config.replace(**changes)


class DemoSimulator:
    """The simulator app served by uvicorn in a daemon thread (its own event loop)."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self._server = uvicorn.Server(
            uvicorn.Config(
                create_app(config),
                host=config.host,
                port=config.port,
                # No log_level: uvicorn would set it on the process-wide uvicorn.* loggers,
                # which the service's own server shares.
                log_level=None,
                log_config=None,
                access_log=False,
                ws="none",
                lifespan="off",
                timeout_graceful_shutdown=1,
            )
        )
        self._thread = threading.Thread(
            target=self._server.run, name="replicate-simulator", daemon=True
        )

    @property
    def base_url(self) -> str:
        return f"http://{self.config.host}:{self.config.port}"

    def start(self, timeout_s: float = 15.0) -> str:
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the demo Replicate simulator did not start")
            time.sleep(0.01)
        return self.base_url

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=5)


def curl_lines(service_url: str) -> list[str]:
    """Ready-to-paste requests (no auth header: the demo enables the environment fallback)."""
    return [
        f"curl -s {service_url}/health",
        _curl(service_url, "/generate", GENERATE_EXAMPLE),
        _curl(service_url, "/generate-batch", BATCH_EXAMPLE),
    ]


def _curl(service_url: str, path: str, payload: object) -> str:
    body = json.dumps(payload, ensure_ascii=True)
    return f"curl -s -X POST {service_url}{path} -H 'Content-Type: application/json' -d '{body}'"


def exports(admin_key: str | None, embedded_redis_url: str | None) -> list[str]:
    """Shell lines the README's examples need (`$ADMIN_KEY`, and `$RCG_REDIS_URL` for the
    Python example), to paste as they are."""
    if admin_key is not None:
        lines = [f"export ADMIN_KEY={admin_key}"]
    else:  # the operator's own key: never printed, taken from the same shell
        lines = ['export ADMIN_KEY="$CONCURRENT_DOCKER_ADMIN_API_KEY"']
    if embedded_redis_url is not None:
        lines.append(f"export {REDIS_URL_VARIABLE}={embedded_redis_url}")
    return lines


def banner(
    simulator_url: str,
    service_url: str,
    latency_s: float,
    *,
    admin_key: str | None = None,
    semaphores: str = "",
    embedded_redis_url: str | None = None,
) -> str:
    """`admin_key`: the one the demo made (CONCURRENT_DOCKER_ADMIN_API_KEY was unset), printed
    so that the README's examples can send it; None when the operator set their own."""
    rule = "=" * 96
    key_lines = (
        [
            "  - an ADMIN KEY (X-Admin-API-Key) made for this run: CONCURRENT_DOCKER_ADMIN_API_KEY",
            "    is unset (a new key at every start; set the variable to keep one)",
        ]
        if admin_key is not None
        else ["  - admin key (X-Admin-API-Key): your CONCURRENT_DOCKER_ADMIN_API_KEY"]
    )
    semaphore_lines = (
        [f"  - declared semaphores (GLOBAL_SEMAPHORES): {semaphores}"] if semaphores else []
    )
    lines = [
        rule,
        "DEMO MODE: REPLICATE_API_TOKEN is not set, so this service talks to a LOCAL SIMULATOR",
        "of Replicate's API instead of the real one.",
        f"  - simulator: {simulator_url} (in this process; ~{latency_s:g} s per prediction;",
        "    SIM_* variables tune it, e.g. SIM_LATENCY_SECONDS)",
        "  - NO real images are generated: output URLs point at placeholder images served by",
        "    the simulator, and no Replicate account is used or billed",
        f"  - REPLICATE_BASE_URL is set to the simulator, with the demo token {DEMO_TOKEN}",
        "  - the ENVIRONMENT FALLBACK tier is ON (ALLOW_ENV_FALLBACK) because this is the demo:",
        "    requests without X-Admin-API-Key or credentials use the demo token",
        *key_lines,
        *semaphore_lines,
        "Set REPLICATE_API_TOKEN (and CONCURRENT_DOCKER_ADMIN_API_KEY) to use real Replicate.",
        "",
        "Paste into your shell for the README's examples:",
        *exports(admin_key, embedded_redis_url),
        "",
        "Try:",
        *curl_lines(service_url),
        rule,
    ]
    return "\n".join(lines)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
