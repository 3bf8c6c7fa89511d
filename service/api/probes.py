"""Kubernetes-style probes, no auth, not logged (the middleware's QUIET_PATHS).

    GET /livez    200 {"status": "alive"}: the event loop answers. Touches nothing else, so a
                  Redis outage never gets a replica restarted.
    GET /readyz   200 {"status": "ready"} when Redis answers a PING and the replica is not
                  draining; else 503 {"status": "unready", "reason": "starting" | "draining" |
                  "redis unreachable"}: the load balancer should send traffic elsewhere.

Draining: `app.state.draining` (bool), set when shutdown starts (SIGTERM / lifespan exit).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from service.api import Services
from service.schemas.responses import ProbeAlive, ProbeReady, ProbeUnready

router = APIRouter()


@router.get("/livez", tags=["operations"], summary="Liveness probe", response_model=ProbeAlive)
async def livez() -> JSONResponse:
    return JSONResponse({"status": "alive"})


@router.get(
    "/readyz",
    tags=["operations"],
    summary="Readiness probe: Redis reachable and not draining",
    response_model=ProbeReady,
    responses={503: {"model": ProbeUnready, "description": "Not ready: send traffic elsewhere"}},
)
async def readyz(request: Request) -> JSONResponse:
    found = getattr(request.app.state, "services", None)
    if getattr(request.app.state, "draining", False) or getattr(found, "draining", False):
        return _unready("draining")
    if not isinstance(found, Services):
        return _unready("starting")
    if not await found.coordinator.ping():
        return _unready("redis unreachable")
    return JSONResponse({"status": "ready"})


def _unready(reason: str) -> JSONResponse:
    # A probe answer, not an error: the body keeps the probe shape, with a reason.
    return JSONResponse(
        {"status": "unready", "reason": reason},
        status_code=503,
        headers={"Cache-Control": "no-store"},
    )
