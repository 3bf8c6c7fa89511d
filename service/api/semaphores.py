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

import re
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from service.api import Services, services
from service.api.body import read_json_object
from service.auth import ADMIN_HEADER, is_admin_caller, require_admin
from service.config import LIMIT_RULE, MAX_LIMIT, SEMAPHORE_ID_PATTERN
from service.coordination_errors import SEMAPHORES, answered_as
from service.errors import BadRequest, Conflict
from service.schemas.openapi import ADMIN_ONLY, ADMIN_OPTIONAL, errors, links, operation
from service.schemas.requests import json_type
from service.schemas.responses import (
    SemaphoreCreated,
    SemaphoreDeleted,
    SemaphoreDetail,
    SemaphoreLimitChanged,
    SemaphoreList,
)

router = APIRouter()

_ID_RE = re.compile(SEMAPHORE_ID_PATTERN)
ID_RULE = (
    "must be 1-128 characters of letters, digits, '.', '_', ':' or '-', starting with a letter "
    "or digit"
)
SHORT_ID_CHARS = 8


def short_id(value: str | None) -> str | None:
    """The first characters of a lease or prediction id: enough to tell holders apart."""
    return None if value is None else value[:SHORT_ID_CHARS]


def iso_utc(unix_s: object) -> str | None:
    """A waiter's Unix timestamp (its replica's clock) as ISO-8601 UTC, like every other
    timestamp in the answers ("2026-11-29T12:07:45.979Z"); None if absent or unreadable."""
    if isinstance(unix_s, bool) or not isinstance(unix_s, int | float):
        return None
    try:
        moment = datetime.fromtimestamp(unix_s, UTC)
    except (OverflowError, OSError, ValueError):
        return None
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


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


@router.get(
    "/global-semaphores",
    operation_id="list_semaphores",
    tags=["semaphores"],
    summary="List the global semaphores",
    response_model=SemaphoreList,
    responses=errors(503),
)
async def list_semaphores(request: Request) -> JSONResponse:
    coordinator = services(request).coordinator
    with answered_as(SEMAPHORES):
        ids = await coordinator.registry.list()
    return JSONResponse({"count": len(ids), "global_semaphores": ids})


@router.post(
    "/global-semaphores",
    tags=["semaphores"],
    operation_id="create_semaphore",
    summary="Register a global semaphore",
    status_code=201,
    response_model=SemaphoreCreated,
    responses={
        201: {
            "description": "Registered",
            "links": links(
                "get_semaphore",
                "set_semaphore_limit",
                "delete_semaphore",
                "grant_lease",
                semaphore_id="$response.body#/semaphore_id",
            ),
        },
        **errors(400, 401, 409, 413, 415, 503),
    },
    openapi_extra=operation(body="SemaphoreCreateRequest", auth=ADMIN_ONLY),
)
async def create_semaphore(request: Request) -> JSONResponse:
    found = services(request)
    require_admin(found.settings, request.headers.get(ADMIN_HEADER))
    data = await read_json_object(request, found.settings.max_body_bytes)
    _check_fields(data, ("semaphore_id", "limit"))
    semaphore_id = _check_id(data.get("semaphore_id"))
    limit = _check_limit(data.get("limit"))
    _refuse_declared(found, semaphore_id, "which creates it and sets its limit")
    with answered_as(SEMAPHORES):
        await found.coordinator.registry.create(semaphore_id, limit)
    return JSONResponse(
        {"success": True, "semaphore_id": semaphore_id, "limit": limit}, status_code=201
    )


@router.get(
    "/global-semaphores/{semaphore_id}",
    operation_id="get_semaphore",
    tags=["semaphores"],
    summary="A semaphore: use, queue, holders, counters",
    response_model=SemaphoreDetail,
    responses=errors(400, 401, 404, 503),
    openapi_extra=operation(auth=ADMIN_OPTIONAL),
)
async def get_semaphore(request: Request, semaphore_id: str) -> JSONResponse:
    found = services(request)
    full = is_admin_caller(found.settings, request.headers.get(ADMIN_HEADER))
    _check_id(semaphore_id)
    with answered_as(SEMAPHORES):
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
                    "waiting_since": iso_utc(w.waiting_since),
                    "expires_in_s": w.expires_in_s,
                }
                for w in view.waiters
            ],
            "counters": view.counters,
        }
    )


@router.patch(
    "/global-semaphores/{semaphore_id}",
    operation_id="set_semaphore_limit",
    tags=["semaphores"],
    summary="Change a semaphore's limit",
    response_model=SemaphoreLimitChanged,
    responses=errors(400, 401, 404, 409, 413, 415, 503),
    openapi_extra=operation(body="SemaphoreLimitRequest", auth=ADMIN_ONLY),
)
async def set_limit(request: Request, semaphore_id: str) -> JSONResponse:
    found = services(request)
    require_admin(found.settings, request.headers.get(ADMIN_HEADER))
    _check_id(semaphore_id)
    data = await read_json_object(request, found.settings.max_body_bytes)
    _check_fields(data, ("limit",))
    limit = _check_limit(data.get("limit"))
    _refuse_declared(found, semaphore_id, "which sets its limit back on every acquire")
    with answered_as(SEMAPHORES):
        previous = await found.coordinator.registry.set_limit(semaphore_id, limit)
    return JSONResponse({"semaphore_id": semaphore_id, "limit": limit, "previous_limit": previous})


@router.delete(
    "/global-semaphores/{semaphore_id}",
    operation_id="delete_semaphore",
    tags=["semaphores"],
    summary="Delete a semaphore (waiters are told; holders lose their leases)",
    response_model=SemaphoreDeleted,
    responses=errors(400, 401, 404, 409, 503),
    openapi_extra=operation(auth=ADMIN_ONLY),
)
async def delete_semaphore(request: Request, semaphore_id: str) -> JSONResponse:
    found = services(request)
    require_admin(found.settings, request.headers.get(ADMIN_HEADER))
    _check_id(semaphore_id)
    _refuse_declared(found, semaphore_id, "which re-creates it on the next acquire")
    with answered_as(SEMAPHORES):
        await found.coordinator.registry.delete(semaphore_id)
    return JSONResponse({"success": True, "semaphore_id": semaphore_id})
