"""A slot belongs to its prediction, not to its process (docs/slot-ownership.md): its holder
frozen or cut off from Redis (the scenario: tests/system/slot_ownership_scenario.py)."""

from __future__ import annotations

import asyncio
import signal
import time

import httpx
import pytest

from tests.fixtures.cluster import admin_headers, running_cluster
from tests.fixtures.tcp_proxy import tcp_proxy
from tests.system.helpers import eventually
from tests.system.slot_ownership_scenario import ENV, PREDICTION_S, check_invariant, scenario

pytestmark = [pytest.mark.system, pytest.mark.redis, pytest.mark.slow]


@pytest.mark.parametrize("frozen_s", [6.0, PREDICTION_S + 4])
async def test_a_frozen_holder_never_over_admits(frozen_s: float) -> None:
    with running_cluster(env=ENV) as cluster:
        async with httpx.AsyncClient(timeout=90, headers=admin_headers()) as client:

            async def freeze() -> None:
                cluster.signal(0, signal.SIGSTOP)
                await asyncio.sleep(frozen_s)
                cluster.signal(0, signal.SIGCONT)

            first, served = await scenario(cluster, client, freeze)
        check_invariant(cluster, served)
        # The frozen replica, back, learns its slots were taken over and says so.
        for response in first:
            assert response.status_code == 502, response.text
            error = response.json()["error"]
            assert "Lost the slot of" in error
            assert "taken over by another replica" in error or "this replica stalled" in error


async def test_a_holder_cut_off_from_redis_never_over_admits() -> None:
    with running_cluster(env=ENV) as cluster, tcp_proxy(cluster.redis.port) as proxy:
        original = cluster.replica_env

        def through_proxy(index: int) -> dict[str, str]:
            env = original(index)
            return {**env, "REDIS_URL": proxy.url} if index == 0 else env

        cluster.replica_env = through_proxy  # type: ignore[method-assign]
        cluster.stop_replica(0)
        cluster.start_replica(0)
        cluster.wait_ready(0)
        async with httpx.AsyncClient(timeout=90, headers=admin_headers()) as client:

            async def partition() -> None:
                proxy.freeze()  # replica 0 still reaches the simulator

            first, served = await scenario(cluster, client, partition)
            check_invariant(cluster, served)
            for response in first:
                assert response.status_code in (502, 503), response.text
            proxy.thaw()
            started = time.monotonic()
            await eventually(
                lambda: httpx.get(cluster.url(0) + "/health", timeout=5).status_code == 200,
                20,
            )
            assert time.monotonic() - started < 20
