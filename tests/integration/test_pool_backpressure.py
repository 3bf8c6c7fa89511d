"""The Coordinator's connection pool on a real redis-server: a burst beyond the pool waits for a
connection instead of failing, connections stay within the bound, and a wait that runs out
fails closed as saturation, never as an outage."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
import redis

from service.coordination import CoordinationUnavailable, Coordinator
from service.coordination.connection import BoundedConnectionPool, HiredisPackingConnection
from service.coordination.errors import CoordinationSaturated
from tests.fixtures.redis_server import EPOCH_PREFIX, RedisServer

pytestmark = pytest.mark.redis


async def connect(server: RedisServer, sync: redis.Redis, **options: object) -> Coordinator:
    # An intact store: no grace period for a young Redis (see tests/fixtures/redis_server).
    sync.set(f"{EPOCH_PREFIX}:epoch", "test", nx=True)
    return await Coordinator.connect(server.url, replica_id="test", **options)


def opened(sync: redis.Redis) -> int:
    """Connections the server accepted since it started."""
    return int(sync.info("stats")["total_connections_received"])


def others(sync: redis.Redis) -> int:
    """Connections open now, apart from `sync`'s own."""
    return len([c for c in sync.client_list() if int(c["id"]) != sync.client_id()])


async def until(condition: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        assert loop.time() < deadline, f"never saw {what}"
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("calls", [800, 2000])
async def test_a_burst_beyond_the_pool_waits_for_connections_instead_of_failing(
    own_redis_server: RedisServer, calls: int
) -> None:
    sync = own_redis_server.sync_client()
    before = opened(sync)
    c = await connect(own_redis_server, sync)
    bound = c.redis.connection_pool.max_connections
    assert calls > bound
    results = await asyncio.gather(
        *(c.window.take(f"burst:{i % 50}", 1_000_000) for i in range(calls)),
        return_exceptions=True,
    )
    failures = [r for r in results if isinstance(r, BaseException)]
    assert failures == []
    # At most the pool's connections, plus the wake subscription's; once opened, they stay.
    assert opened(sync) - before <= bound + 1
    assert others(sync) <= bound + 1
    await c.close()
    await until(lambda: others(sync) == 0, "the connections closed with the client")
    sync.close()


async def test_the_pool_makes_hiredis_packing_connections(redis_url: str) -> None:
    coordinator = await Coordinator.connect(redis_url, replica_id="test", max_connections=7)
    pool = coordinator.redis.connection_pool
    assert isinstance(pool, BoundedConnectionPool)
    assert pool.max_connections == 7
    assert pool.connection_class is HiredisPackingConnection
    await coordinator.close()


async def test_a_pool_wait_that_runs_out_fails_closed_as_saturation(
    own_redis_server: RedisServer,
) -> None:
    sync = own_redis_server.sync_client()
    # Two connections, both held by a BLPOP on an empty list: Redis is idle and healthy.
    c = await connect(
        own_redis_server, sync, max_connections=2, pool_wait_s=0.2, redis_timeout_s=30
    )
    holders = [asyncio.create_task(c.redis.blpop(["hold"], timeout=25)) for _ in range(2)]
    await until(lambda: int(sync.info("clients")["blocked_clients"]) == 2, "both held")

    with pytest.raises(CoordinationSaturated) as raised:
        await c.window.take("w", 10)
    assert "saturated" in raised.value.reason and "unreachable" not in raised.value.reason
    assert raised.value.max_connections == 2
    assert raised.value.retry_after_s == 1.0
    with pytest.raises(CoordinationSaturated):
        await c.check()
    assert not await c.ping()

    sync.lpush("hold", "a", "b")  # both connections come back
    await asyncio.gather(*holders)
    assert (await c.window.take("w", 10)).admitted
    await c.close()
    sync.close()


async def test_cancelled_waiters_leave_the_bound_as_it_was(own_redis_server: RedisServer) -> None:
    sync = own_redis_server.sync_client()
    before = opened(sync)
    c = await connect(
        own_redis_server, sync, max_connections=1, pool_wait_s=0.2, redis_timeout_s=30
    )
    holder = asyncio.create_task(c.redis.blpop(["hold"], timeout=25))
    await until(lambda: int(sync.info("clients")["blocked_clients"]) == 1, "the one held")
    pool = c.redis.connection_pool
    assert isinstance(pool, BoundedConnectionPool)
    waiters = [asyncio.create_task(c.window.take("w", 10)) for _ in range(5)]
    await until(lambda: pool.waiting == 5, "five callers waiting for the connection")
    for waiter in waiters:
        waiter.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)
    sync.lpush("hold", "a")
    await holder

    # The one connection is free again (nothing a waiter took was kept) ...
    assert (await c.window.take("w", 10)).admitted
    # ... and there is still only one (nothing a waiter did not take was given back).
    holder = asyncio.create_task(c.redis.blpop(["hold"], timeout=25))
    await until(lambda: int(sync.info("clients")["blocked_clients"]) == 1, "the one held")
    with pytest.raises(CoordinationSaturated):
        await c.window.take("w", 10)
    sync.lpush("hold", "a")
    await holder
    assert opened(sync) - before == 2  # the command connection and the wake subscription
    await c.close()
    sync.close()


async def test_a_connection_that_fails_to_open_gives_its_place_back(
    own_redis_server: RedisServer,
) -> None:
    sync = own_redis_server.sync_client()
    c = await connect(own_redis_server, sync, max_connections=2, pool_wait_s=0.5)
    sync.close()
    own_redis_server.stop()
    for _ in range(6):  # three times the pool: a place kept by a failed connect would show
        with pytest.raises(CoordinationUnavailable) as raised:
            await c.window.take("w", 10)
        assert not isinstance(raised.value, CoordinationSaturated)
        assert raised.value.reason == f"Redis is unreachable at 127.0.0.1:{own_redis_server.port}"
    own_redis_server.start()
    assert (await c.window.take("w", 10)).admitted
    await c.close()
