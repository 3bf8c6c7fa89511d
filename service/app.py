"""create_app(settings): lifespan wiring, routers, error handlers; nothing else.

The lifespan builds the Coordinator, Upstream and Generator inside the running loop (their
clients bind to it) and, on shutdown, cancels generations still running (each cancels its
prediction and releases its slots), then closes the Generator, the Upstream and the Coordinator
(which releases every lease this process still holds).

Every error is `{"error": "..."}` JSON: ServiceErrors with their status, fields and headers;
unknown routes and methods (404/405); parameter validation (400); and anything unexpected
(500 `Internal error` with the request id, logged, never a traceback in the response).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import SERVICE_NAME, VERSION
from service.api import Services, dashboard, docs, generate, health, leases, probes, semaphores
from service.api import jobs as jobs_api
from service.api.openai_images import OPENAI_PREFIX
from service.api.openai_images import error_response as openai_error_response
from service.api.openai_images import router as openai_images_router
from service.api.responses import SafeJSONResponse
from service.config import Settings
from service.coordination import Coordinator, CoordinatorConfig
from service.errors import NotFound, ServiceError
from service.generation import Generator
from service.grace import GraceHeaders, announce
from service.jobs.lifecycle import start_jobs, stop_jobs
from service.limits import PIN_MARGIN_S
from service.observability.history import HistorySampler
from service.observability.logs import request_id_var
from service.observability.loop_lag import LoopLagMonitor
from service.observability.metrics import Metrics
from service.observability.metrics import router as metrics_router
from service.observability.middleware import ObservabilityMiddleware
from service.orphans import OrphanKeeper
from service.sealing import TokenSealer
from service.upstream import Upstream

log = logging.getLogger("service.app")


# How long shutdown waits for cancelled generations to clean up (cancel upstream, release).
SHUTDOWN_CANCEL_WAIT_S = 20.0


def create_app(settings: Settings) -> FastAPI:
    if not settings.redis_url:
        raise ValueError(
            "REDIS_URL is required to build the app (python -m service starts an embedded "
            "Redis when it is unset)"
        )

    metrics = Metrics()
    metrics.set_info(version=VERSION, replica_id=settings.effective_replica_id)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        found = await _start(settings, metrics)
        app.state.services = found
        app.state.jobs = await start_jobs(found, metrics)
        loop_lag = LoopLagMonitor(metrics.observe_loop_lag)  # a stall is what loses leases
        loop_lag.start()
        # The dashboard's 15-minute charts: a sample every 2 s into Redis, shared by replicas.
        app.state.history = history = HistorySampler(found.coordinator, metrics)
        history.start()
        try:
            yield
        finally:
            app.state.draining = True
            app.state.services = None
            await history.close()  # before the coordinator closes
            try:
                await stop_jobs(app.state.jobs)
                await _stop(found)
            finally:
                await loop_lag.stop()

    app = FastAPI(
        title=SERVICE_NAME,
        version=VERSION,
        lifespan=lifespan,
        docs_url=None,  # /docs and /redoc: service.api.docs (assets served here, no CDN)
        redoc_url=None,
        openapi_url=docs.OPENAPI_URL,
    )
    docs.install_openapi(app, settings)
    app.state.services = None
    app.state.metrics = metrics
    app.state.draining = False  # set on SIGTERM (service/__main__.py): /readyz answers 503
    app.include_router(health.router)
    app.include_router(probes.router)
    app.include_router(semaphores.router)
    app.include_router(leases.router)
    app.include_router(generate.router)
    app.include_router(jobs_api.router)
    app.include_router(openai_images_router)
    app.include_router(dashboard.router)
    app.include_router(metrics_router, **docs.METRICS_DOCS)
    app.include_router(docs.router)
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_middleware(GraceHeaders)  # answers the data-loss grace delayed say so
    app.add_middleware(InternalErrors)
    app.add_middleware(ObservabilityMiddleware, metrics=metrics)  # outermost: request id, logs
    return app


def coordinator_config(settings: Settings) -> CoordinatorConfig:
    """The coordination library's configuration, from the service's settings."""
    assert settings.redis_url is not None
    return CoordinatorConfig(
        redis_url=settings.redis_url,
        prefix=settings.redis_key_prefix,
        replica_id=settings.effective_replica_id,
        lease_ttl_s=settings.lease_ttl_seconds,
        redis_timeout_s=settings.redis_timeout_seconds,
        declared=settings.declared_semaphores,
        max_connections=settings.redis_max_connections,
        **settings.redis_topology,  # one server, a Cluster or Sentinel (docs/redis-ha.md)
    )


async def _start(settings: Settings, metrics: Metrics) -> Services:
    coordinator = Coordinator(coordinator_config(settings))
    await coordinator.start()  # never fails because Redis is down: starts degraded
    announce(coordinator)  # logs the data-loss grace, once, if a new or emptied Redis has one
    upstream = Upstream(
        settings.replicate_base_url,
        prefer_wait_s=settings.prefer_wait_seconds,
        prediction_timeout_s=settings.prediction_timeout_seconds,
        pool_size=min(settings.replicate_concurrent_limit + 10, 1000),
        on_response=metrics.observe_upstream_response,
    )
    sealing_key = settings.token_sealing_key
    sealer = TokenSealer(
        sealing_key.get_secret_value() if sealing_key else None,
        max_age_s=settings.prediction_timeout_seconds + PIN_MARGIN_S,
    )
    generator = Generator(coordinator, upstream, settings, sealer)
    server_token = settings.replicate_api_token
    orphans = OrphanKeeper(
        coordinator,
        upstream,
        server_token=server_token.get_secret_value() if server_token else None,
        sealer=sealer,
    )
    coordinator.on_orphans.append(orphans.notice)
    coordinator.on_acquired.append(metrics.observe_acquire)
    coordinator.on_lost.append(metrics.observe_lost)
    generator.on_outcome.append(metrics.observe_generation)
    orphans.on_settled.append(metrics.observe_orphan)
    log.info(
        "service started",
        extra={"replica_id": settings.effective_replica_id, "version": VERSION},
    )
    return Services(settings, coordinator, upstream, generator, orphans)


async def _stop(found: Services) -> None:
    tasks = list(found.inflight)
    for task in tasks:
        task.cancel()
    if tasks:
        log.info("shutdown: cancelling %d running generation(s)", len(tasks))
        _, pending = await asyncio.wait(tasks, timeout=SHUTDOWN_CANCEL_WAIT_S)
        if pending:
            log.error("shutdown: %d generation(s) did not finish cancelling", len(pending))
    await found.generator.close()
    if found.orphans is not None:
        await found.orphans.close()  # unsettled adopted slots lapse back into orphans
    await found.upstream.aclose()
    await found.coordinator.close()  # releases every lease still held by this process
    log.info("service stopped")


# -- errors ---------------------------------------------------------------------------------


async def _service_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    # Safe, in the log and the answer: an error may carry Replicate's text (a failed
    # prediction's error message), which may hold characters UTF-8 cannot encode.
    if exc.status_code >= 500:
        message = exc.message.encode("utf-8", "backslashreplace").decode("utf-8")
        log.warning("request failed: %s", message, extra={"status": exc.status_code})
    return SafeJSONResponse(exc.body(), status_code=exc.status_code, headers=exc.headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    target = f"{request.method} {_short(request.url.path, 200)}"
    headers = dict(exc.headers or {})
    if exc.status_code == 404:
        message = f"Not found: {target}"
        if request.url.path.startswith(OPENAI_PREFIX):  # OpenAI's clients read its envelope
            return openai_error_response(NotFound(message))
    elif exc.status_code == 405:
        # Starlette answers with the methods of the first route whose path matched; a path
        # served by several routes (GET and POST /global-semaphores) allows all of theirs.
        allowed = _allowed_methods(request) or headers.get("allow") or headers.get("Allow")
        if allowed:
            headers = {k: v for k, v in headers.items() if k.lower() != "allow"}
            headers["Allow"] = allowed
        message = f"Method not allowed: {target}" + (f" (allowed: {allowed})" if allowed else "")
    else:
        message = str(exc.detail)
    return JSONResponse({"error": message}, status_code=exc.status_code, headers=headers)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    details = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error.get("loc", ()))
        details.append({"field": where, "rule": str(error.get("msg", "invalid"))})
    message = "; ".join(f"Invalid {d['field']}: {d['rule']}" for d in details[:10])
    return JSONResponse(
        {"error": message or "Invalid request", "details": details[:50]}, status_code=400
    )


HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def _allowed_methods(request: Request) -> str:
    """The methods some route serves this path with (asked of each route, as the router asks)."""
    routes = request.app.router.routes
    allowed = [
        method
        for method in HTTP_METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] == Match.FULL for route in routes
        )
    ]
    return ", ".join(allowed)


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


# -- request context --------------------------------------------------------------------------


SHUTDOWN_MESSAGE = (
    "This replica shut down while the request was still running (longer than DRAIN_SECONDS); "
    "any prediction it had started was cancelled and its slots released. Retry the request: "
    "another replica will serve it"
)


def _draining(scope: Scope) -> bool:
    app = scope.get("app")
    return bool(getattr(getattr(app, "state", None), "draining", False))


class InternalErrors:
    """Pure ASGI (so that disconnects still reach the routes): an unexpected exception becomes a
    logged 500 `{"error": "Internal error", "request_id": ...}`, never a traceback. The request
    id comes from ObservabilityMiddleware, which sits outside this one."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except asyncio.CancelledError:
            # uvicorn cancels the requests still running DRAIN_SECONDS after SIGTERM; by now
            # the route has cancelled its prediction and released its slots. Say so in JSON
            # rather than let uvicorn answer a plain-text 500.
            task = asyncio.current_task()
            if started or not _draining(scope) or task is None:
                raise
            task.uncancel()
            log.warning("request cut short by shutdown", extra={"path": scope.get("path")})
            response = JSONResponse(
                {"error": SHUTDOWN_MESSAGE, "request_id": request_id_var.get() or ""},
                status_code=503,
                headers={"Retry-After": "1", "Connection": "close"},
            )
            await response(scope, receive, send)
        except Exception:
            request_id = request_id_var.get() or ""
            log.exception("unhandled error", extra={"path": scope.get("path")})
            if started:
                raise
            response = JSONResponse(
                {"error": "Internal error", "request_id": request_id}, status_code=500
            )
            await response(scope, receive, send)


__all__ = ["coordinator_config", "create_app"]
