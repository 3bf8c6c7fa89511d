"""create_app(config): the simulator's Starlette app (Replicate API + files + /_sim controls)."""

from __future__ import annotations

import time
from collections.abc import Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from service.simulator import admin, api, files, responses
from service.simulator.config import SimulatorConfig
from service.simulator.runtime import SimulatorRuntime


async def _http_error(request: Request, exc: Exception) -> Response:
    """Unknown paths and wrong methods answer in Replicate's shape."""
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    if status == 404:
        return responses.not_found()
    detail = exc.detail if isinstance(exc, HTTPException) else "Internal Server Error"
    headers = dict(exc.headers or {}) if isinstance(exc, HTTPException) else {}
    return responses.json_response({"detail": detail, "status": status}, status, headers)


def create_app(config: SimulatorConfig, *, clock: Callable[[], float] = time.time) -> Starlette:
    """The fake Replicate API; `app.state.runtime` is its live state (for in-process tests)."""
    runtime = SimulatorRuntime(config, clock)
    app = Starlette(
        routes=[*api.routes(runtime), *files.routes(runtime), *admin.routes(runtime)],
        exception_handlers={404: _http_error, 405: _http_error},
    )
    app.state.runtime = runtime
    return app
