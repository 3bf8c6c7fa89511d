"""Test controls under `/_sim/` (no auth: this is a test tool, never exposed).

GET    /_sim/health             {"status": "ok"}
GET    /_sim/stats[?token_fp=]  what the upstream saw (see stats.py)
GET    /_sim/faults             current faults, and how many were served
POST   /_sim/faults             merge {"create_429": 2, "fail_fraction": 0.3, ...}
DELETE /_sim/faults             clear every fault
POST   /_sim/reset              forget predictions, counters, rate windows, faults, files
GET    /_sim/config             current settings
PATCH  /_sim/config             change latency, limits, ttl, tokens at run time
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service.simulator.config import SimulatorConfig
from service.simulator.faults import FaultState, validate_changes
from service.simulator.responses import json_response
from service.simulator.runtime import SimulatorRuntime
from service.simulator.stats import build_stats

# Settings that may change while running (host/port/seed cannot).
_TUNABLE = {
    "latency_s",
    "jitter_fraction",
    "model_latency_s",
    "queue_fraction",
    "tokens",
    "create_limit",
    "other_limit",
    "rate_window_s",
    "output_ttl_s",
    "max_wait_s",
    "wait_margin_s",
    "public_base_url",
    "image_cache_size",
}


def config_json(config: SimulatorConfig) -> dict[str, Any]:
    data = dataclasses.asdict(config)
    data["model_latency_s"] = dict(config.model_latency_s)
    data["tokens"] = sorted(config.tokens) if config.tokens is not None else None
    return data


async def _json_object(request: Request) -> dict[str, Any] | Response:
    try:
        data = json.loads(await request.body() or b"{}")
    except ValueError:
        return json_response({"detail": "body is not valid JSON"}, 400)
    if not isinstance(data, dict):
        return json_response({"detail": "body must be a JSON object"}, 400)
    return data


def routes(runtime: SimulatorRuntime) -> list[Route]:
    async def health(request: Request) -> Response:
        return json_response({"status": "ok"})

    async def stats(request: Request) -> Response:
        token_fp = request.query_params.get("token_fp") or None
        body = build_stats(runtime.store, runtime.clock(), runtime.faults.as_json(), token_fp)
        body["webhooks"] = {"sent": runtime.webhooks.sent, "failed": runtime.webhooks.failed}
        return json_response(body)

    async def get_faults(request: Request) -> Response:
        return json_response(runtime.faults.as_json())

    async def set_faults(request: Request) -> Response:
        data = await _json_object(request)
        if isinstance(data, Response):
            return data
        changes, problems = validate_changes(data)
        if problems:
            return json_response({"detail": "; ".join(problems)}, 422)
        runtime.faults.merge(changes)
        return json_response(runtime.faults.as_json())

    async def clear_faults(request: Request) -> Response:
        runtime.faults = FaultState()
        return json_response(runtime.faults.as_json())

    async def reset(request: Request) -> Response:
        runtime.reset()
        return json_response({"status": "reset"})

    async def get_config(request: Request) -> Response:
        return json_response(config_json(runtime.config))

    async def patch_config(request: Request) -> Response:
        data = await _json_object(request)
        if isinstance(data, Response):
            return data
        unknown = sorted(set(data) - _TUNABLE)
        if unknown:
            return json_response({"detail": f"not tunable: {', '.join(unknown)}"}, 422)
        if "tokens" in data and data["tokens"] is not None:
            data["tokens"] = frozenset(str(t) for t in data["tokens"])
        try:
            runtime.reconfigure(runtime.config.replace(**data))
        except (TypeError, ValueError) as exc:
            return json_response({"detail": str(exc)}, 422)
        return json_response(config_json(runtime.config))

    return [
        Route("/_sim/health", health, methods=["GET"]),
        Route("/_sim/stats", stats, methods=["GET"]),
        Route("/_sim/faults", get_faults, methods=["GET"]),
        Route("/_sim/faults", set_faults, methods=["POST"]),
        Route("/_sim/faults", clear_faults, methods=["DELETE"]),
        Route("/_sim/reset", reset, methods=["POST"]),
        Route("/_sim/config", get_config, methods=["GET"]),
        Route("/_sim/config", patch_config, methods=["PATCH"]),
    ]
