"""Durable jobs through the HTTP API: a real Redis, the simulator, apps in-process.

Several apps on one Redis stand for several replicas (each its own runner, consumer, Redis
pool). What upstream saw is read from the simulator, never patched.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import redis

from service.fingerprint import token_fingerprint
from service.jobs.models import CREATED, INFLIGHT, TaskState
from service.jobs.store import GROUP
from service.sealing import new_key
from tests.api.conftest import (
    ADMIN,
    SERVER_TOKEN,
    USER_TOKEN,
    Api,
    MakeApi,
    flux,
)
from tests.fixtures.simulator import SimulatorHandle
from tests.fixtures.sse import parse_sse

pytestmark = pytest.mark.redis

SEED_AUTH_FAILED = (
    "Authentication failed. Provide 'X-Admin-API-Key' in headers or complete credentials in "
    "payload."
)
JOB_SETTINGS: dict[str, Any] = {"job_claim_idle_seconds": 1.0, "token_sealing_key": new_key()}


def batch(count: int, **extra: Any) -> dict[str, Any]:
    return {"model_name": "flux-dev", "tasks": [{"prompt": f"task {i}"} for i in range(count)]} | (
        extra
    )


def user(body: dict[str, Any], token: str = USER_TOKEN) -> dict[str, Any]:
    return {**body, "credentials": {"replicate_api_token": token}}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def wait_job(
    api: Api, job_id: str, headers: dict[str, str], *, until: tuple[str, ...], timeout_s: float = 30
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        response = await api.get(f"/jobs/{job_id}", headers=headers)
        assert response.status_code == 200, response.text
        job: dict[str, Any] = response.json()
        if job["status"] in until:
            return job
        assert time.monotonic() < deadline, f"job still {job['status']}: {job['counts']}"
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def replicas(make_api: MakeApi, count: int, **overrides: Any) -> AsyncIterator[list[Api]]:
    async with contextlib.AsyncExitStack() as stack:
        apps = [
            await stack.enter_async_context(
                make_api(**{**JOB_SETTINGS, "replica_id": f"replica-{i}", **overrides})
            )
            for i in range(count)
        ]
        yield apps


# -- submit and follow --------------------------------------------------------------------------


async def test_a_generate_job_is_queued_then_answered_from_any_replica(
    make_api: MakeApi, simulator: SimulatorHandle
) -> None:
    async with replicas(make_api, 2) as (first, second):
        response = await first.post("/jobs", json=flux("A lighthouse"), headers=ADMIN)
        assert response.status_code == 202, response.text
        job = response.json()
        assert response.headers["Location"] == f"/jobs/{job['id']}"
        assert len(job["id"]) == 32
        assert job["status"] in ("queued", "running")
        assert job["created_at"].endswith("Z")
        done = await wait_job(second, job["id"], ADMIN, until=("succeeded", "failed"))
    assert done["status"] == "succeeded", done
    [task] = done["tasks"]
    assert task["index"] == 0 and task["status"] == "succeeded" and task["error"] is None
    assert task["prediction_id"] and task["files"][0]["url"].startswith("http")
    assert task["files"][0]["expires_at"].endswith("Z")
    assert done["started_at"] and done["completed_at"]
    assert done["counts"]["succeeded"] == 1
    assert simulator.token_stats(SERVER_TOKEN)["created"] == 1


async def test_a_batch_job_keeps_failed_tasks_beside_the_others(
    make_api: MakeApi, simulator: SimulatorHandle
) -> None:
    simulator.set_faults(fail_fraction=1.0)
    async with replicas(make_api, 1) as (api,):
        response = await api.post("/jobs", json=batch(3), headers=ADMIN)
        assert response.status_code == 202, response.text
        done = await wait_job(api, response.json()["id"], ADMIN, until=("succeeded", "failed"))
        assert done["status"] == "succeeded"  # as /generate-batch: per-task errors
        assert done["counts"]["failed"] == 3
        assert all("NSFW" in t["error"] and t["error_status"] == 502 for t in done["tasks"])
        single = await api.post("/jobs", json=flux(), headers=ADMIN)
        failed = await wait_job(api, single.json()["id"], ADMIN, until=("succeeded", "failed"))
        assert failed["status"] == "failed" and "NSFW" in failed["error"]


async def test_a_job_body_is_validated_and_authenticated_like_generate(
    make_api: MakeApi,
) -> None:
    async with replicas(make_api, 1) as (api,):
        anonymous = await api.post("/jobs", json=flux())
        assert anonymous.status_code == 401
        assert anonymous.json()["error"] == SEED_AUTH_FAILED
        for body in (flux(guidance=99), {"model_name": "nope", "prompt": "x"}, batch(0)):
            via_jobs = await api.post("/jobs", json=body, headers=ADMIN)
            path = "/generate-batch" if "tasks" in body else "/generate"
            direct = await api.post(path, json=body, headers=ADMIN)
            assert via_jobs.status_code == direct.status_code == 400
            assert via_jobs.json()["error"] == direct.json()["error"]
        missing = await api.post(
            "/jobs", json=flux(external_semaphore_id="no-such-semaphore"), headers=ADMIN
        )
        assert missing.status_code == 404
        assert "no-such-semaphore" in missing.json()["error"]


async def test_generate_batch_with_prefer_respond_async_answers_like_post_jobs(
    make_api: MakeApi,
) -> None:
    async with replicas(make_api, 1) as (api,):
        response = await api.post(
            "/generate-batch",
            json=batch(2),
            headers={**ADMIN, "Prefer": "respond-async, wait=10"},
        )
        assert response.status_code == 202, response.text
        job = response.json()
        assert response.headers["Location"] == f"/jobs/{job['id']}"
        assert job["kind"] == "batch" and job["total_tasks"] == 2
        done = await wait_job(api, job["id"], ADMIN, until=("succeeded",))
        assert done["counts"]["succeeded"] == 2


# -- who may read --------------------------------------------------------------------------------


async def test_only_the_submitting_account_or_the_admin_may_read_or_cancel(
    make_api: MakeApi,
) -> None:
    async with replicas(make_api, 1) as (api,):
        response = await api.post("/jobs", json=user(flux()))
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]
        assert (await api.get(f"/jobs/{job_id}", headers=bearer(USER_TOKEN))).status_code == 200
        assert (await api.get(f"/jobs/{job_id}", headers=ADMIN)).status_code == 200
        other = await api.get(f"/jobs/{job_id}", headers=bearer("r8_someone_else_entirely_123"))
        assert other.status_code == 404
        assert (await api.get(f"/jobs/{job_id}")).status_code == 401
        wrong_admin = await api.get(f"/jobs/{job_id}", headers={"X-Admin-API-Key": "wrong"})
        assert wrong_admin.status_code == 401
        assert (await api.get(f"/jobs/{'a' * 32}", headers=ADMIN)).status_code == 404
        refused = await api.post(
            f"/jobs/{job_id}/cancel", headers=bearer("r8_someone_else_entirely_123")
        )
        assert refused.status_code == 404
        done = await wait_job(api, job_id, bearer(USER_TOKEN), until=("succeeded",))
        assert done["tasks"][0]["files"]


async def test_a_users_token_needs_the_sealing_key(make_api: MakeApi) -> None:
    async with make_api(token_sealing_key=None) as api:
        response = await api.post("/jobs", json=user(flux()))
        assert response.status_code == 503
        assert "TOKEN_SEALING_KEY" in response.json()["error"]


# -- idempotency ---------------------------------------------------------------------------------


async def test_ten_concurrent_submissions_with_one_key_on_three_replicas_make_one_job(
    make_api: MakeApi, simulator: SimulatorHandle
) -> None:
    async with replicas(make_api, 3) as apps:
        headers = {**ADMIN, "Idempotency-Key": "order-4711"}
        answers = await asyncio.gather(
            *(apps[i % 3].post("/jobs", json=batch(2), headers=headers) for i in range(10))
        )
        assert [a.status_code for a in answers] == [202] * 10, [a.text for a in answers]
        ids = {a.json()["id"] for a in answers}
        assert len(ids) == 1
        assert sum(a.headers.get("Idempotent-Replayed") == "true" for a in answers) == 9
        [job_id] = ids
        await wait_job(apps[0], job_id, ADMIN, until=("succeeded",))
        later = await apps[1].post("/jobs", json=batch(2), headers=headers)
        assert later.json()["id"] == job_id
        other_body = await apps[2].post("/jobs", json=batch(3), headers=headers)
        assert other_body.status_code == 422
        assert "order-4711" in other_body.json()["error"]
        # The same key from another caller is another key.
        theirs = await apps[0].post(
            "/jobs", json=user(batch(2)), headers={"Idempotency-Key": "order-4711"}
        )
        assert theirs.status_code == 202 and theirs.json()["id"] != job_id
    assert simulator.token_stats(SERVER_TOKEN)["created"] == 2


# -- cancel --------------------------------------------------------------------------------------


async def test_cancel_mid_run_leaves_nothing_running_upstream(
    make_api: MakeApi, simulator: SimulatorHandle
) -> None:
    simulator.configure(latency_s=30.0)
    async with replicas(make_api, 1, replicate_concurrent_limit=3) as (api,):
        response = await api.post("/jobs", json=batch(6), headers=ADMIN)
        job_id = response.json()["id"]
        deadline = time.monotonic() + 15
        while simulator.token_stats(SERVER_TOKEN)["in_flight"] < 3:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        cancelled = await api.post(f"/jobs/{job_id}/cancel", headers=ADMIN)
        assert cancelled.status_code == 200, cancelled.text
        job = cancelled.json()
        assert job["status"] == "canceled" and job["completed_at"]
        assert job["counts"]["canceled"] == 6
        stats = simulator.token_stats(SERVER_TOKEN)
        assert stats["in_flight"] == 0 and stats["created"] == 3
        assert stats["by_status"]["canceled"] == 3
        again = await api.post(f"/jobs/{job_id}/cancel", headers=ADMIN)
        assert again.status_code == 200 and again.json()["status"] == "canceled"


async def test_a_queued_job_is_canceled_at_once_and_a_finished_one_is_not(
    make_api: MakeApi, redis_url: str
) -> None:
    async with replicas(make_api, 1) as (api,):
        done = await api.post("/jobs", json=flux(), headers=ADMIN)
        finished = await wait_job(api, done.json()["id"], ADMIN, until=("succeeded",))
        refused = await api.post(f"/jobs/{finished['id']}/cancel", headers=ADMIN)
        assert refused.status_code == 409
    # No replica runs: the job stays queued, with its place in the queue.
    async with replicas(make_api, 1, job_max_running_tasks=1) as (api,):
        await api.app.state.jobs.runner.close()
        first = (await api.post("/jobs", json=flux(), headers=ADMIN)).json()
        second = (await api.post("/jobs", json=flux(), headers=ADMIN)).json()
        assert first["status"] == "queued" and first["queue_position"] == 1
        assert second["queue_position"] == 2
        cancelled = await api.post(f"/jobs/{first['id']}/cancel", headers=ADMIN)
        assert cancelled.json()["status"] == "canceled"
        view = (await api.get(f"/jobs/{second['id']}", headers=ADMIN)).json()
        assert view["queue_position"] == 1


# -- retention -----------------------------------------------------------------------------------


async def test_every_job_key_expires_after_the_retention(make_api: MakeApi, redis_url: str) -> None:
    async with replicas(make_api, 1, job_retention_seconds=120) as (api,):
        response = await api.post("/jobs", json=batch(2), headers=ADMIN)
        job_id = response.json()["id"]
        await wait_job(api, job_id, ADMIN, until=("succeeded",))
    client = redis.Redis.from_url(redis_url)
    try:
        keys = client.keys(f"rcg:{{job:{job_id}}}:*")
        assert {k.decode().rsplit(":", 1)[1] for k in keys} >= {"job", "tasks", "events"}
        for key in keys:
            assert 0 < client.pttl(key) <= 120_000
        assert client.xlen("rcg:{jobs}:queue") == 0  # acknowledged and deleted
    finally:
        client.close()


# -- resuming a job whose runner died ------------------------------------------------------------


def _plant_running_job(redis_url: str, api_job: dict[str, Any], states: list[TaskState]) -> None:
    """Make the job look like its runner died mid-run: its entry pending for a consumer that
    is gone, its tasks as that runner left them."""
    client = redis.Redis.from_url(redis_url)
    try:
        job_id = api_job["id"]
        base = f"rcg:{{job:{job_id}}}"
        client.hset(f"{base}:job", mapping={"status": "running", "epoch": 7})
        for index, state in enumerate(states):
            client.hset(f"{base}:tasks", str(index), state.to_json())
        with contextlib.suppress(redis.ResponseError):  # BUSYGROUP
            client.xgroup_create("rcg:{jobs}:queue", GROUP, id="0", mkstream=True)
        delivered = client.xreadgroup(GROUP, "dead-replica", {"rcg:{jobs}:queue": ">"}, count=1)
        assert delivered, "the planted job was not in the queue"
    finally:
        client.close()


async def test_a_resumed_job_follows_created_and_finds_inflight_predictions(
    make_api: MakeApi, simulator: SimulatorHandle, redis_url: str
) -> None:
    """The dead runner had created task 0's prediction (id recorded) and sent task 1's create
    (answer never recorded); task 2 had not started. Another replica finishes the job with one
    prediction per task: 0 and 1 followed, only 2 created."""
    simulator.configure(latency_s=1.0)
    async with replicas(make_api, 1) as (api,):
        await api.app.state.jobs.runner.close()  # this replica takes nothing
        job = (await api.post("/jobs", json=batch(3), headers=ADMIN)).json()
    async with httpx.AsyncClient(base_url=simulator.base_url, headers=bearer(SERVER_TOKEN)) as up:
        made = []
        for index in range(2):
            created = await up.post(
                "/v1/models/black-forest-labs/flux-dev/predictions",
                json={"input": job_input(job, index)},
            )
            assert created.status_code == 201, created.text
            made.append(created.json()["id"])
    states = [
        TaskState(status="running", prediction_id=made[0], create=CREATED, create_at=time.time()),
        TaskState(status="running", create=INFLIGHT, create_at=time.time()),
        TaskState(),
    ]
    _plant_running_job(redis_url, job, states)
    async with replicas(make_api, 1) as (api,):
        done = await wait_job(api, job["id"], ADMIN, until=("succeeded", "failed"))
    assert done["status"] == "succeeded", done
    assert [t["status"] for t in done["tasks"]] == ["succeeded"] * 3
    assert [t["prediction_id"] for t in done["tasks"][:2]] == made
    stats = simulator.token_stats(SERVER_TOKEN)
    assert stats["created"] == 3  # two made "by the dead runner", one by the new one
    assert stats["list_requests"] >= 1


def job_input(job: dict[str, Any], index: int) -> dict[str, Any]:
    """The input Replicate got for a task of a batch(…) job (the service's defaults applied)."""
    from service.schemas import parse_batch

    parsed = parse_batch(batch(job["total_tasks"]), max_tasks=100)
    return parsed.tasks[index].replicate_input


async def test_token_fingerprint_is_the_owner(make_api: MakeApi, redis_url: str) -> None:
    async with replicas(make_api, 1) as (api,):
        job = (await api.post("/jobs", json=user(flux()))).json()
    client = redis.Redis.from_url(redis_url)
    try:
        fields = client.hgetall(f"rcg:{{job:{job['id']}}}:job")
    finally:
        client.close()
    assert fields[b"owner"].decode() == token_fingerprint(USER_TOKEN)
    assert USER_TOKEN.encode() not in b"".join(fields.values())  # sealed, never plain
    assert json.loads(fields[b"spec"])["kind"] == "generate"


# -- events (SSE) --------------------------------------------------------------------------------


async def test_events_resume_on_another_replica_without_loss_or_duplicates(
    make_api: MakeApi, simulator: SimulatorHandle
) -> None:
    simulator.configure(latency_s=0.3)
    async with replicas(make_api, 2) as (first, second):
        job = (await first.post("/jobs", json=batch(3), headers=ADMIN)).json()
        response = await first.get(f"/jobs/{job['id']}/events", headers=ADMIN)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-accel-buffering"] == "no"
        full = parse_sse(response.text)
        # The stream ends with the job's end; task events carry their task's state.
        assert full[-1]["event"] == "job" and full[-1]["data"]["status"] == "succeeded"
        assert full[0]["data"]["status"] == "queued"
        done = [
            e["data"]["index"]
            for e in full
            if e["data"].get("status") == "succeeded" and e["event"] == "task"
        ]
        assert sorted(done) == [0, 1, 2]
        ids = [e["id"] for e in full]
        assert len(set(ids)) == len(ids)
        cut = 3
        resumed = await second.get(
            f"/jobs/{job['id']}/events", headers={**ADMIN, "Last-Event-ID": ids[cut - 1]}
        )
        rest = parse_sse(resumed.text)
        assert [e["id"] for e in rest] == ids[cut:]
        other = await second.get(f"/jobs/{job['id']}/events", headers=bearer(USER_TOKEN))
        assert other.status_code == 404
        bad = await second.get(
            f"/jobs/{job['id']}/events", headers={**ADMIN, "Last-Event-ID": "nope"}
        )
        assert bad.status_code == 400


# -- webhooks out --------------------------------------------------------------------------------

WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


class Receiver:
    """A webhook receiver that verifies every request with the `standardwebhooks` package (not
    the service's code), answers 503 while `down`, and keeps what it accepted."""

    def __init__(self) -> None:
        from standardwebhooks import Webhook

        self.verifier = Webhook(WEBHOOK_SECRET)
        self.down = True
        self.attempts: list[str] = []
        self.accepted: dict[str, dict[str, Any]] = {}
        self.bad_signatures = 0

    def app(self) -> Any:
        from standardwebhooks import WebhookVerificationError
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import Response
        from starlette.routing import Route

        async def hook(request: Request) -> Response:
            body = await request.body()
            self.attempts.append(request.headers.get("webhook-id", ""))
            if self.down:
                return Response(status_code=503)
            try:
                payload = self.verifier.verify(body, dict(request.headers))
            except WebhookVerificationError:
                self.bad_signatures += 1
                return Response(status_code=400)
            self.accepted.setdefault(request.headers["webhook-id"], payload)
            return Response(status_code=204)

        return Starlette(routes=[Route("/hook", hook, methods=["POST"])])


async def test_webhooks_are_signed_retried_and_delivered_once_per_id(
    make_api: MakeApi,
) -> None:
    from tests.fixtures.threaded_server import serve_in_thread

    receiver = Receiver()
    with serve_in_thread(receiver.app(), name="webhook-receiver") as url:
        async with replicas(
            make_api, 1, webhook_secret=WEBHOOK_SECRET, webhook_allow_private=True
        ) as (api,):
            body = batch(2, webhook={"url": f"{url}/hook", "events": ["task", "completed"]})
            job = (await api.post("/jobs", json=body, headers=ADMIN)).json()
            await wait_job(api, job["id"], ADMIN, until=("succeeded",))
            deadline = time.monotonic() + 20
            while len(set(receiver.attempts)) < 3:
                assert time.monotonic() < deadline, receiver.attempts
                await asyncio.sleep(0.1)
            await asyncio.sleep(1.5)  # a few more refused attempts
            receiver.down = False
            while len(receiver.accepted) < 3:
                assert time.monotonic() < deadline + 30, receiver.attempts
                await asyncio.sleep(0.1)
            view = (await api.get(f"/jobs/{job['id']}", headers=ADMIN)).json()
    assert receiver.bad_signatures == 0
    ids = sorted(receiver.accepted)
    assert ids == sorted(
        [f"msg_{job['id']}_completed", f"msg_{job['id']}_task-0", f"msg_{job['id']}_task-1"]
    )
    # The same webhook-id on every attempt of one delivery; retried while the receiver was down.
    assert set(receiver.attempts) == set(ids)
    assert len(receiver.attempts) > 3
    completed = receiver.accepted[f"msg_{job['id']}_completed"]
    assert completed["type"] == "job.completed" and completed["data"]["status"] == "succeeded"
    deliveries = {d["id"]: d for d in view["webhook"]["deliveries"]}
    assert all(d["status"] == "delivered" for d in deliveries.values()), deliveries
    assert deliveries[f"msg_{job['id']}_completed"]["attempts"] >= 2


async def until_accepted(receiver: Receiver, expected: set[str], timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while set(receiver.accepted) != expected:
        assert time.monotonic() < deadline, (receiver.attempts, expected)
        await asyncio.sleep(0.1)


async def test_a_job_that_ended_before_its_webhook_was_queued_still_sends_it(
    make_api: MakeApi, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis fails (or the replica dies) between a job's end and its webhook being queued: the
    job's queue entry is not acknowledged, and the runner that claims it queues the webhook.
    A job canceled while queued ends without a runner: its webhook is queued by the cancel."""
    from service.errors import Unavailable
    from tests.fixtures.threaded_server import serve_in_thread

    receiver = Receiver()
    receiver.down = False
    with serve_in_thread(receiver.app(), name="webhook-receiver") as url:
        async with replicas(
            make_api, 1, webhook_secret=WEBHOOK_SECRET, webhook_allow_private=True
        ) as (api,):
            jobs = api.app.state.jobs
            enqueue = jobs.webhooks.enqueue
            failed: list[str] = []

            async def fails_once(job_id: str, event: str, *args: Any) -> None:
                if event == "completed" and not failed:
                    failed.append(job_id)
                    raise Unavailable("Coordination store (Redis) is unreachable (injected)")
                await enqueue(job_id, event, *args)

            monkeypatch.setattr(jobs.webhooks, "enqueue", fails_once)
            hook = {"url": f"{url}/hook"}
            job = (await api.post("/jobs", json=flux(webhook=hook), headers=ADMIN)).json()
            await wait_job(api, job["id"], ADMIN, until=("succeeded",))
            await until_accepted(receiver, {f"msg_{job['id']}_completed"})
            await jobs.runner.close()  # no runner: the next job stays queued
            queued = (await api.post("/jobs", json=flux(webhook=hook), headers=ADMIN)).json()
            canceled = await api.post(f"/jobs/{queued['id']}/cancel", headers=ADMIN)
            assert canceled.json()["status"] == "canceled"
            await until_accepted(
                receiver, {f"msg_{job['id']}_completed", f"msg_{queued['id']}_completed"}
            )
    assert failed == [job["id"]]
    assert receiver.accepted[f"msg_{job['id']}_completed"]["data"]["status"] == "succeeded"
    assert receiver.accepted[f"msg_{queued['id']}_completed"]["data"]["status"] == "canceled"
    assert len(receiver.attempts) == 2  # each sent once
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.xlen("rcg:{jobs}:queue") == 0  # acknowledged once the webhook was queued
    finally:
        client.close()


async def test_a_delivery_is_queued_once_even_after_it_was_delivered(
    make_api: MakeApi, redis_url: str
) -> None:
    from tests.fixtures.threaded_server import serve_in_thread

    receiver = Receiver()
    receiver.down = False
    with serve_in_thread(receiver.app(), name="webhook-receiver") as url:
        async with replicas(
            make_api, 1, webhook_secret=WEBHOOK_SECRET, webhook_allow_private=True
        ) as (api,):
            sender = api.app.state.jobs.webhooks
            await sender.enqueue("j" * 32, "completed", f"{url}/hook", {"n": 1})
            deadline = time.monotonic() + 10
            while sender.delivered < 1:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            # A runner that resumed the job queues it again: nothing is sent twice.
            await sender.enqueue("j" * 32, "completed", f"{url}/hook", {"n": 2})
            await asyncio.sleep(1.0)  # a few sender polls
    assert receiver.attempts == [f"msg_{'j' * 32}_completed"]
    client = redis.Redis.from_url(redis_url)
    try:
        tombstone = client.hgetall(f"rcg:{{hooks}}:d:msg_{'j' * 32}_completed")
        assert b"body" not in tombstone and tombstone[b"job"] == b"j" * 32
        assert 0 < client.pttl(f"rcg:{{hooks}}:d:msg_{'j' * 32}_completed") <= 3_600_000
    finally:
        client.close()


async def test_webhook_targets_must_be_public_https(make_api: MakeApi) -> None:
    async with replicas(make_api, 1, webhook_secret=WEBHOOK_SECRET) as (api,):
        for url in (
            "http://example.com/hook",
            "https://127.0.0.1/hook",
            "https://10.1.2.3/hook",
            "https://169.254.169.254/latest",
            "https://[::1]/hook",
            "ftp://example.com/x",
        ):
            response = await api.post("/jobs", json=flux(webhook={"url": url}), headers=ADMIN)
            assert response.status_code == 400, (url, response.text)
            assert "webhook.url" in response.json()["error"]
        bad_events = await api.post(
            "/jobs",
            json=flux(webhook={"url": "https://8.8.8.8/x", "events": ["task"]}),
            headers=ADMIN,
        )
        assert bad_events.status_code == 400
    async with replicas(make_api, 1) as (api,):  # no WEBHOOK_SECRET: nothing to sign with
        response = await api.post(
            "/jobs", json=flux(webhook={"url": "https://8.8.8.8/x"}), headers=ADMIN
        )
        assert response.status_code == 400
        assert "WEBHOOK_SECRET" in response.json()["error"]


# -- operators -----------------------------------------------------------------------------------


async def test_operators_see_jobs_in_metrics_and_the_cli(make_api: MakeApi, redis_url: str) -> None:
    import subprocess
    import sys

    async with replicas(make_api, 1) as (api,):
        job = (await api.post("/jobs", json=batch(2), headers=ADMIN)).json()
        await wait_job(api, job["id"], ADMIN, until=("succeeded",))
        jobs = api.app.state.jobs
        jobs.counts = await jobs.count_by_status()  # refreshed every 5 s in the background
        metrics = (await api.get("/metrics")).text
        assert 'jobs{status="succeeded"} 1.0' in metrics
        assert "job_tasks_running 0.0" in metrics

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "service.cli", "--redis-url", redis_url, *args],
            capture_output=True,
            text=True,
            timeout=30,
        )

    listed = await asyncio.to_thread(cli, "jobs", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    [row] = json.loads(listed.stdout)
    assert row["id"] == job["id"] and row["status"] == "succeeded" and row["done"] == 2
    shown = await asyncio.to_thread(cli, "jobs", "show", job["id"])
    assert shown.returncode == 0, shown.stderr
    assert job["id"] in shown.stdout and "succeeded" in shown.stdout
    missing = await asyncio.to_thread(cli, "jobs", "show", "b" * 32)
    assert missing.returncode == 1 and "not found" in missing.stderr


def test_nginx_passes_events_through_unbuffered() -> None:
    """The compose file's nginx honours the events' `X-Accel-Buffering: no` (it must not be
    ignored) and keeps an idle stream open far longer than the heartbeat interval."""
    from pathlib import Path

    from service.api.jobs import SSE_PING_S

    conf = (Path(__file__).resolve().parents[2] / "deploy" / "nginx.conf").read_text()
    directives = [line.split("#")[0].strip() for line in conf.splitlines()]
    assert not any(d.startswith("proxy_ignore_headers") for d in directives)
    assert not any(d.startswith("proxy_buffering") and "on" in d for d in directives)
    [timeout] = [d for d in directives if d.startswith("proxy_read_timeout")]
    assert int(timeout.split()[1].rstrip("s;")) > 10 * SSE_PING_S


# -- Replicate's webhooks in ---------------------------------------------------------------------


async def test_a_tampered_or_replayed_replicate_webhook_is_refused(
    make_api: MakeApi, simulator: SimulatorHandle
) -> None:
    from standardwebhooks import Webhook

    simulator.configure(latency_s=30.0)
    async with replicas(make_api, 1, public_base_url="http://service.invalid") as (api,):
        job = (await api.post("/jobs", json=flux(), headers=ADMIN)).json()
        deadline = time.monotonic() + 10
        while not (view := await wait_job(api, job["id"], ADMIN, until=("running",)))["tasks"][0][
            "prediction_id"
        ]:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        prediction_id = view["tasks"][0]["prediction_id"]
        async with httpx.AsyncClient(base_url=simulator.base_url) as up:
            secret = (
                await up.get("/v1/webhooks/default/secret", headers=bearer(SERVER_TOKEN))
            ).json()["key"]
            assert secret.startswith("whsec_")
        forged = {"id": prediction_id, "status": "succeeded", "output": ["https://evil/x.png"]}
        body = json.dumps(forged)

        def signed(text: str, webhook_id: str, key: str = secret) -> dict[str, str]:
            moment = datetime.now(tz=UTC)
            return {
                "webhook-id": webhook_id,
                "webhook-timestamp": str(int(moment.timestamp())),
                "webhook-signature": Webhook(key).sign(webhook_id, moment, text),
                "content-type": "application/json",
            }

        other_key = "whsec_" + base64.b64encode(b"k" * 32).decode()
        wrong = await api.post(
            "/replicate/webhook", content=body, headers=signed(body, "msg_a", other_key)
        )
        assert wrong.status_code == 401
        headers = signed(body, "msg_b")
        tampered = await api.post("/replicate/webhook", content=body + " ", headers=headers)
        assert tampered.status_code == 401
        stale = signed(body, "msg_c")
        stale["webhook-timestamp"] = str(int(time.time()) - 3600)
        assert (
            await api.post("/replicate/webhook", content=body, headers=stale)
        ).status_code == 401
        # A genuine one (still processing: nothing to complete) is accepted once, then a replay.
        real = json.dumps({"id": prediction_id, "status": "processing", "output": None})
        genuine = signed(real, "msg_d")
        assert (
            await api.post("/replicate/webhook", content=real, headers=genuine)
        ).status_code == 200
        replay = await api.post("/replicate/webhook", content=real, headers=genuine)
        assert replay.status_code == 409
        # Signed with the right secret but no prediction in it: the sender's mistake, 400.
        for text in ("not json", "[1, 2]", '{"status": "succeeded"}'):
            bad = await api.post("/replicate/webhook", content=text, headers=signed(text, "msg_e"))
            assert bad.status_code == 400, (text, bad.text)
            assert "Invalid Replicate webhook" in bad.json()["error"]
        after = (await api.get(f"/jobs/{job['id']}", headers=ADMIN)).json()
        assert after["status"] == "running" and after["tasks"][0]["files"] == []
        await api.post(f"/jobs/{job['id']}/cancel", headers=ADMIN)
    async with replicas(make_api, 1) as (api,):  # no PUBLIC_BASE_URL: not served
        assert (await api.post("/replicate/webhook", content=b"{}")).status_code == 404


async def test_the_dashboard_shows_jobs_by_status(make_api: MakeApi) -> None:
    async with make_api(**JOB_SETTINGS) as api:
        submitted = await api.post("/jobs", json=batch(2), headers=ADMIN)
        job_id = submitted.json()["id"]
        await wait_job(api, job_id, ADMIN, until=("succeeded",))
        jobs = api.app.state.jobs
        jobs.counts = await jobs.count_by_status()  # what the runner refreshes every 5 s
        data = (await api.get("/dashboard/data")).json()
    assert data["jobs"]["succeeded"] == 1 and data["jobs"]["queued"] == 0


async def test_hostile_follow_and_read_headers_are_4xx(make_api: MakeApi) -> None:
    """A Last-Event-ID past a stream id's range is a 400 before the stream starts (it was a 200
    then a broken stream); the admin key sent as a bearer says where it goes (it was a 404)."""
    async with make_api(**JOB_SETTINGS) as api:
        job_id = (await api.post("/jobs", json=batch(1), headers=ADMIN)).json()["id"]
        for last in ("18446744073709551616-0", "1-99999999999999999999", "99999999999999999999"):
            response = await api.get(
                f"/jobs/{job_id}/events", headers={**ADMIN, "Last-Event-ID": last}
            )
            assert response.status_code == 400, (last, response.text)
            assert "Last-Event-ID" in response.json()["error"]
        admin_key = ADMIN[next(iter(ADMIN))]
        response = await api.get(f"/jobs/{job_id}", headers=bearer(admin_key))
        assert response.status_code == 401 and "X-Admin-API-Key" in response.json()["error"]


async def test_a_canceled_task_keeps_the_id_of_its_prediction(
    make_api: MakeApi, simulator: SimulatorHandle
) -> None:
    """Cancelled while its create was under way: the prediction was created (and cancelled
    upstream), and the task says which one."""
    simulator.configure(latency_s=5.0)
    async with make_api(**JOB_SETTINGS) as api:
        job_id = (await api.post("/jobs", json=batch(2), headers=ADMIN)).json()["id"]
        await asyncio.sleep(0.3)
        await api.post(f"/jobs/{job_id}/cancel", headers=ADMIN)
        job = await wait_job(api, job_id, ADMIN, until=("canceled",))
    created = set((await simulator.atoken_stats(SERVER_TOKEN))["prediction_ids"])
    ids = {t["prediction_id"] for t in job["tasks"]}
    assert ids <= created and None not in ids, (ids, created)
