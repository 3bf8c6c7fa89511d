"""Tokens and the admin key never appear in responses, logs or Redis (design §7)."""

from __future__ import annotations

import logging

import pytest
import redis.asyncio as aioredis

from tests.api.conftest import ADMIN, ADMIN_KEY, BAD_TOKEN, SECRETS, USER_TOKEN, MakeApi, flux
from tests.fixtures.simulator import SimulatorHandle

pytestmark = pytest.mark.redis


async def test_no_secret_in_responses_logs_or_redis(
    make_api: MakeApi,
    simulator: SimulatorHandle,
    redis_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []
    async with make_api(allow_env_fallback=True) as api:
        requests = [
            ("POST", "/generate", flux(), ADMIN),
            ("POST", "/generate", flux(), {"X-Admin-API-Key": ADMIN_KEY + "x"}),
            ("POST", "/generate", flux(credentials={"replicate_api_token": USER_TOKEN}), {}),
            ("POST", "/generate", flux(credentials={"replicate_api_token": BAD_TOKEN}), {}),
            (
                "POST",
                "/generate",
                flux(credentials={"replicate_api_token": USER_TOKEN + " x"}),
                {},
            ),
            ("POST", "/generate", flux(), {}),
            (
                "POST",
                "/generate-batch",
                {
                    "model_name": "flux-dev",
                    "tasks": [{"prompt": "a"}, {"prompt": "b"}],
                    "credentials": {"replicate_api_token": USER_TOKEN},
                },
                {},
            ),
            (
                "POST",
                "/generate-batch",
                {
                    "model_name": "flux-dev",
                    "tasks": [{"prompt": "a"}],
                    "credentials": {"replicate_api_token": BAD_TOKEN},
                },
                {},
            ),
            ("POST", "/global-semaphores", {"semaphore_id": "s", "limit": 1}, ADMIN),
            (
                "POST",
                "/global-semaphores",
                {"semaphore_id": "t", "limit": 1},
                {"X-Admin-API-Key": "n"},
            ),
            ("GET", "/global-semaphores/s", None, {}),
            ("GET", "/health", None, {}),
        ]
        simulator.set_faults(create_429=1, retry_after_s=0)
        for method, path, body, headers in requests:
            response = await api.client.request(method, path, json=body, headers=headers)
            texts.append(response.text)
            texts.append(str(dict(response.headers)))
        simulator.set_faults(fail_fraction=1.0)
        response = await api.post("/generate", json=flux(), headers=ADMIN)
        texts.append(response.text)

    texts.extend(record.getMessage() for record in caplog.records)
    texts.extend(str(record.__dict__) for record in caplog.records)
    texts.extend(record.exc_text or "" for record in caplog.records)

    client = aioredis.Redis.from_url(redis_url)
    try:
        async for key in client.scan_iter(count=1000):
            texts.append(repr(key))
            kind = (await client.type(key)).decode()
            if kind == "string":
                texts.append(repr(await client.get(key)))
            elif kind == "hash":
                texts.append(repr(await client.hgetall(key)))
            elif kind == "zset":
                texts.append(repr(await client.zrange(key, 0, -1, withscores=True)))
            elif kind == "set":
                texts.append(repr(await client.smembers(key)))
            elif kind == "list":
                texts.append(repr(await client.lrange(key, 0, -1)))
    finally:
        await client.aclose()

    assert len(texts) > 30
    for secret in SECRETS:
        leaks = [text for text in texts if secret in text]
        assert not leaks, f"secret leaked: {leaks[:3]}"
