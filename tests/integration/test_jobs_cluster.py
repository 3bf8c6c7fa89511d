"""Durable jobs on a real Redis Cluster (3 primaries + 3 replicas), the app in-process with
REDIS_CLUSTER=true and REDIS_URL naming one node, against the simulator.

Every job script touches one slot: a job's keys share `{job:<id>}`, the queue, the listing
index and the idempotency keys share `{jobs}`, the webhook deliveries `{hooks}`
(docs/redis-keys.md, "Durable jobs"). A script or a multi-key command that crossed slots would
fail here with CROSSSLOT, never on one server.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.cluster

from tests.api.conftest import ADMIN, SERVER_TOKEN, running_api, settings_for
from tests.api.test_jobs import JOB_SETTINGS, WEBHOOK_SECRET, Receiver, batch, parse_sse, wait_job
from tests.fixtures.redis_cluster import RedisClusterNodes
from tests.fixtures.redis_server import EPOCH_PREFIX, require_redis_binary
from tests.fixtures.simulator import SimulatorHandle
from tests.fixtures.threaded_server import serve_in_thread

pytestmark = [pytest.mark.redis, pytest.mark.timeout(120)]


@pytest.fixture
def redis_cluster() -> Iterator[RedisClusterNodes]:
    binary = require_redis_binary()
    with (
        tempfile.TemporaryDirectory(prefix="rcg-jobs-cluster-") as workdir,
        RedisClusterNodes.started(binary, Path(workdir)) as cluster,
    ):
        client = redis.cluster.RedisCluster.from_url(cluster.url)
        try:
            client.set(f"{EPOCH_PREFIX}:epoch", "test-fixture")  # an intact store: no grace
        finally:
            client.close()
        yield cluster


async def test_a_job_runs_to_its_end_on_a_redis_cluster(
    redis_cluster: RedisClusterNodes, simulator: SimulatorHandle
) -> None:
    simulator.configure(latency_s=0.2)
    receiver = Receiver()
    receiver.down = False
    settings = settings_for(
        redis_cluster.url,
        simulator.base_url,
        redis_cluster=True,
        webhook_secret=WEBHOOK_SECRET,
        webhook_allow_private=True,
        **JOB_SETTINGS,
    )
    with serve_in_thread(receiver.app(), name="webhook-receiver") as hook_url:
        async with running_api(settings) as api:
            body = batch(3, webhook={"url": f"{hook_url}/hook", "events": ["task", "completed"]})
            headers = {**ADMIN, "Idempotency-Key": "cluster-1"}
            first, again = await asyncio.gather(
                api.post("/jobs", json=body, headers=headers),
                api.post("/jobs", json=body, headers=headers),
            )
            assert first.status_code == again.status_code == 202, (first.text, again.text)
            job_id = first.json()["id"]
            assert again.json()["id"] == job_id
            events = await api.get(f"/jobs/{job_id}/events", headers=ADMIN)  # to the job's end
            done = await wait_job(api, job_id, ADMIN, until=("succeeded", "failed"))
            # A queued job canceled at once, on a cluster too (its entry leaves the queue).
            await api.app.state.jobs.runner.close()
            queued = (await api.post("/jobs", json=batch(1), headers=ADMIN)).json()
            assert queued["status"] == "queued" and queued["queue_position"] == 1
            canceled = await api.post(f"/jobs/{queued['id']}/cancel", headers=ADMIN)
            assert canceled.json()["status"] == "canceled"
            deadline = time.monotonic() + 20
            while len(receiver.accepted) < 5:  # 3 tasks + completed, + the canceled job's
                assert time.monotonic() < deadline, receiver.attempts
                await asyncio.sleep(0.1)
            listed = (await api.get(f"/jobs/{job_id}", headers=ADMIN)).json()
    assert done["status"] == "succeeded", done
    assert [t["status"] for t in done["tasks"]] == ["succeeded"] * 3
    stream = parse_sse(events.text)
    assert stream[0]["data"]["status"] == "queued"
    assert stream[-1]["data"] == {**stream[-1]["data"], "status": "succeeded", "final": True}
    assert sorted(
        e["data"]["index"] for e in stream if e["event"] == "task" and e["data"]["status"] == "succeeded"
    ) == [0, 1, 2]
    assert simulator.token_stats(SERVER_TOKEN)["created"] == 3
    assert set(receiver.accepted) == {
        f"msg_{job_id}_completed",
        *(f"msg_{job_id}_task-{i}" for i in range(3)),
        f"msg_{queued['id']}_completed",
    }
    assert receiver.accepted[f"msg_{queued['id']}_completed"]["data"]["status"] == "canceled"
    assert all(d["status"] == "delivered" for d in listed["webhook"]["deliveries"])
    client = redis.cluster.RedisCluster.from_url(redis_cluster.url)
    try:
        assert client.xlen("rcg:{jobs}:queue") == 0  # every entry acknowledged and deleted
        shown: Any = client.hgetall(f"rcg:{{job:{job_id}}}:hooks")
        assert {json.loads(v)["status"] for v in shown.values()} == {"delivered"}
    finally:
        client.close()
