"""The HTTP service in-process (ASGI, lifespan run by hand) against a real Redis and the simulator.

async def test_x(api): r = await api.post("/generate", json=..., headers=ADMIN)

async def test_y(make_api):
    async with make_api(replicate_requests_per_minute=3) as api: ...
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import pytest_asyncio
import redis
from fastapi import FastAPI

from service.api import Services
from service.app import create_app
from service.config import Settings
from service.coordination import KeySpace
from tests.fixtures.redis_server import RedisServer
from tests.fixtures.simulator import SimulatorHandle

SERVER_TOKEN = "r8_server_token_api_tests_5bd1e0"
USER_TOKEN = "r8_user_token_api_tests_77c2aa"
BAD_TOKEN = "xx_bad_token_api_tests_9e41f3"
ADMIN_KEY = "admin-key-api-tests-3c9f0d42"
SECRETS = (SERVER_TOKEN, USER_TOKEN, BAD_TOKEN, ADMIN_KEY)

ADMIN = {"X-Admin-API-Key": ADMIN_KEY}


def flux(prompt: str = "A red sports car", **extra: Any) -> dict[str, Any]:
    return {"model_name": "flux-dev", "prompt": prompt, **extra}


def settings_for(redis_url: str, base_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "redis_url": redis_url,
        "replicate_base_url": base_url,
        "replicate_api_token": SERVER_TOKEN,
        "concurrent_docker_admin_api_key": ADMIN_KEY,
        "allow_env_fallback": False,
        "lease_ttl_seconds": 3.0,
        "queue_timeout_seconds": 10.0,
        "prefer_wait_seconds": 1,
        "replica_id": "api-test",
        "global_semaphores": "",
        "redis_key_prefix": "rcg",
        "max_body_bytes": 64 * 1024,
        "max_batch_tasks": 20,
        "drain_seconds": 1.0,
    }
    values.update(overrides)
    return Settings(**values)


def mark_store_known(redis_url: str, prefix: str = "rcg") -> None:
    """The documented operator shortcut (`SET <prefix>:epoch any`): the test Redis is new, but no
    lease can be live on it, so skip the one-TTL grace a young, empty Redis otherwise gets."""
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    try:
        client.set(KeySpace(prefix).epoch, "tests", nx=True)
    finally:
        client.close()


@dataclass
class Api:
    client: httpx.AsyncClient
    app: FastAPI
    settings: Settings

    @property
    def services(self) -> Services:
        found = self.app.state.services
        assert isinstance(found, Services)
        return found

    async def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return await self.client.get(path, **kwargs)

    async def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return await self.client.post(path, **kwargs)

    async def patch(self, path: str, **kwargs: Any) -> httpx.Response:
        return await self.client.patch(path, **kwargs)

    async def delete(self, path: str, **kwargs: Any) -> httpx.Response:
        return await self.client.delete(path, **kwargs)


@contextlib.asynccontextmanager
async def running_api(settings: Settings) -> AsyncIterator[Api]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://api.test", timeout=60
        ) as client:
            yield Api(client, app, settings)


MakeApi = Callable[..., contextlib.AbstractAsyncContextManager[Api]]


@pytest.fixture
def make_api(redis_url: str, simulator: SimulatorHandle) -> MakeApi:
    mark_store_known(redis_url)

    def make(**overrides: Any) -> contextlib.AbstractAsyncContextManager[Api]:
        return running_api(settings_for(redis_url, simulator.base_url, **overrides))

    return make


@pytest.fixture
async def api(make_api: MakeApi) -> AsyncIterator[Api]:
    async with make_api() as running:
        yield running


# -- one app per module, for modules whose tests only send requests and read the answers ------
#
# pytestmark = pytest.mark.asyncio(loop_scope="module")   # the apps live on the module's loop
#
# @pytest.fixture
# def api(shared_api: Api) -> Api: return shared_api
#
# @pytest.fixture
# def make_api(shared_make_api: MakeApi) -> MakeApi: return shared_make_api


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared_make_api(
    module_redis_server: RedisServer, module_simulator: SimulatorHandle
) -> AsyncIterator[MakeApi]:
    """Like `make_api`, but one running app per distinct set of overrides, started on first
    use and stopped with the module, on a Redis and a simulator of the module's own."""
    redis_url = module_redis_server.url
    mark_store_known(redis_url)
    running: dict[str, Api] = {}
    stops: list[tuple[asyncio.Event, asyncio.Task[None]]] = []

    async def serve(settings: Settings, started: asyncio.Future[Api], stop: asyncio.Event) -> None:
        async with running_api(settings) as api:
            started.set_result(api)
            await stop.wait()

    @contextlib.asynccontextmanager
    async def make(**overrides: Any) -> AsyncIterator[Api]:
        key = repr(sorted(overrides.items()))
        if key not in running:
            settings = settings_for(redis_url, module_simulator.base_url, **overrides)
            started: asyncio.Future[Api] = asyncio.get_running_loop().create_future()
            stop = asyncio.Event()
            # The app's lifespan runs in a task of its own: entered and left in the same task.
            task = asyncio.create_task(serve(settings, started, stop))
            stops.append((stop, task))
            either: set[asyncio.Future[Any]] = {started, task}
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            if not started.done():
                task.result()  # the app failed to start: raise why
            running[key] = started.result()
        yield running[key]

    try:
        yield make
    finally:
        for stop, _ in stops:
            stop.set()
        await asyncio.gather(*(task for _, task in stops))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared_api(shared_make_api: MakeApi) -> AsyncIterator[Api]:
    """The module's app with the default test settings (see shared_make_api)."""
    async with shared_make_api() as running:
        yield running
