"""The HTTP service in-process (ASGI, lifespan run by hand) against a real Redis and the simulator.

async def test_x(api): r = await api.post("/generate", json=..., headers=ADMIN)

async def test_y(make_api):
    async with make_api(replicate_requests_per_minute=3) as api: ...
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import redis
from fastapi import FastAPI

from service.api import Services
from service.app import create_app
from service.config import Settings
from service.coordination import KeySpace
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
