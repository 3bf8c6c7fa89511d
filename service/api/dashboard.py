"""A live status page for operators: the Replicate accounts' limits and every registered global
semaphore (use against limit, queue, holders), refreshed every 2 s, and charts of the last 15
minutes. No build step: static files in service/static (the page, its script, and uPlot,
vendored with its licence in service/static/vendor/uplot) that poll the JSON below.

    GET /dashboard               the page
    GET /dashboard/static/NAME   its script, uPlot and uPlot's stylesheet (a fixed list)
    GET /dashboard/data          {generated_at, replica_id, redis: {reachable}, accounts: [...],
                                  semaphores: [...], truncated, setup}
    GET /dashboard/history       the last 15 minutes in 10 s buckets, merged over every replica
                                 (service/observability/history.py)

No auth, and it shows what GET /global-semaphores/{id} shows without the admin key, or less:
lease ids and prediction ids are cut to a prefix (a lease id is a handle of the lease API, a
prediction id names another account's work); an account is shown by the first
ACCOUNT_PREFIX_CHARS characters of its fingerprint (never the token, never the whole
fingerprint: the fingerprint names the account's Redis keys), and nothing from a request body or
header is shown except a lease's holder text, which the page renders as text, never as HTML.
With Redis down the page still loads and says so (data answers 200 with `reachable: false`).

Accounts are the ones some replica admitted in the last 15 minutes (the history's records name
them), or that this replica holds a slot of: the coordination library has no index of accounts
(the CLI's `accounts` SCANs the keyspace, too slow for a page polled every 2 s).
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from service.api import Services, services
from service.api.semaphores import short_id
from service.auth import ADMIN_HEADER
from service.coordination import (
    GLOBAL,
    CoordinationError,
    Coordinator,
    SemaphoreNotFound,
    SemaphoreView,
)
from service.errors import NotFound
from service.fingerprint import ACCOUNT, token_fingerprint
from service.limits import AccountLimits
from service.observability.history import History, HistoryStore
from service.schemas.openapi import errors
from service.schemas.responses import DashboardData, DashboardHistory

router = APIRouter()

STATIC = Path(__file__).resolve().parents[1] / "static"
PAGE = STATIC / "dashboard.html"
# name → (file, media type): the only files /dashboard/static serves.
ASSETS = {
    "dashboard.js": (STATIC / "dashboard.js", "text/javascript; charset=utf-8"),
    "uPlot.iife.min.js": (
        STATIC / "vendor" / "uplot" / "uPlot.iife.min.js",
        "text/javascript; charset=utf-8",
    ),
    "uPlot.min.css": (STATIC / "vendor" / "uplot" / "uPlot.min.css", "text/css; charset=utf-8"),
}
MAX_SEMAPHORES = 100
MAX_HOLDERS = 50
MAX_WAITERS = 20
MAX_ACCOUNTS = 20
ACCOUNT_PREFIX_CHARS = 6
READ_TIMEOUT_S = 2.0
# What the empty state tells an operator to send (tests/api/test_dashboard.py sends it).
EXAMPLE_SEMAPHORE = {"semaphore_id": "image-generation-global", "limit": 10}

_PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
_NO_STORE = {"Cache-Control": "no-store"}


@cache
def _read(path: Path) -> bytes:
    return path.read_bytes()


@router.get(
    "/dashboard", tags=["operations"], summary="Live status page", response_class=HTMLResponse
)
async def dashboard() -> HTMLResponse:
    return HTMLResponse(_read(PAGE), headers=_PAGE_HEADERS)


@router.get(
    "/dashboard/static/{name}",
    tags=["operations"],
    summary="The status page's script and stylesheets",
    response_class=Response,
    responses={
        200: {"content": {"text/javascript": {}, "text/css": {}}, "description": "The file"},
        **errors(404),
    },
)
async def dashboard_asset(name: str) -> Response:
    found = ASSETS.get(name)
    if found is None:
        raise NotFound(f"No dashboard file named '{name[:64]}'")
    path, media_type = found
    return Response(
        _read(path),
        media_type=media_type,
        headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
    )


@router.get(
    "/dashboard/data",
    tags=["operations"],
    summary="What the status page shows",
    response_model=DashboardData,
    responses=errors(503),
)
async def dashboard_data(request: Request) -> JSONResponse:
    found = services(request)
    coordinator = found.coordinator
    reachable = True
    views: list[SemaphoreView] = []
    accounts: list[dict[str, Any]] = []
    truncated = False
    try:
        async with asyncio.timeout(READ_TIMEOUT_S):
            ids = await coordinator.registry.list()
            truncated = len(ids) > MAX_SEMAPHORES
            results, accounts = await asyncio.gather(
                asyncio.gather(
                    *(coordinator.registry.view(i, detail=True) for i in ids[:MAX_SEMAPHORES]),
                    return_exceptions=True,
                ),
                _accounts(found),
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
            "accounts": accounts,
            "semaphores": [_semaphore(view, now) for view in views],
            "truncated": truncated,
            "setup": _setup(found),
            # Durable jobs by status (newest 5000, all replicas; read every 5 s by the runner).
            "jobs": _jobs_counts(request),
        },
        headers=_NO_STORE,
    )


@router.get(
    "/dashboard/history",
    tags=["operations"],
    summary="The status page's charts: the last 15 minutes",
    response_model=DashboardHistory,
    responses=errors(503),
)
async def dashboard_history(request: Request) -> JSONResponse:
    coordinator = services(request).coordinator
    store = HistoryStore(coordinator.redis, coordinator.prefix)
    try:
        async with asyncio.timeout(READ_TIMEOUT_S):
            history = await store.read()
    except (TimeoutError, CoordinationError):
        return JSONResponse({"redis": {"reachable": False}}, headers=_NO_STORE)
    return JSONResponse({"redis": {"reachable": True}, **_history(history)}, headers=_NO_STORE)


def _jobs_counts(request: Request) -> dict[str, int] | None:
    jobs = getattr(request.app.state, "jobs", None)
    counts = getattr(jobs, "counts", None)
    return dict(counts) if isinstance(counts, dict) else None


# -- accounts ---------------------------------------------------------------------------------


def mask_account(fingerprint: str) -> str:
    """What the page shows of an account: a prefix of its fingerprint, enough to tell the
    accounts apart and to find the full one in `python -m service.cli accounts`."""
    return fingerprint[:ACCOUNT_PREFIX_CHARS] + "…"


def _server_account(found: Services) -> str | None:
    token = found.settings.replicate_api_token
    return token_fingerprint(token.get_secret_value()) if token else None


async def _accounts(found: Services) -> list[dict[str, Any]]:
    coordinator = found.coordinator
    store = HistoryStore(coordinator.redis, coordinator.prefix)
    now_s = await store.now_s()
    # Every replica's record names the accounts it admitted in the last 15 minutes: the two
    # latest buckets (the current one may not be written by everyone yet) name them all.
    known = (await store.read(now_s, buckets=2)).accounts
    held = sorted(
        {lease.semaphore_id for lease in coordinator.held_leases() if lease.kind == ACCOUNT}
    )
    fingerprints = list(dict.fromkeys([*known, *held]))[:MAX_ACCOUNTS]
    settings = found.settings
    rows = await asyncio.gather(
        *(
            _account(
                coordinator,
                fp,
                now_ms=int(now_s * 1000),
                per_minute=settings.replicate_requests_per_minute,
                window_s=settings.account_window_seconds,
            )
            for fp in fingerprints
        )
    )
    server = _server_account(found)
    for row, fp in zip(rows, fingerprints, strict=True):
        row["server_token"] = fp == server
    return sorted(rows, key=lambda row: (not row["server_token"], row["account"]))


async def _account(
    coordinator: Coordinator, fingerprint: str, *, now_ms: int, per_minute: int, window_s: float
) -> dict[str, Any]:
    """One account's concurrency semaphore and creation window, read-only."""
    try:
        view: SemaphoreView | None = await coordinator.registry.view(fingerprint, ACCOUNT)
    except SemaphoreNotFound:  # no acquisition in 24 h: its keys expired
        view = None
    window = await coordinator.window.inspect(
        AccountLimits.window(fingerprint), per_minute, window_s, now_ms=now_ms
    )
    returns_ms = window.oldest_leaves_in_ms
    return {
        "account": mask_account(fingerprint),
        "in_use": view.in_use if view else 0,
        "limit": view.limit if view else None,
        "waiting": view.waiting if view else 0,
        "orphans": view.orphans if view else 0,
        "window": {
            "used": window.admissions,
            "limit": per_minute,
            "window_s": window_s,
            "next_free_in_s": round(window.next_free_in_ms / 1000, 1),
            "oldest_returns_in_s": None if returns_ms is None else round(returns_ms / 1000, 1),
        },
    }


def _setup(found: Services) -> dict[str, Any]:
    """What the empty state says: creating a semaphore takes the admin key, in its header."""
    return {
        "admin_key_configured": found.settings.concurrent_docker_admin_api_key is not None,
        "admin_header": ADMIN_HEADER,
        "create_path": "global-semaphores",
        "create_body": EXAMPLE_SEMAPHORE,
    }


# -- history ----------------------------------------------------------------------------------


def _history(history: History) -> dict[str, Any]:
    limits = []
    for series in history.limits:
        if series.kind == ACCOUNT:
            label = "account " + mask_account(series.semaphore_id)
        else:
            label = series.semaphore_id
        limits.append(
            {
                "kind": "semaphore" if series.kind == GLOBAL else "account",
                "label": label,
                "limit": series.limit,
                "in_use": series.in_use,
                "waiting": series.waiting,
            }
        )
    return {
        "bucket_s": history.bucket_s,
        "t": history.times,
        "replicas": history.replicas,
        "limits": limits,
        "admissions_per_min": history.admitted_per_min,
        "upstream_429_per_min": history.throttled_per_min,
        "wait_p50_s": history.wait_p50_s,
        "wait_p99_s": history.wait_p99_s,
    }


# -- semaphores -------------------------------------------------------------------------------


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
