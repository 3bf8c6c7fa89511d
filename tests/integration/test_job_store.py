"""The job store against a real redis-server, with a process that dies between any two commands.

A submission is several Redis commands (service/jobs/store.py: the job's own slot, then the
queue's). `Dying` is a client whose process "dies" after its first `survive` commands reached
Redis: every later command fails without being sent, as if the replica had been SIGKILLed there.
For every such point, the caller's retry (the same Idempotency-Key, the same body, on a fresh
replica) must end with one job that is queued for a runner: never a job id handed out whose
job no runner will ever read.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from service.errors import ServiceError
from service.jobs.models import KIND_BATCH, JobSpec
from service.jobs.store import JobStore, NewJob
from service.schemas import TaskRequest

pytestmark = pytest.mark.redis


class Dying(aioredis.Redis):
    """Lets `survive` commands through (a pipeline or a script call counts as one), then dies."""

    survive = 1_000_000
    sent = 0

    def _step(self) -> None:
        if self.sent >= self.survive:
            raise RedisConnectionError("the replica died here")
        self.sent += 1

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        self._step()
        return await super().execute_command(*args, **options)

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Any:
        pipe = super().pipeline(transaction, shard_hint)
        execute = pipe.execute

        async def counted(raise_on_error: bool = True) -> Any:
            self._step()
            return await execute(raise_on_error)

        pipe.execute = counted  # type: ignore[method-assign]
        return pipe


@pytest.fixture
async def clients(redis_url: str) -> AsyncIterator[list[aioredis.Redis]]:
    opened: list[aioredis.Redis] = []
    yield opened
    for client in opened:
        await client.aclose()


def new_job(job_id: str) -> NewJob:
    spec = JobSpec(KIND_BATCH, "flux-dev", None, [TaskRequest(0, "a cat", None, {"prompt": "x"})])
    return NewJob(
        job_id=job_id,
        spec=spec,
        owner="fp",
        owner_digest="d" * 64,
        tier="admin",
        sealed_token=None,
        webhook=None,
    )


async def queued_ids(client: aioredis.Redis, store: JobStore) -> list[str]:
    entries: Any = await client.xrange(store.queue)
    return [values[b"job"].decode() for _, values in entries]


async def test_a_submission_cut_at_any_command_leaves_its_retry_a_runnable_job(
    redis_url: str, clients: list[aioredis.Redis]
) -> None:
    survive = 0
    while True:
        await (check := aioredis.Redis.from_url(redis_url)).flushall()
        clients.append(check)
        dying = Dying.from_url(redis_url)
        dying.survive = survive
        clients.append(dying)
        idempotency = ("order-1", "digest-1")
        try:
            await JobStore(dying, "rcg", retention_s=60).create(
                new_job(f"first{survive:027d}"), idempotency=idempotency
            )
            completed = True
        except (ServiceError, RedisConnectionError):
            completed = False
        # The caller saw an error (or its answer was lost with the replica): it retries.
        store = JobStore(check, "rcg", retention_s=60)
        job_id, _ = await store.create(new_job(f"retry{survive:027d}"), idempotency=idempotency)
        record = await store.read(job_id)
        assert record is not None and record.status == "queued", survive
        assert await queued_ids(check, store) == [job_id], (
            f"died after {survive} commands: job {job_id} is not in the queue once"
        )
        assert await store.recent(10) == [job_id], survive
        if completed:
            break
        survive += 1
    assert survive >= 2  # the submission was cut between its steps at least once
