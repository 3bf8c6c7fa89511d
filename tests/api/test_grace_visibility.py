"""The data-loss grace is visible: logged once at start on a new store, and the answers it
delays or refuses say so (service/grace.py). Also: waiters' `waiting_since` is ISO-8601 UTC."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from datetime import UTC, datetime

import pytest
import redis

from service.grace import SCOPE, WAITED_HEADER
from tests.api.conftest import (
    ADMIN,
    SERVER_TOKEN,
    Api,
    MakeApi,
    flux,
    running_api,
    settings_for,
)
from tests.fixtures.redis_server import RedisServer
from tests.fixtures.simulator import SimulatorHandle

pytestmark = pytest.mark.redis


def _uptime_s(redis_url: str) -> float:
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    try:
        return float(client.info("server")["uptime_in_seconds"])
    finally:
        client.close()


async def test_a_new_store_logs_its_grace_and_a_refused_wait_says_why(
    own_redis_server: RedisServer, simulator: SimulatorHandle, caplog: pytest.LogCaptureFixture
) -> None:
    # A store without the epoch key, on a Redis started less than one lease TTL ago: to the
    # service, a Redis that may have restarted empty under live holders.
    redis_url = own_redis_server.url
    ttl_s = _uptime_s(redis_url) + 600
    settings = settings_for(
        redis_url, simulator.base_url, lease_ttl_seconds=ttl_s, queue_timeout_seconds=0.5
    )
    with caplog.at_level(logging.INFO, logger="service.grace"):
        async with running_api(settings) as api:
            answer = await api.post("/generate", json=flux(), headers=ADMIN)

    assert answer.status_code == 429, answer.text
    assert answer.headers["X-Limit-Scope"] == SCOPE
    assert 0.5 * ttl_s < int(answer.headers["Retry-After"]) <= ttl_s
    body = answer.json()
    assert body["limit_scope"] == SCOPE
    assert body["retry_after"] == int(answer.headers["Retry-After"])
    assert "data-loss grace" in body["error"] and "redis-cli SET rcg:epoch new" in body["error"]
    started = [r for r in caplog.records if "data-loss grace" in r.getMessage()]
    assert len(started) == 1 and started[0].levelno == logging.WARNING
    assert "over by" in started[0].getMessage() and "SET rcg:epoch new" in started[0].getMessage()
    assert simulator.token_stats(SERVER_TOKEN).get("created", 0) == 0  # nothing reached Replicate


async def test_an_answer_the_grace_delayed_says_so(
    make_api: MakeApi, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with make_api() as api:  # a known store (epoch set): no grace at start
        # Redis loses its data under the running replica: the epoch key vanishes with it.
        client = redis.Redis.from_url(redis_url, socket_timeout=5)
        client.flushall()
        client.close()
        await asyncio.sleep(1.2)  # the epoch is read at most once a second
        with caplog.at_level(logging.INFO, logger="service.grace"):
            started = time.monotonic()
            answer = await api.post("/generate", json=flux(), headers=ADMIN)
            took_s = time.monotonic() - started

    assert answer.status_code == 200, answer.text
    assert answer.headers["X-Limit-Scope"] == SCOPE
    waited_s = float(answer.headers[WAITED_HEADER])
    assert 1.0 < waited_s <= took_s  # the semaphore re-created after the loss waits one TTL (3 s)
    assert any("delayed" in r.getMessage() for r in caplog.records)


async def test_an_answer_nothing_delayed_has_no_grace_headers(api: Api) -> None:
    answer = await api.post("/generate", json=flux(), headers=ADMIN)
    assert answer.status_code == 200, answer.text
    assert "X-Limit-Scope" not in answer.headers and WAITED_HEADER not in answer.headers


async def test_waiters_say_when_they_began_in_iso_8601_utc(api: Api) -> None:
    created = await api.post(
        "/global-semaphores", json={"semaphore_id": "since-1", "limit": 1}, headers=ADMIN
    )
    assert created.status_code == 201, created.text
    leases = "/global-semaphores/since-1/leases"
    first = await api.post(leases, json={"timeout_s": 5}, headers=ADMIN)
    assert first.status_code == 201, first.text
    before = datetime.now(UTC)
    waiter = asyncio.create_task(api.post(leases, json={"timeout_s": 10}, headers=ADMIN))
    try:
        for _ in range(100):
            detail = (await api.get("/global-semaphores/since-1")).json()
            if detail["waiters"]:
                break
            await asyncio.sleep(0.05)
        since = detail["waiters"][0]["waiting_since"]
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", since), since
        began = datetime.fromisoformat(since.replace("Z", "+00:00"))
        assert abs((began - before).total_seconds()) < 30
    finally:
        lease_id = first.json()["lease_id"]
        await api.delete(f"{leases}/{lease_id}", headers=ADMIN)
        second = await waiter
        if second.status_code == 201:
            await api.delete(f"{leases}/{second.json()['lease_id']}", headers=ADMIN)
