"""The embedded Redis (fakeredis over TCP) runs everything the coordination library needs:
Lua scripts (EVALSHA), PUBLISH inside scripts and PSUBSCRIBE wake-ups, the sliding window."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from service.coordination import AcquireTimeout, Coordinator, CoordinatorConfig, KeySpace
from service.embedded_redis import EmbeddedRedis
from service.limits import AccountLimits


@pytest.fixture
def embedded() -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis()
    server.start()
    server.mark_store_known(KeySpace("rcg").epoch)
    try:
        yield server
    finally:
        server.stop()


async def test_coordination_works_over_the_embedded_redis(embedded: EmbeddedRedis) -> None:
    coordinator = Coordinator(
        CoordinatorConfig(
            redis_url=embedded.url, replica_id="emb", lease_ttl_s=3.0, declared={"g": 1}
        )
    )
    await coordinator.start()
    try:
        assert await coordinator.ping()
        assert await coordinator.registry.list() == ["g"]
        first = await coordinator.acquire("g", timeout_s=1)

        async def release_soon() -> None:
            await asyncio.sleep(0.2)
            await first.release()

        releaser = asyncio.create_task(release_soon())
        started = time.monotonic()
        second = await coordinator.acquire("g", timeout_s=5)
        # Woken by the release's PUBLISH, not by the fallback poll (one queue TTL / 3 ≈ 3.3 s).
        assert time.monotonic() - started < 2.0
        await releaser
        view = await coordinator.registry.view("g", detail=True)
        assert view.in_use == 1 and view.holders[0].lease_id == second.lease_id
        await second.release()

        for _ in range(2):
            await AccountLimits(coordinator).take_rate("acct", limit_per_minute=2, timeout_s=0.1)
        with pytest.raises(AcquireTimeout) as caught:
            await AccountLimits(coordinator).take_rate("acct", limit_per_minute=2, timeout_s=0.2)
        assert caught.value.scope == "account_rate"

        lease = await AccountLimits(coordinator).acquire("acct", limit=1, timeout_s=1)
        await asyncio.sleep(1.5)  # renewed in the background (every TTL/3)
        assert lease.is_valid()
        await lease.release()
    finally:
        await coordinator.close()
