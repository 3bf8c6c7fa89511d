"""A live status page for operators: every registered global semaphore, its use against its
limit, its queue and its holders, refreshed every 2 s. No build step: one static HTML file with
vanilla JS (service/static/dashboard.html) that polls the JSON below.

    GET /dashboard        the page
    GET /dashboard/data   {generated_at, replica_id, redis: {reachable}, semaphores: [...],
                           truncated}

No auth, and it shows what GET /global-semaphores/{id} shows without the admin key, or less:
lease ids and prediction ids are cut to a prefix (a lease id is a handle of the lease API, a
prediction id names another account's work), account semaphores (named by a token
fingerprint) are not listed, and nothing from a request body or header is shown except a
lease's holder text, which the page renders as text, never as HTML. With Redis down the page
still loads and says so (data answers 200 with `reachable: false`).
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse

from service.api import services
from service.api.semaphores import short_id
from service.coordination import CoordinationError, SemaphoreView

router = APIRouter()

PAGE = Path(__file__).resolve().parents[1] / "static" / "dashboard.html"
MAX_SEMAPHORES = 100
MAX_HOLDERS = 50
MAX_WAITERS = 20
READ_TIMEOUT_S = 2.0

_PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
        "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


@cache
def _page() -> str:
    return PAGE.read_text(encoding="utf-8")


@router.get("/dashboard")
async def dashboard() -> HTMLResponse:
    return HTMLResponse(_page(), headers=_PAGE_HEADERS)


@router.get("/dashboard/data")
async def dashboard_data(request: Request) -> JSONResponse:
    found = services(request)
    coordinator = found.coordinator
    reachable = True
    views: list[SemaphoreView] = []
    truncated = False
    try:
        async with asyncio.timeout(READ_TIMEOUT_S):
            ids = await coordinator.registry.list()
            truncated = len(ids) > MAX_SEMAPHORES
            results = await asyncio.gather(
                *(coordinator.registry.view(i, detail=True) for i in ids[:MAX_SEMAPHORES]),
                return_exceptions=True,
            )
        views = [v for v in results if isinstance(v, SemaphoreView)]
    except (TimeoutError, CoordinationError):
        reachable = False
    now = time.time()
    return JSONResponse(
        {
            "generated_at": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
            "replica_id": coordinator.replica_id,
            "redis": {"reachable": reachable},
            "semaphores": [_semaphore(view, now) for view in views],
            "truncated": truncated,
        },
        headers={"Cache-Control": "no-store"},
    )


def _semaphore(view: SemaphoreView, now: float) -> dict[str, Any]:
    oldest = next((w.waiting_since for w in view.waiters if w.waiting_since), None)
    return {
        "semaphore_id": view.semaphore_id,
        "limit": view.limit,
        "in_use": view.in_use,
        "waiting": view.waiting,
        "orphans": view.orphans,
        "grace_remaining_s": round(view.grace_remaining_s, 1),
        "oldest_waiter_s": _age(oldest, now),
        "holders": [
            {
                "lease": short_id(h.lease_id),
                "replica": h.replica,
                "purpose": h.purpose,
                "prediction_id": short_id(h.prediction_id),
                "held_for_s": _age(h.acquired_at, now),
                "expires_in_s": h.expires_in_s,
                "state": "orphaned" if h.orphaned else "adopted" if h.adopted_by else "held",
            }
            for h in view.holders[:MAX_HOLDERS]
        ],
        "waiters": [
            {
                "position": w.position,
                "replica": w.replica,
                "waiting_s": _age(w.waiting_since, now),
            }
            for w in view.waiters[:MAX_WAITERS]
        ],
        "counters": view.counters,
    }


def _age(since: float | None, now: float) -> float | None:
    """Seconds since a replica's wall-clock timestamp (replicas' clocks may differ a little)."""
    if not isinstance(since, int | float):
        return None
    return round(max(0.0, now - since), 1)
