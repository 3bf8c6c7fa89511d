"""/global-semaphores: list and inspect (no auth, as the seed); register, change, delete (admin).

GET    /global-semaphores         {count, global_semaphores: [ids]}
POST   /global-semaphores         {semaphore_id, limit} → 201 {success, semaphore_id, limit}
GET    /global-semaphores/{id}    {semaphore_id, limit, in_use, waiting, holders, waiters,
                                   counters}
PATCH  /global-semaphores/{id}    {limit} → {semaphore_id, limit, previous_limit}
DELETE /global-semaphores/{id}    {success, semaphore_id}
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from service.api import services
from service.api.body import read_json_object
from service.auth import ADMIN_HEADER, require_admin
from service.config import SEMAPHORE_ID_PATTERN
from service.coordination import (
    CoordinationUnavailable,
    InvalidLimit,
    SemaphoreExists,
    SemaphoreNotFound,
)
from service.errors import BadRequest, Conflict, NotFound, Unavailable
from service.schemas.requests import json_type

router = APIRouter()

MAX_LIMIT = 1_000_000
_ID_RE = re.compile(SEMAPHORE_ID_PATTERN)
ID_RULE = (
    "must be 1-128 characters of letters, digits, '.', '_', ':' or '-', starting with a letter "
    "or digit"
)
LIMIT_RULE = f"must be an integer from 1 to {MAX_LIMIT} (a JSON number, not a string)"


@contextlib.contextmanager
def _coordination_errors() -> Iterator[None]:
    """The coordination library's errors → the service's HTTP errors (this boundary only)."""
    try:
        yield
    except SemaphoreNotFound as exc:
        raise NotFound(f"Semaphore '{exc.semaphore_id}' not found") from None
    except SemaphoreExists as exc:
        raise Conflict(
            f"Semaphore '{exc.semaphore_id}' already exists; use PATCH "
            f"/global-semaphores/{exc.semaphore_id} to change its limit",
            fields={"semaphore_id": exc.semaphore_id},
        ) from None
    except InvalidLimit:
        raise BadRequest(f"Invalid field 'limit': {LIMIT_RULE}") from None
    except CoordinationUnavailable:
        raise Unavailable(
            "Coordination store (Redis) is unreachable; semaphores cannot be read or changed "
            "until it is back",
            headers={"Retry-After": "5"},
        ) from None


def _check_id(value: object, where: str = "semaphore_id") -> str:
    if value is None:
        raise BadRequest(f"Missing required field: {where}")
    if not isinstance(value, str) or not _ID_RE.fullmatch(value):
        got = f" (got {json_type(value)})" if not isinstance(value, str) else ""
        raise BadRequest(f"Invalid field '{where}': {ID_RULE}{got}")
    return value


def _check_limit(value: object) -> int:
    if value is None:
        raise BadRequest("Missing required field: limit")
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_LIMIT:
        shown = repr(value) if isinstance(value, int) and not isinstance(value, bool) else None
        got = f" (got {shown})" if shown and len(shown) <= 24 else f" (got {json_type(value)})"
        raise BadRequest(f"Invalid field 'limit': {LIMIT_RULE}{got}")
    return value


def _check_fields(data: dict[str, Any], allowed: tuple[str, ...]) -> None:
    for key in data:
        if key not in allowed:
            name = key if len(key) <= 64 else key[:64] + "…"
            raise BadRequest(
                f"Unknown field '{name}' (this endpoint takes {' and '.join(allowed)})"
            )


@router.get("/global-semaphores")
async def list_semaphores(request: Request) -> JSONResponse:
    coordinator = services(request).coordinator
    with _coordination_errors():
        ids = await coordinator.registry.list()
    return JSONResponse({"count": len(ids), "global_semaphores": ids})


@router.post("/global-semaphores")
async def create_semaphore(request: Request) -> JSONResponse:
    found = services(request)
    require_admin(found.settings, request.headers.get(ADMIN_HEADER))
    data = await read_json_object(request, found.settings.max_body_bytes)
    _check_fields(data, ("semaphore_id", "limit"))
    semaphore_id = _check_id(data.get("semaphore_id"))
    limit = _check_limit(data.get("limit"))
    with _coordination_errors():
        await found.coordinator.registry.create(semaphore_id, limit)
    return JSONResponse(
        {"success": True, "semaphore_id": semaphore_id, "limit": limit}, status_code=201
    )


@router.get("/global-semaphores/{semaphore_id}")
async def get_semaphore(request: Request, semaphore_id: str) -> JSONResponse:
    coordinator = services(request).coordinator
    _check_id(semaphore_id)
    with _coordination_errors():
        view = await coordinator.registry.view(semaphore_id, detail=True)
    return JSONResponse(
        {
            "semaphore_id": view.semaphore_id,
            "limit": view.limit,
            "in_use": view.in_use,
            "waiting": view.waiting,
            "holders": [
                {
                    "lease_id": h.lease_id,
                    "replica": h.replica,
                    "purpose": h.purpose,
                    "prediction_id": h.prediction_id,
                    "expires_in_s": h.expires_in_s,
                }
                for h in view.holders
            ],
            "waiters": [
                {
                    "position": w.position,
                    "replica": w.replica,
                    "waiting_since": w.waiting_since,
                    "expires_in_s": w.expires_in_s,
                }
                for w in view.waiters
            ],
            "counters": view.counters,
        }
    )


@router.patch("/global-semaphores/{semaphore_id}")
async def set_limit(request: Request, semaphore_id: str) -> JSONResponse:
    found = services(request)
    require_admin(found.settings, request.headers.get(ADMIN_HEADER))
    _check_id(semaphore_id)
    data = await read_json_object(request, found.settings.max_body_bytes)
    _check_fields(data, ("limit",))
    limit = _check_limit(data.get("limit"))
    with _coordination_errors():
        previous = await found.coordinator.registry.set_limit(semaphore_id, limit)
    return JSONResponse({"semaphore_id": semaphore_id, "limit": limit, "previous_limit": previous})


@router.delete("/global-semaphores/{semaphore_id}")
async def delete_semaphore(request: Request, semaphore_id: str) -> JSONResponse:
    found = services(request)
    require_admin(found.settings, request.headers.get(ADMIN_HEADER))
    _check_id(semaphore_id)
    with _coordination_errors():
        await found.coordinator.registry.delete(semaphore_id)
    return JSONResponse({"success": True, "semaphore_id": semaphore_id})
