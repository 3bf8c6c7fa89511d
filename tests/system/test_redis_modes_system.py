"""What differs between Redis deployments (docs/redis-ha.md): Replicate's webhooks fanned out
between real replicas under Sentinel, and the channel subscription they use
(Coordinator.subscribe) in every mode.

(The limits across replicas run in every mode in test_limits_across_replicas.py.)
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from service.coordination import Coordinator, CoordinatorConfig
from tests.fixtures.cluster import REDIS_MODES, Cluster, RedisMode, admin_headers
from tests.fixtures.ports import free_port
from tests.fixtures.redis_cluster import RedisClusterNodes
from tests.fixtures.redis_sentinel import RedisSentinelSet
from tests.fixtures.redis_server import RedisServer, require_redis_binary
from tests.system.helpers import eventually

pytestmark = [pytest.mark.system, pytest.mark.redis, pytest.mark.slow]

JOB_ENV = {
    "REPLICATE_CONCURRENT_LIMIT": "8",
    "PREFER_WAIT_SECONDS": "1",
    "JOB_MAX_RUNNING_TASKS": "64",
}


def job_runner(cluster: Cluster, job_id: str) -> str:
    """The REPLICA_ID of the replica that runs the job ('' before one takes it): its consumer
    is `<replica id>-<random>`."""
    client = cluster.redis_client()
    try:
        runner = client.hget(f"rcg:{{job:{job_id}}}:job", "runner")
    finally:
        client.close()
    return runner.decode().rpartition("-")[0] if isinstance(runner, bytes) else ""


async def read_job(client: httpx.AsyncClient, cluster: Cluster, job_id: str) -> Any:
    response = await client.get(f"{cluster.url(0)}/jobs/{job_id}")
    assert response.status_code == 200, response.text
    return response.json()


def prediction_end(stats: dict[str, Any]) -> float:
    [token] = stats["tokens"].values()
    [[_, end]] = token["intervals"]
    return float(end)


async def test_under_sentinel_replicates_webhook_reaches_the_replica_running_the_job() -> None:
    """Sentinel, PUBLIC_BASE_URL set: the simulator POSTs its signed `completed` webhook to
    replica 1, and replica 0 runs the job (replica 1 is down until replica 0 has taken it).
    The webhook crosses to replica 0 through Redis, and the task completes at once instead of
    at its next poll (about 2 s after a 6 s prediction ends: test_jobs.py's single-server test).

    REDIS_URL names a closed loopback port: under Sentinel its host names no server
    (docs/redis-ha.md), so a connection made to it fails here, visibly, instead of reaching
    whatever serves the placeholder's default, 127.0.0.1:6379."""
    require_redis_binary()
    with tempfile.TemporaryDirectory(prefix="rcg-system-") as workdir:
        cluster = Cluster(
            Path(workdir),
            replicas=2,
            env=dict(JOB_ENV),
            sim_flags={"latency": 6.0, "jitter": 0.0, "seed": 7},
            redis_mode="sentinel",
        )
        cluster.env["PUBLIC_BASE_URL"] = cluster.url(1)  # Replicate reaches replica 1 only
        cluster.env["REDIS_URL"] = f"redis://127.0.0.1:{free_port()}/0"
        try:
            cluster.start()
            cluster.stop_replica(1)
            async with httpx.AsyncClient(timeout=30, headers=admin_headers()) as client:
                body = {"model_name": "flux-dev", "prompt": "webhook me under sentinel"}
                submitted = await client.post(cluster.url(0) + "/jobs", json=body)
                assert submitted.status_code == 202, submitted.text
                job_id = submitted.json()["id"]
                await eventually(lambda: job_runner(cluster, job_id) == "replica-0", 10)
                cluster.start_replica(1)
                cluster.wait_ready(1)

                async def finished() -> bool:
                    view = await read_job(client, cluster, job_id)
                    return bool(view["status"] in ("succeeded", "failed"))

                await eventually(finished, 30)
                done = await read_job(client, cluster, job_id)
            stats = cluster.sim("GET", "/_sim/stats")
            runner = job_runner(cluster, job_id)
            logs = cluster.logs()
        finally:
            cluster.stop()
    assert done["status"] == "succeeded", done
    assert runner == "replica-0"
    assert stats["webhooks"]["sent"] == 1  # accepted by replica 1
    completed = datetime.fromisoformat(done["completed_at"].replace("Z", "+00:00")).timestamp()
    late_s = completed - prediction_end(stats)
    assert late_s < 1.0, f"completed {late_s:.2f} s after the prediction ended: by a poll"
    print(f"completed {late_s:.2f} s after the prediction ended")
    assert "subscription lost" not in logs  # (before: "webhook fan-out interrupted" on both)


Deployments = dict[RedisMode, tuple[dict[str, Any], list[int]]]


@pytest.fixture(scope="module")
def deployments() -> Iterator[Deployments]:
    """Each mode's Redis alone, no replicas: (CoordinatorConfig options, the ports of the
    servers a PUBLISH may be sent to)."""
    binary = require_redis_binary()
    with (
        tempfile.TemporaryDirectory(prefix="rcg-modes-") as workdir,
        contextlib.ExitStack() as on_exit,
    ):
        root = Path(workdir)
        (root / "single").mkdir()
        single = RedisServer(binary, root / "single")
        single.start()
        on_exit.callback(single.stop)
        nodes = on_exit.enter_context(RedisClusterNodes.started(binary, root / "cluster"))
        sentinels = on_exit.enter_context(RedisSentinelSet.started(binary, root / "sentinel"))
        yield {
            "single": ({"redis_url": single.url}, [single.port]),
            "cluster": ({"redis_url": nodes.url, "cluster": True}, [n.port for n in nodes.nodes]),
            "sentinel": (
                {
                    "redis_url": "",
                    "sentinels": sentinels.sentinels_setting,
                    "sentinel_master": sentinels.master_name,
                },
                [sentinels.primary().port],
            ),
        }


@pytest.mark.parametrize("redis_mode", REDIS_MODES)
async def test_coordinator_subscribe_hears_its_channel_in_every_mode(
    deployments: Deployments, redis_mode: RedisMode
) -> None:
    """The webhook fan-out's subscription, as a replica makes it: on a Cluster it hears a
    PUBLISH sent to any node, primary or replica (classic pub/sub is broadcast)."""
    options, publish_ports = deployments[redis_mode]
    c = Coordinator(CoordinatorConfig(**options, replica_id="t"))
    await c.start()
    received: list[bytes] = []
    try:
        subscription = c.subscribe("rcg:replicate-webhooks", received.append)
        assert await subscription.wait_connected(5)
        for port in publish_ports:
            publisher = redis.Redis(port=port, socket_timeout=5)
            try:
                publisher.publish("rcg:replicate-webhooks", f"from {port}")
            finally:
                publisher.close()
        expected = sorted(f"from {port}".encode() for port in publish_ports)
        async with asyncio.timeout(5):
            while sorted(received) != expected:
                await asyncio.sleep(0.01)
    finally:
        await c.close()
    assert subscription.closed
