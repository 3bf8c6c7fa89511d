"""/global-semaphores: list and inspect (no auth, as the seed); register, change, delete (admin).

GET    /global-semaphores         {count, global_semaphores: [ids]}
POST   /global-semaphores         {semaphore_id, limit} → 201 {success, semaphore_id, limit}
GET    /global-semaphores/{id}    {semaphore_id, limit, in_use, waiting, holders, waiters,
                                   counters}
PATCH  /global-semaphores/{id}    {limit} → {semaphore_id, limit, previous_limit}
DELETE /global-semaphores/{id}    {success, semaphore_id}

GET /global-semaphores/{id} answers anyone, but only the admin key (a wrong one is 401, never
a quiet fall-back) shows whole ids: without it, each holder's `lease_id` and `prediction_id`
are cut to their first 8 characters. A lease id is a handle of the lease API and a prediction
id names another account's work; counts, the queue and who holds what stay visible.

A semaphore declared in GLOBAL_SEMAPHORES belongs to the configuration: every acquire sets its
limit back to the declared one and re-creates it if it is gone. So POST, PATCH and DELETE of a
declared id answer 409 naming GLOBAL_SEMAPHORES, rather than a 200 the next acquire silently
undoes; change the configuration (the same on every replica) and restart to change it. (This
replica checks its own GLOBAL_SEMAPHORES: a replica configured differently would accept.)
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from service.api import Services, services
from service.api.body import read_json_object
from service.auth import ADMIN_HEADER, is_admin_caller, require_admin
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
SHORT_ID_CHARS = 8


def short_id(value: str | None) -> str | None:
    """The first characters of a lease or prediction id: enough to tell holders apart."""
    return None if value is None else value[:SHORT_ID_CHARS]


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


def _refuse_declared(found: Services, semaphore_id: str, consequence: str) -> None:
    """409 for changing, by API, a semaphore the configuration owns (see the module doc)."""
    declared = found.coordinator.config.declared.get(semaphore_id)
    if declared is None:
        return
    raise Conflict(
        f"Semaphore '{semaphore_id}' is declared in GLOBAL_SEMAPHORES (limit {declared}), "
        f"{consequence}: change GLOBAL_SEMAPHORES on every replica and restart them instead",
        fields={"semaphore_id": semaphore_id, "declared_limit": declared},
    )


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
    _refuse_declared(found, semaphore_id, "which creates it and sets its limit")
    with _coordination_errors():
        await found.coordinator.registry.create(semaphore_id, limit)
    return JSONResponse(
        {"success": True, "semaphore_id": semaphore_id, "limit": limit}, status_code=201
    )


@router.get("/global-semaphores/{semaphore_id}")
async def get_semaphore(request: Request, semaphore_id: str) -> JSONResponse:
    found = services(request)
    full = is_admin_caller(found.settings, request.headers.get(ADMIN_HEADER))
    _check_id(semaphore_id)
    with _coordination_errors():
        view = await found.coordinator.registry.view(semaphore_id, detail=True)
    return JSONResponse(
        {
            "semaphore_id": view.semaphore_id,
            "limit": view.limit,
            "in_use": view.in_use,
            "waiting": view.waiting,
            "orphans": view.orphans,
            "holders": [
                {
                    "lease_id": h.lease_id if full else short_id(h.lease_id),
                    "replica": h.replica,
                    "purpose": h.purpose,
                    "prediction_id": h.prediction_id if full else short_id(h.prediction_id),
                    "expires_in_s": h.expires_in_s,
                    # docs/slot-ownership.md: "held", "orphaned" (its replica stopped renewing
                    # while the prediction may run) or "adopted" (another replica settles it)
                    "state": "orphaned" if h.orphaned else "adopted" if h.adopted_by else "held",
                    "adopted_by": h.adopted_by,
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
    _refuse_declared(found, semaphore_id, "which sets its limit back on every acquire")
    with _coordination_errors():
        previous = await found.coordinator.registry.set_limit(semaphore_id, limit)
    return JSONResponse({"semaphore_id": semaphore_id, "limit": limit, "previous_limit": previous})


@router.delete("/global-semaphores/{semaphore_id}")
async def delete_semaphore(request: Request, semaphore_id: str) -> JSONResponse:
    found = services(request)
    require_admin(found.settings, request.headers.get(ADMIN_HEADER))
    _check_id(semaphore_id)
    _refuse_declared(found, semaphore_id, "which re-creates it on the next acquire")
    with _coordination_errors():
        await found.coordinator.registry.delete(semaphore_id)
    return JSONResponse({"success": True, "semaphore_id": semaphore_id})
