"""A generation that loses its slot says which limit and why, and its prediction is cancelled."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from service.coordination import KeySpace
from service.fingerprint import ACCOUNT, token_fingerprint
from tests.api.conftest import ADMIN, SERVER_TOKEN, Api, flux

pytestmark = [pytest.mark.redis, pytest.mark.simulator(latency_s=8.0)]


async def until(check: object, timeout_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await check():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, "condition not met"
        await asyncio.sleep(0.05)


async def test_a_semaphore_deleted_under_a_generation_is_named_with_the_reason(api: Api) -> None:
    await api.post("/global-semaphores", json={"semaphore_id": "doomed", "limit": 1}, headers=ADMIN)
    running = asyncio.create_task(
        api.post("/generate", json=flux(external_semaphore_id="doomed"), headers=ADMIN)
    )

    async def held() -> bool:
        view = await api.get("/global-semaphores/doomed", headers=ADMIN)
        return bool(view.json()["in_use"] == 1)

    await until(held)
    deleted = await api.delete("/global-semaphores/doomed", headers=ADMIN)
    assert deleted.status_code == 200, deleted.text
    response = await running
    assert response.status_code == 502, response.text
    error = response.json()["error"]
    assert "external semaphore 'doomed'" in error
    assert "deleted by an operator" in error
    assert "cancelled" in error


async def test_a_lost_account_slot_is_named_as_the_account_limit(api: Api, redis_url: str) -> None:
    running = asyncio.create_task(api.post("/generate", json=flux(), headers=ADMIN))
    holders = KeySpace("rcg").semaphore(token_fingerprint(SERVER_TOKEN), ACCOUNT).holders
    client = aioredis.Redis.from_url(redis_url)
    try:

        async def held() -> bool:
            return bool(await client.zcard(holders) == 1)

        await until(held)
        await client.delete(holders)  # as an operator's force release does
    finally:
        await client.aclose()
    response = await running
    assert response.status_code == 502, response.text
    error = response.json()["error"]
    assert "the account's concurrency limit" in error
    assert "released by an operator" in error and "taken over by another replica" in error
    assert response.json()["limit_scope"] == "account_concurrency"
    assert SERVER_TOKEN not in response.text and token_fingerprint(SERVER_TOKEN) not in error
