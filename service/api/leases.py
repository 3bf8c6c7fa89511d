"""The lease API: any service, in any language, shares a global semaphore over HTTP.

    POST   /global-semaphores/{id}/leases              {"timeout_s": 0..QUEUE_TIMEOUT_SECONDS,
                                                         "holder": "free text, optional"}
           → 201 {lease_id, semaphore_id, expires_at, ttl_s}   (waits FIFO with every waiter)
           → 429 + Retry-After when no slot came within timeout_s; 404 unknown semaphore
    PUT    /global-semaphores/{id}/leases/{lease_id}   → 200 {lease_id, semaphore_id,
                                                               expires_at, ttl_s}
           → 404 once the lease is lost (expired unrenewed), released or unknown
    DELETE /global-semaphores/{id}/leases/{lease_id}   → 200 {released: true|false} (idempotent)

A client renews every ttl_s/3 or so; `expires_at` is ISO 8601 UTC, from Redis' clock. The TTL
is the service's LEASE_TTL_SECONDS (a client cannot choose it: a crashed client's slot must
come back within the TTL operators configured). A lease that is not renewed in time is gone for
good: renewing it answers 404, and the client must stop the work it guarded.

Who holds it: the remote client, not this replica. The lease is detached from this process
(service.coordination.remote): no replica renews it in the background, none releases it at
shutdown, and any replica can renew or release it, since everything lives in Redis. Only
leases granted through this API can be renewed or released here; the id of a generation's
in-process lease answers 404 / released false.

Authentication: the admin key (`X-Admin-API-Key`, constant-time compare; 401 `Admin API key
required...` without it, 401 `Invalid admin API key` with a wrong one), like semaphore
management. The lease id is not a secret on its own (operators see it in GET
/global-semaphores/{id}). A per-semaphore client key is a possible later addition.

If the caller hangs up while waiting, its place in the queue is given up; a lease granted in
the instant it hung up is released at once.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from service.api import services
from service.api.body import read_json_object
from service.api.watch import until_disconnected
from service.auth import ADMIN_HEADER, require_admin
from service.config import SEMAPHORE_ID_PATTERN
from service.coordination import AcquireTimeout, CoordinationError
from service.coordination.remote import (
    MAX_HOLDER_TEXT,
    acquire_remote,
    release_remote,
    renew_remote,
)
from service.coordination_errors import LEASES, answered_as, service_error
from service.errors import BadRequest, NotFound
from service.grace import GraceWatch
from service.schemas.openapi import ADMIN_ONLY, errors, links, operation
from service.schemas.requests import json_type
from service.schemas.responses import LeaseGranted, LeaseReleased

router = APIRouter()

_ID_RE = re.compile(SEMAPHORE_ID_PATTERN)
_LEASE_ID_RE = re.compile(r"[0-9A-Za-z_-]{1,128}")
_FIELDS = ("timeout_s", "holder")


@router.post(
    "/global-semaphores/{semaphore_id}/leases",
    operation_id="grant_lease",
    tags=["leases"],
    summary="Wait for a slot and take it as a lease (renew it every ttl_s/3)",
    status_code=201,
    response_model=LeaseGranted,
    responses={
        201: {
            "description": "Granted: renew it every ttl_s/3 or so, release it when done",
            "links": links(
                "renew_lease",
                "release_lease",
                semaphore_id="$response.body#/semaphore_id",
                lease_id="$response.body#/lease_id",
            ),
            "headers": {
                "Location": {
                    "description": "The lease: PUT renews it, DELETE releases it",
                    "schema": {"type": "string"},
                }
            },
        },
        **errors(400, 401, 404, 413, 415, 429, 503),
    },
    openapi_extra=operation(body="LeaseRequest", auth=ADMIN_ONLY),
)
async def grant_lease(request: Request, semaphore_id: str) -> JSONResponse:
    found = services(request)
    settings = found.settings
    require_admin(settings, request.headers.get(ADMIN_HEADER))
    _check_semaphore_id(semaphore_id)
    data = await read_json_object(request, settings.max_body_bytes)
    _check_fields(data, settings.lease_ttl_seconds)
    timeout_s = _check_timeout(data.get("timeout_s"), settings.queue_timeout_seconds)
    description = _check_holder(data.get("holder"))
    try:
        lease = await until_disconnected(
            request,
            found,
            acquire_remote(
                found.coordinator, semaphore_id, timeout_s=timeout_s, description=description
            ),
            message="Client closed the request while waiting for a lease",
            undo=lambda got: release_remote(found.coordinator, got.semaphore_id, got.lease_id),
        )
    except AcquireTimeout as exc:  # the data-loss grace says so when it is the cause
        grace = GraceWatch(found.coordinator)
        raise (await grace.refusal(exc) or service_error(exc, LEASES)) from None
    except CoordinationError as exc:
        raise service_error(exc, LEASES) from None
    body = _lease_body(semaphore_id, lease.lease_id, lease.expires_at_ms, lease.ttl_s)
    location = f"/global-semaphores/{semaphore_id}/leases/{lease.lease_id}"
    return JSONResponse(body, status_code=201, headers={"Location": location})


@router.put(
    "/global-semaphores/{semaphore_id}/leases/{lease_id}",
    operation_id="renew_lease",
    tags=["leases"],
    summary="Renew a lease (404 once it is lost: stop the guarded work)",
    response_model=LeaseGranted,
    responses=errors(400, 401, 404, 503),
    openapi_extra=operation(auth=ADMIN_ONLY),
)
async def renew_lease(request: Request, semaphore_id: str, lease_id: str) -> JSONResponse:
    found = services(request)
    require_admin(found.settings, request.headers.get(ADMIN_HEADER))
    _check_semaphore_id(semaphore_id)
    expires_at_ms = None
    if _LEASE_ID_RE.fullmatch(lease_id):
        with answered_as(LEASES):
            expires_at_ms = await renew_remote(found.coordinator, semaphore_id, lease_id)
    if expires_at_ms is None:
        raise NotFound(
            f"Lease '{lease_id[:128]}' on semaphore '{semaphore_id}' not found: it expired "
            "unrenewed, was released, or was never granted; acquire a new one",
            fields={"semaphore_id": semaphore_id},
        )
    ttl_s = found.coordinator.lease_ttl_s
    return JSONResponse(_lease_body(semaphore_id, lease_id, expires_at_ms, ttl_s))


@router.delete(
    "/global-semaphores/{semaphore_id}/leases/{lease_id}",
    operation_id="release_lease",
    tags=["leases"],
    summary="Release a lease (idempotent)",
    response_model=LeaseReleased,
    responses=errors(400, 401, 503),
    openapi_extra=operation(auth=ADMIN_ONLY),
)
async def release_lease(request: Request, semaphore_id: str, lease_id: str) -> JSONResponse:
    found = services(request)
    require_admin(found.settings, request.headers.get(ADMIN_HEADER))
    _check_semaphore_id(semaphore_id)
    released = False
    if _LEASE_ID_RE.fullmatch(lease_id):
        with answered_as(LEASES):
            released = await release_remote(found.coordinator, semaphore_id, lease_id)
    return JSONResponse({"released": released})


def _lease_body(
    semaphore_id: str, lease_id: str, expires_at_ms: int, ttl_s: float
) -> dict[str, Any]:
    return {
        "lease_id": lease_id,
        "semaphore_id": semaphore_id,
        "expires_at": iso_from_ms(expires_at_ms),
        "ttl_s": ttl_s,
    }


def iso_from_ms(ms: int) -> str:
    moment = datetime.fromtimestamp(ms / 1000, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _check_semaphore_id(value: str) -> None:
    if not _ID_RE.fullmatch(value):
        raise BadRequest(
            "Invalid semaphore id: must be 1-128 characters of letters, digits, '.', '_', ':' "
            "or '-', starting with a letter or digit"
        )


def _check_fields(data: dict[str, Any], ttl_s: float) -> None:
    for key in data:
        if key == "ttl_s":
            raise BadRequest(
                f"Field 'ttl_s' is not accepted: every lease lasts LEASE_TTL_SECONDS ({ttl_s:g}s) "
                "and is kept by renewing it (PUT .../leases/{lease_id})"
            )
        if key not in _FIELDS:
            name = key if len(key) <= 64 else key[:64] + "…"
            raise BadRequest(f"Unknown field '{name}' (this endpoint takes timeout_s and holder)")


def _check_timeout(value: object, max_s: float) -> float:
    rule = f"must be a number of seconds from 0 to {max_s:g} (QUEUE_TIMEOUT_SECONDS)"
    if value is None:
        raise BadRequest(f"Missing required field: timeout_s ({rule})")
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not 0 <= value <= max_s  # before isfinite: an int of 400 digits overflows a float
        or not math.isfinite(value)
    ):
        shown = (
            repr(value) if isinstance(value, int | float) and not isinstance(value, bool) else ""
        )
        got = f"got {shown}" if shown and len(shown) <= 24 else f"got {json_type(value)}"
        raise BadRequest(f"Invalid field 'timeout_s': {rule} ({got})")
    return float(value)


def _check_holder(value: object) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise BadRequest(f"Invalid field 'holder': must be a string (got {json_type(value)})")
    if len(value) > MAX_HOLDER_TEXT:
        raise BadRequest(
            f"Invalid field 'holder': at most {MAX_HOLDER_TEXT} characters (got {len(value)})"
        )
    if not value.isprintable():
        raise BadRequest("Invalid field 'holder': control characters are not allowed")
    return value.strip()
