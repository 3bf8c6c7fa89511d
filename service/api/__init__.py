"""Thin routers: parse → authenticate → call → shape the answer. They raise; they never build
error responses by hand (service.app maps every ServiceError to HTTP).

    health.py       GET /health
    semaphores.py   /global-semaphores (list, register, inspect, change limit, delete)
    generate.py     POST /generate, POST /generate-batch (cancelled when the caller hangs up)
    body.py         reading a JSON body under MAX_BODY_BYTES

`Services` is what the lifespan builds inside the running loop; routes reach it through
`services(request)`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request

from service.config import Settings
from service.coordination import Coordinator
from service.errors import Unavailable
from service.generation import Generator
from service.orphans import OrphanKeeper
from service.upstream import Upstream


@dataclass
class Services:
    settings: Settings
    coordinator: Coordinator
    upstream: Upstream
    generator: Generator
    orphans: OrphanKeeper | None = None
    # Generation tasks still running: the lifespan cancels and awaits them before closing.
    inflight: set[asyncio.Task[Any]] = field(default_factory=set)


def services(request: Request) -> Services:
    found = getattr(request.app.state, "services", None)
    if not isinstance(found, Services):
        raise Unavailable("Service is starting or shutting down; try again shortly")
    return found


__all__ = ["Services", "services"]
