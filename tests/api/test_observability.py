"""Metrics, request ids, the request log line and the probes, on a minimal app that mounts only
the observability pieces (plus the lease API and dashboard) with a real Coordinator on Redis.

`build_app` / `running` are shared with test_leases.py and test_dashboard.py: they stand in for
service.app, so these tests do not depend on how the full app is wired.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import redis
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from prometheus_client.parser import text_string_to_metric_families

from service.api import Services, dashboard, leases, probes
from service.app import coordinator_config
from service.config import Settings
from service.coordination import Coordinator, KeySpace
from service.errors import ServiceError
from service.generation import Generator
from service.limits import AccountLimits
from service.observability.logs import configure_logging, remove_logging, request_id_var
from service.observability.metrics import Metrics, upstream_kind
from service.observability.metrics import router as metrics_router
from service.observability.middleware import ObservabilityMiddleware
from service.upstream import Upstream
from service.upstream.clients import InstrumentedTransport
from tests.fixtures.redis_server import RedisServer
from tests.fixtures.threaded_server import serve_in_thread

pytestmark = pytest.mark.redis

ADMIN_KEY = "admin-key-observability-tests-7f2c91"
SERVER_TOKEN = "r8_server_token_observability_0a1b2c3d"
ADMIN = {"X-Admin-API-Key": ADMIN_KEY}


# -- the minimal app ------------------------------------------------------------------------


def settings_for(redis_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "redis_url": redis_url,
        "replicate_base_url": "http://127.0.0.1:9",
        "replicate_api_token": SERVER_TOKEN,
        "concurrent_docker_admin_api_key": ADMIN_KEY,
        "lease_ttl_seconds": 3.0,
        "queue_timeout_seconds": 10.0,
        "replica_id": "obs-a",
        "max_body_bytes": 64 * 1024,
    }
    values.update(overrides)
    return Settings(**values)


async def _service_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    return JSONResponse(exc.body(), status_code=exc.status_code, headers=exc.headers)


def build_app(settings: Settings, *, extra_routes: bool = False) -> FastAPI:
    """What service.app is expected to do with these pieces (see the wiring in the report)."""
    metrics = Metrics(process_metrics=False)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        coordinator = Coordinator(coordinator_config(settings))
        await coordinator.start()
        upstream = Upstream(settings.replicate_base_url)
        generator = Generator(coordinator, upstream, settings)
        coordinator.on_acquired.append(metrics.observe_acquire)
        coordinator.on_lost.append(metrics.observe_lost)
        generator.on_outcome.append(metrics.observe_generation)
        app.state.services = Services(
            settings=settings, coordinator=coordinator, upstream=upstream, generator=generator
        )
        try:
            yield
        finally:
            app.state.services = None
            await generator.close()
            await upstream.aclose()
            await coordinator.close()

    app = FastAPI(lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.services = None
    app.state.metrics = metrics
    app.state.draining = False
    metrics.set_info(version="test", replica_id=settings.effective_replica_id)
    app.include_router(probes.router)
    app.include_router(leases.router)
    app.include_router(dashboard.router)
    app.include_router(metrics_router)
    if extra_routes:
        _add_test_routes(app)
    app.add_exception_handler(ServiceError, _service_error)
    app.add_middleware(ObservabilityMiddleware, metrics=metrics)
    return app


def _add_test_routes(app: FastAPI) -> None:
    log = logging.getLogger("service.test")

    @app.get("/items/{item_id}")
    async def item(item_id: str) -> JSONResponse:
        log.info("looking up an item", extra={"semaphore_id": "sem-x", "token": SERVER_TOKEN})
        return JSONResponse({"item": item_id, "request_id": request_id_var.get()})

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            for i in range(3):
                yield f"chunk-{i}\n".encode()
                await asyncio.sleep(0)

        return StreamingResponse(chunks(), media_type="text/plain")

    @app.get("/boom")
    async def boom() -> JSONResponse:
        raise RuntimeError("unexpected")


@dataclass
class Running:
    app: FastAPI
    client: httpx.AsyncClient
    settings: Settings

    @property
    def services(self) -> Services:
        found = self.app.state.services
        assert isinstance(found, Services)
        return found

    @property
    def coordinator(self) -> Coordinator:
        return self.services.coordinator

    @property
    def metrics(self) -> Metrics:
        found = self.app.state.metrics
        assert isinstance(found, Metrics)
        return found


@asynccontextmanager
async def running(settings: Settings, *, extra_routes: bool = False) -> AsyncIterator[Running]:
    app = build_app(settings, extra_routes=extra_routes)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://obs.test", timeout=30
        ) as client:
            yield Running(app, client, settings)


@contextlib.contextmanager
def serve(settings: Settings) -> Iterator[str]:
    """The minimal app under a real uvicorn on a free port, in a thread with its own loop."""
    with serve_in_thread(
        build_app(settings), name="observability-app", lifespan="on", graceful_shutdown_s=2
    ) as url:
        yield url


def mark_store_known(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    try:
        client.set(KeySpace("rcg").epoch, "tests", nx=True)
    finally:
        client.close()


def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Every sample of an exposition, parsed by prometheus_client's own parser."""
    return [
        (s.name, dict(s.labels), s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


def value(text: str, name: str, **labels: str) -> float | None:
    for sample_name, sample_labels, sample_value in samples(text):
        if sample_name == name and all(sample_labels.get(k) == v for k, v in labels.items()):
            return sample_value
    return None


@pytest.fixture
async def obs(redis_url: str) -> AsyncIterator[Running]:
    async with running(settings_for(redis_url), extra_routes=True) as found:
        yield found


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = configure_logging("INFO", "json", replica_id="obs-a", stream=stream)
    try:
        yield stream
    finally:
        remove_logging(handler)


def json_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


# -- metrics ----------------------------------------------------------------------------------


async def test_request_counters_move_and_use_route_templates(obs: Running) -> None:
    await obs.coordinator.registry.create("render-jobs", 2)
    for item in ("a1", "b2", "c3"):
        assert (await obs.client.get(f"/items/{item}")).status_code == 200
    granted = await obs.client.post(
        "/global-semaphores/render-jobs/leases", json={"timeout_s": 1}, headers=ADMIN
    )
    assert granted.status_code == 201
    assert (await obs.client.get("/no/such/path/xyz")).status_code == 404

    scrape = await obs.client.get("/metrics")
    assert scrape.status_code == 200
    assert scrape.headers["content-type"].startswith("text/plain")
    text = scrape.text
    assert (
        value(text, "http_requests_total", route="/items/{item_id}", method="GET", status="200")
        == 3
    )
    assert (
        value(
            text,
            "http_requests_total",
            route="/global-semaphores/{semaphore_id}/leases",
            method="POST",
            status="201",
        )
        == 1
    )
    assert value(text, "http_requests_total", route="unmatched", status="404") == 1
    assert value(text, "http_request_duration_seconds_count", route="/items/{item_id}") == 3
    routes = {labels.get("route") for _, labels, _ in samples(text) if "route" in labels}
    assert not any(r and ("a1" in r or "render-jobs" in r or "xyz" in r) for r in routes)
    # A second scrape sees the first one.
    again = (await obs.client.get("/metrics")).text
    assert value(again, "http_requests_total", route="/metrics", status="200") == 1
    assert value(again, "service_info", replica_id="obs-a") == 1


async def test_semaphore_gauges_and_wait_histogram_come_from_redis(obs: Running) -> None:
    await obs.coordinator.registry.create("gpu-pool", 3)
    await obs.coordinator.registry.create("empty-pool", 1)
    for _ in range(2):
        response = await obs.client.post(
            "/global-semaphores/gpu-pool/leases", json={"timeout_s": 1}, headers=ADMIN
        )
        assert response.status_code == 201
    text = (await obs.client.get("/metrics")).text
    assert value(text, "coordination_up") == 1
    assert value(text, "semaphore_limit", semaphore_id="gpu-pool") == 3
    assert value(text, "semaphore_in_use", semaphore_id="gpu-pool") == 2
    assert value(text, "semaphore_waiters", semaphore_id="gpu-pool") == 0
    assert value(text, "semaphore_in_use", semaphore_id="empty-pool") == 0
    assert value(text, "semaphore_events_total", semaphore_id="gpu-pool", event="acquired") == 2
    assert value(text, "semaphore_leases_expired_reclaimed_total", semaphore_id="gpu-pool") == 0
    assert value(text, "semaphore_wait_seconds_count", scope="semaphore") == 2


async def test_expired_leases_are_counted_as_reclaimed(redis_url: str) -> None:
    async with running(settings_for(redis_url, lease_ttl_seconds=1.0)) as obs:
        await obs.coordinator.registry.create("short", 1)
        response = await obs.client.post(
            "/global-semaphores/short/leases", json={"timeout_s": 0}, headers=ADMIN
        )
        assert response.status_code == 201
        await asyncio.sleep(1.2)  # nobody renews the remote lease: it expires
        second = await obs.client.post(
            "/global-semaphores/short/leases", json={"timeout_s": 0}, headers=ADMIN
        )
        assert second.status_code == 201  # the acquire purged the expired one first
        text = (await obs.client.get("/metrics")).text
        assert value(text, "semaphore_leases_expired_reclaimed_total", semaphore_id="short") == 1


async def test_limit_timeouts_are_counted_by_scope(obs: Running) -> None:
    await obs.coordinator.registry.create("one-slot", 1)
    first = await obs.client.post(
        "/global-semaphores/one-slot/leases", json={"timeout_s": 0}, headers=ADMIN
    )
    assert first.status_code == 201
    refused = await obs.client.post(
        "/global-semaphores/one-slot/leases", json={"timeout_s": 0}, headers=ADMIN
    )
    assert refused.status_code == 429
    text = (await obs.client.get("/metrics")).text
    assert value(text, "limit_timeouts_total", scope="semaphore") == 1
    assert value(text, "semaphore_events_total", semaphore_id="one-slot", event="acquired") == 1


async def test_lost_leases_and_generation_outcomes_reach_the_counters(obs: Running) -> None:
    coordinator = obs.coordinator
    await coordinator.registry.create("local", 1)
    lease = await coordinator.acquire("local", timeout_s=1)
    # Redis forgets the lease (as if it expired while this process was frozen).
    await coordinator.redis.zrem(coordinator.keyspace.semaphore("local").holders, lease.lease_id)
    await coordinator.renewer.renew_all()
    assert lease.lost.is_set()
    for listener in obs.services.generator.on_outcome:
        listener("flux-dev", "succeeded", 4.2)
        listener("flux-dev", "failed", 0.3)
    text = (await obs.client.get("/metrics")).text
    assert value(text, "leases_lost_total", scope="semaphore") == 1
    assert value(text, "generations_total", model="flux-dev", outcome="succeeded") == 1
    assert value(text, "generations_total", model="flux-dev", outcome="failed") == 1
    assert value(text, "generation_duration_seconds_count", model="flux-dev") == 2


async def test_account_semaphores_never_become_labels(obs: Running) -> None:
    fingerprint = "0123abcd4567ef89"
    lease = await AccountLimits(obs.coordinator).acquire(fingerprint, limit=2, timeout_s=1)
    text = (await obs.client.get("/metrics")).text
    await lease.release()
    assert value(text, "semaphore_wait_seconds_count", scope="account_concurrency") == 1
    assert fingerprint not in text


async def test_upstream_requests_and_throttles_are_counted_per_attempt() -> None:
    metrics = Metrics(process_metrics=False)
    answers = iter([429, 429, 201])

    def reply(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/predictions"):
            return httpx.Response(next(answers), json={})
        return httpx.Response(200, json={})

    transport = InstrumentedTransport(httpx.MockTransport(reply), metrics.observe_upstream_response)
    async with httpx.AsyncClient(transport=transport, base_url="https://api.test") as client:
        for _ in range(3):
            await client.post("/v1/models/black-forest-labs/flux-dev/predictions", json={})
        await client.get("/v1/predictions/abc123")
        await client.post("/v1/predictions/abc123/cancel")
        await client.get("/v1/account")
    text = metrics.render().decode()
    assert value(text, "upstream_requests_total", kind="create") == 3
    assert value(text, "upstream_throttled_total", kind="create") == 2
    assert value(text, "upstream_requests_total", kind="poll") == 1
    assert value(text, "upstream_requests_total", kind="cancel") == 1
    assert value(text, "upstream_requests_total", kind="account") == 1
    assert "abc123" not in text


def test_upstream_kinds() -> None:
    assert upstream_kind("POST", "/v1/models/o/n/predictions") == "create"
    assert upstream_kind("POST", "/v1/deployments/o/n/predictions") == "create"
    assert upstream_kind("POST", "/v1/predictions") == "create"
    assert upstream_kind("GET", "/v1/predictions/xyz") == "poll"
    assert upstream_kind("POST", "/v1/predictions/xyz/cancel") == "cancel"
    assert upstream_kind("GET", "/v1/account") == "account"
    assert upstream_kind("GET", "/v1/models/o/n") == "other"


async def test_exposition_parses_and_carries_no_secrets(obs: Running) -> None:
    await obs.coordinator.registry.create("sec-check", 1)
    user_token = "r8_user_token_must_never_appear_4d5e6f"
    headers = {**ADMIN, "Authorization": f"Bearer {user_token}"}
    await obs.client.post(
        "/global-semaphores/sec-check/leases",
        json={"timeout_s": 0, "holder": "svc"},
        headers=headers,
    )
    await obs.client.get(f"/items/{user_token}")  # a token in the path: routes are templates
    await obs.client.post(
        "/global-semaphores/sec-check/leases",
        json={"timeout_s": 0},
        headers={"X-Admin-API-Key": user_token},
    )
    obs.metrics.observe_limit_timeout(user_token)  # an unknown scope never becomes a label
    text = (await obs.client.get("/metrics")).text
    parsed = samples(text)
    assert parsed
    for secret in (user_token, ADMIN_KEY, SERVER_TOKEN):
        assert secret not in text
    assert not re.search(r"r8_[A-Za-z0-9]{6,}", text)
    assert value(text, "limit_timeouts_total", scope="other") == 1


async def test_redis_down_leaves_out_semaphores_but_the_scrape_succeeds(
    own_redis_server: RedisServer,
) -> None:
    mark_store_known(own_redis_server.url)
    settings = settings_for(own_redis_server.url, redis_timeout_seconds=0.5)
    async with running(settings) as obs:
        await obs.coordinator.registry.create("while-up", 1)
        up = (await obs.client.get("/metrics")).text
        assert value(up, "semaphore_limit", semaphore_id="while-up") == 1
        own_redis_server.stop()
        try:
            scrape = await obs.client.get("/metrics")
            assert scrape.status_code == 200
            assert value(scrape.text, "coordination_up") == 0
            assert value(scrape.text, "semaphore_limit", semaphore_id="while-up") is None
            ready = await obs.client.get("/readyz")
            assert ready.status_code == 503
            assert ready.json() == {"status": "unready", "reason": "redis unreachable"}
            assert (await obs.client.get("/livez")).status_code == 200
        finally:
            own_redis_server.start()


# -- request ids ------------------------------------------------------------------------------


async def test_request_id_is_accepted_echoed_and_visible_to_the_route(obs: Running) -> None:
    response = await obs.client.get("/items/1", headers={"X-Request-ID": "client-id_1.2-3"})
    assert response.headers.get_list("x-request-id") == ["client-id_1.2-3"]
    assert response.json()["request_id"] == "client-id_1.2-3"


@pytest.mark.parametrize(
    "given", [b"", b"x" * 129, b"has space", b"semi;colon", "ünïcode".encode(), b"a/b", b"<x>"]
)
async def test_an_invalid_request_id_is_replaced(obs: Running, given: bytes) -> None:
    response = await obs.client.get("/items/1", headers=[(b"X-Request-ID", given)])
    ids = response.headers.get_list("x-request-id")
    assert len(ids) == 1
    assert re.fullmatch(r"[0-9a-f]{32}", ids[0])
    assert response.json()["request_id"] == ids[0]


async def test_a_missing_request_id_is_generated_and_unique(obs: Running) -> None:
    first = (await obs.client.get("/livez")).headers["x-request-id"]
    second = (await obs.client.get("/livez")).headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", first)
    assert first != second


async def test_streaming_responses_pass_through_unbuffered(obs: Running) -> None:
    async with obs.client.stream("GET", "/stream") as response:
        assert response.headers["x-request-id"]
        chunks = [chunk async for chunk in response.aiter_text()]
    assert "".join(chunks) == "chunk-0\nchunk-1\nchunk-2\n"
    text = (await obs.client.get("/metrics")).text
    assert value(text, "http_requests_total", route="/stream", status="200") == 1


async def test_an_unhandled_error_is_counted_as_500(obs: Running) -> None:
    response = await obs.client.get("/boom")
    assert response.status_code == 500
    text = (await obs.client.get("/metrics")).text
    assert value(text, "http_requests_total", route="/boom", status="500") == 1
    assert value(text, "http_requests_in_progress") == 1  # only the scrape itself


# -- the request log line -------------------------------------------------------------------


async def test_one_json_log_line_per_request_with_its_request_id(
    obs: Running, log_stream: io.StringIO
) -> None:
    response = await obs.client.get("/items/42", headers={"X-Request-ID": "req-abc"})
    assert response.status_code == 200
    for path in ("/livez", "/readyz", "/metrics", "/dashboard/data"):
        assert (await obs.client.get(path)).status_code == 200
    lines = json_lines(log_stream)
    access = [line for line in lines if line["logger"] == "service.access"]
    assert len(access) == 1, access  # probes and scrapes are not logged
    line = access[0]
    assert line["request_id"] == "req-abc"
    assert line["method"] == "GET"
    assert line["route"] == "/items/{item_id}"
    assert line["status"] == 200
    assert isinstance(line["duration_ms"], float)
    assert line["replica_id"] == "obs-a"
    assert line["message"] == "GET /items/{item_id} 200"
    assert "42" not in line["route"]
    # The route's own line carries the same request id, and its secret field is masked.
    route_line = next(entry for entry in lines if entry["logger"] == "service.test")
    assert route_line["request_id"] == "req-abc"
    assert route_line["semaphore_id"] == "sem-x"
    assert route_line["token"] == "[REDACTED]"
    assert SERVER_TOKEN not in log_stream.getvalue()


def test_uvicorn_access_log_is_silenced(log_stream: io.StringIO) -> None:
    access = logging.getLogger("uvicorn.access")
    access.info('127.0.0.1:1234 - "GET /livez HTTP/1.1" 200')
    assert log_stream.getvalue() == ""
    logging.getLogger("uvicorn.error").info("Started server process")
    assert json_lines(log_stream)[0]["logger"] == "uvicorn.error"


# -- probes -----------------------------------------------------------------------------------


async def test_probes(obs: Running) -> None:
    assert (await obs.client.get("/livez")).json() == {"status": "alive"}
    ready = await obs.client.get("/readyz")
    assert (ready.status_code, ready.json()) == (200, {"status": "ready"})
    obs.app.state.draining = True
    draining = await obs.client.get("/readyz")
    assert (draining.status_code, draining.json()) == (
        503,
        {"status": "unready", "reason": "draining"},
    )
    obs.app.state.draining = False
    services = obs.app.state.services
    obs.app.state.services = None
    try:
        starting = await obs.client.get("/readyz")
        assert starting.json() == {"status": "unready", "reason": "starting"}
        assert (await obs.client.get("/livez")).status_code == 200
        # Metrics still render (without the semaphores) while the app starts or stops.
        scrape = await obs.client.get("/metrics")
        assert scrape.status_code == 200
        assert value(scrape.text, "coordination_up") == 0
    finally:
        obs.app.state.services = services


async def test_concurrent_scrapes_do_not_interfere(obs: Running) -> None:
    await obs.coordinator.registry.create("busy", 2)
    responses = await asyncio.gather(*(obs.client.get("/metrics") for _ in range(5)))
    assert all(r.status_code == 200 for r in responses)
    assert all(value(r.text, "semaphore_limit", semaphore_id="busy") == 2 for r in responses)
