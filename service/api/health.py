"""GET /health: the seed's fields, plus Redis reachability and this replica's id. No auth.

200 `status: "healthy"` when Redis answers a PING; 503 `status: "degraded"` when it does not
(generation then fails closed with 503, so a load balancer should route elsewhere).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from service import SERVICE_NAME, VERSION
from service.api import services
from service.schemas import SUPPORTED_MODELS
from service.schemas.responses import ErrorResponse, Health

router = APIRouter()


@router.get(
    "/health",
    tags=["operations"],
    summary="Health: Redis reachable, limits, supported models",
    response_model=Health,
    responses={
        503: {
            "model": Health | ErrorResponse,
            "description": "Degraded: Redis unreachable (`status: degraded`); or the error "
            "envelope while the replica starts or shuts down",
        }
    },
)
async def health(request: Request) -> JSONResponse:
    found = services(request)
    settings = found.settings
    reachable = await found.coordinator.ping()
    body: dict[str, Any] = {
        "status": "healthy" if reachable else "degraded",
        "service": SERVICE_NAME,
        "version": VERSION,
        "supported_models": list(SUPPORTED_MODELS),
        "concurrency_status": {
            "concurrent_limit": settings.replicate_concurrent_limit,
            "requests_per_minute_limit": settings.replicate_requests_per_minute,
        },
        "redis": {"reachable": reachable},
        "replica_id": settings.effective_replica_id,
    }
    return JSONResponse(body, status_code=200 if reachable else 503)
