"""Durable jobs on a real Redis Cluster (3 primaries + 3 replicas), the app in-process with
REDIS_CLUSTER=true and REDIS_URL naming one node, against the simulator.

Every job script touches one slot: a job's keys share `{job:<id>}`, the queue, the listing
index and the idempotency keys share `{jobs}`, the webhook deliveries `{hooks}`
(docs/redis-keys.md, "Durable jobs"). A script or a multi-key command that crossed slots would
fail here with CROSSSLOT, never on one server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.cluster

from service.jobs.store import GROUP
from tests.api.conftest import ADMIN, SERVER_TOKEN, flux, running_api, settings_for
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


async def test_jobs_run_to_their_end_on_a_redis_cluster(
    redis_cluster: RedisClusterNodes, simulator: SimulatorHandle
) -> None:
    """One job submitted twice at once with an Idempotency-Key, read by a runner that dies
    (its entry pending), taken over by another replica's XAUTOCLAIM and followed to its end
    over SSE; one read by XREADGROUP; one canceled while queued. Webhooks for all."""
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
    client = redis.cluster.RedisCluster.from_url(redis_cluster.url)
    with serve_in_thread(receiver.app(), name="webhook-receiver") as hook_url:
        hook = {"url": f"{hook_url}/hook", "events": ["task", "completed"]}
        async with running_api(settings.model_copy(update={"replica_id": "a"})) as a:
            await a.app.state.jobs.runner.close()  # a only answers HTTP
            headers = {**ADMIN, "Idempotency-Key": "cluster-1"}
            first, again = await asyncio.gather(
                a.post("/jobs", json=batch(3, webhook=hook), headers=headers),
                a.post("/jobs", json=batch(3, webhook=hook), headers=headers),
            )
            assert first.status_code == again.status_code == 202, (first.text, again.text)
            job_id = first.json()["id"]
            assert again.json()["id"] == job_id
            # A runner reads it and dies: its entry stays pending, to be claimed when idle.
            with contextlib.suppress(redis.ResponseError):  # BUSYGROUP: a's runner made it
                client.xgroup_create("rcg:{jobs}:queue", GROUP, id="0", mkstream=True)
            assert client.xreadgroup(GROUP, "dead-replica", {"rcg:{jobs}:queue": ">"}, count=1)
            queued = (await a.post("/jobs", json=batch(1, webhook=hook), headers=ADMIN)).json()
            assert queued["status"] == "queued" and queued["queue_position"] == 1
            canceled = await a.post(f"/jobs/{queued['id']}/cancel", headers=ADMIN)
            assert canceled.json()["status"] == "canceled"
            async with running_api(settings.model_copy(update={"replica_id": "b"})) as b:
                events = await b.get(f"/jobs/{job_id}/events", headers=ADMIN)  # to its end
                done = await wait_job(b, job_id, ADMIN, until=("succeeded", "failed"))
                single = (await b.post("/jobs", json=flux(), headers=ADMIN)).json()
                other = await wait_job(b, single["id"], ADMIN, until=("succeeded", "failed"))
                deadline = time.monotonic() + 20
                while len(receiver.accepted) < 5:  # 3 tasks + completed, + the canceled job's
                    assert time.monotonic() < deadline, receiver.attempts
                    await asyncio.sleep(0.1)
                listed = (await a.get(f"/jobs/{job_id}", headers=ADMIN)).json()
    assert done["status"] == other["status"] == "succeeded", (done, other)
    assert [t["status"] for t in done["tasks"]] == ["succeeded"] * 3
    assert done["tasks"][0]["prediction_id"]
    stream = parse_sse(events.text)
    assert stream[0]["data"]["status"] == "queued"
    assert stream[-1]["data"] == {**stream[-1]["data"], "status": "succeeded", "final": True}
    ended = [e["data"] for e in stream if e["event"] == "task" and e["data"]["status"] != "running"]
    assert sorted(e["index"] for e in ended if e["status"] == "succeeded") == [0, 1, 2]
    assert simulator.token_stats(SERVER_TOKEN)["created"] == 4
    assert set(receiver.accepted) == {
        f"msg_{job_id}_completed",
        *(f"msg_{job_id}_task-{i}" for i in range(3)),
        f"msg_{queued['id']}_completed",
    }
    assert receiver.accepted[f"msg_{queued['id']}_completed"]["data"]["status"] == "canceled"
    assert all(d["status"] == "delivered" for d in listed["webhook"]["deliveries"])
    try:
        assert client.xlen("rcg:{jobs}:queue") == 0  # every entry acknowledged and deleted
        shown: Any = client.hgetall(f"rcg:{{job:{job_id}}}:hooks")
        assert {json.loads(v)["status"] for v in shown.values()} == {"delivered"}
    finally:
        client.close()
