"""Every job key in Redis, and every operation on them (docs/redis-keys.md, "Durable jobs").

    rcg:{job:<id>}:job       hash    the job: status, owner, spec, fence epoch, timestamps (ms)
    rcg:{job:<id>}:tasks     hash    task index → TaskState JSON
    rcg:{job:<id>}:events    stream  one entry per state change (GET /jobs/{id}/events)
    rcg:{job:<id>}:hooks     hash    webhook delivery id → its attempts (shown on the job)
    rcg:{jobs}:queue         stream  one entry per job to run; consumer group `runners`
    rcg:{jobs}:index         zset    job id → created ms (operators' listing)
    rcg:{jobs}:idem:<owner>:<key>    string  "<job id> <body digest>" for an Idempotency-Key, 24 h

Every key of one job shares the hash tag `{job:<id>}`, so each script touches one cluster slot;
every job key has the TTL JOB_RETENTION_SECONDS, pushed back on every write: a job lives that
long after its last change. Writes that change a job are Lua scripts (service/jobs/lua/), fenced
by the job's epoch: a runner that lost the job (another replica took it over) can write nothing.

Execution queue: XADD on create; a runner XREADGROUPs new entries, renews its entries' idle
time (renew_entry.lua) while it runs them, XACK + XDEL when the job ends; another runner
XAUTOCLAIMs entries idle longer than JOB_CLAIM_IDLE_SECONDS (their runner died).

Creating a job is two scripts, in this order (`JobStore.create` says why not one):

    create_job.lua    {job:<id>}  the job, its tasks and first event: written, but its id is
                                  known to this process alone, so nobody can see it yet
    enqueue_job.lua   {jobs}      the Idempotency-Key's decision, the queue entry and the
                                  listing line, at once: from here the job exists for everyone
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from service.coordination import CoordinationUnavailable, LuaScript, guarded
from service.coordination_errors import JOBS, unavailable
from service.errors import ServiceError
from service.jobs.models import JobSpec, TaskState, Webhook

T = TypeVar("T")

GROUP = "runners"
IDEMPOTENCY_TTL_S = 24 * 3600
LUA_DIR = Path(__file__).resolve().parent / "lua"
SCRIPT_NAMES = (
    "create_job",
    "take_job",
    "update_task",
    "finish_job",
    "cancel_job",
    "renew_entry",
    "enqueue_job",
)


class IdempotencyMismatch(ServiceError):
    """The same Idempotency-Key came with another body (IETF httpapi-idempotency-key: 422)."""

    status_code = 422


@cache
def _lua(name: str) -> str:
    return (LUA_DIR / f"{name}.lua").read_text()


@dataclass(frozen=True)
class JobKeys:
    job: str
    tasks: str
    events: str
    hooks: str

    @property
    def scripted(self) -> list[str]:
        return [self.job, self.tasks, self.events]


@dataclass
class JobRecord:
    """A job as read from Redis (one HGETALL of the job, one of its tasks)."""

    id: str
    fields: dict[str, str]
    spec: JobSpec
    tasks: dict[int, TaskState] = field(default_factory=dict)

    @property
    def status(self) -> str:
        return self.fields.get("status", "")

    @property
    def webhook(self) -> Webhook | None:
        raw = self.fields.get("webhook")
        return Webhook.from_json(raw) if raw else None

    def get(self, name: str) -> str | None:
        return self.fields.get(name)


@dataclass(frozen=True)
class Taken:
    """take_job's answer: 'gone', 'finished' or 'taken' (then `epoch` fences this runner)."""

    outcome: str
    status: str = ""
    epoch: int = 0
    cancel: bool = False


@dataclass(frozen=True)
class NewJob:
    job_id: str
    spec: JobSpec
    owner: str  # account fingerprint (shown to operators)
    owner_digest: str  # full-length digest of the token, compared on reads
    tier: str
    sealed_token: str | None
    webhook: Webhook | None


async def _call(operation: Awaitable[T]) -> T:
    """A Redis call; unreachable → 503 (nothing about a job can be known or changed)."""
    try:
        return await guarded(operation)
    except CoordinationUnavailable as exc:
        raise unavailable(exc, JOBS) from exc


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class JobStore:
    def __init__(self, client: aioredis.Redis, prefix: str, *, retention_s: float) -> None:
        self.client = client
        self.prefix = prefix
        self.retention_ms = int(retention_s * 1000)
        self.queue = f"{prefix}:{{jobs}}:queue"
        self.index = f"{prefix}:{{jobs}}:index"
        self._scripts = {name: LuaScript(_lua(name)) for name in SCRIPT_NAMES}

    def keys(self, job_id: str) -> JobKeys:
        base = f"{self.prefix}:{{job:{job_id}}}"
        return JobKeys(f"{base}:job", f"{base}:tasks", f"{base}:events", f"{base}:hooks")

    def idempotency_key(self, owner_digest: str, key: str) -> str:
        """Under the queue's hash tag: enqueue_job.lua decides and queues in one call."""
        digest = hashlib.sha256(key.encode()).hexdigest()[:32]
        return f"{self.prefix}:{{jobs}}:idem:{owner_digest[:32]}:{digest}"

    async def _script(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        return await _call(self._scripts[name](self.client, keys, args))

    @staticmethod
    def events_max(task_count: int) -> int:
        return 8 * task_count + 64

    # -- creating -----------------------------------------------------------------------------

    async def ensure_group(self) -> None:
        try:
            await _call(self.client.xgroup_create(self.queue, GROUP, id="0", mkstream=True))
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def create(
        self, job: NewJob, *, idempotency: tuple[str, str] | None = None
    ) -> tuple[str, bool]:
        """Write the job and queue it; (job id, True). With `idempotency` (key, body digest),
        the key's earlier job instead: (its id, False), or IdempotencyMismatch for another body.

        Crash-safe without a recovery sweep. A job is made visible (queued, listed, named by
        its Idempotency-Key) by one script, enqueue_job.lua, which does all three or nothing;
        the job's own keys are written before it, under the job's hash tag, and nobody knows
        their id until that script has run. A replica that dies between the two leaves a job
        no one can name, which expires with JOB_RETENTION_SECONDS; the caller, who got no
        answer, retries, and the retry queues a job of its own (the key was never taken). One
        that dies after it leaves a queued job: a retry with the key answers that job.

        Not one script for all of it: in Redis Cluster a script's keys must share one slot,
        and the queue is one stream (one slot) that every runner reads, so the job's keys would
        have to share the queue's hash tag, which puts every job (and the events streams that
        SSE clients poll) on a single node. Nor a sweep that re-enqueues jobs left `queued`
        without an entry: it would scan every job, and a job would wait for the sweep."""
        keys = self.keys(job.job_id)
        fields: list[Any] = [
            "id",
            job.job_id,
            "kind",
            job.spec.kind,
            "model_name",
            job.spec.model_name,
            "semaphore_id",
            job.spec.semaphore_id or "",
            "owner",
            job.owner,
            "owner_digest",
            job.owner_digest,
            "tier",
            job.tier,
            "total_tasks",
            len(job.spec.tasks),
            "spec",
            job.spec.to_json(),
        ]
        if job.sealed_token:
            fields += ["sealed_token", job.sealed_token]
        if job.webhook is not None:
            fields += ["webhook", job.webhook.to_json()]
        created_ms = int(
            await self._script(
                "create_job",
                keys.scripted,
                [
                    self.retention_ms,
                    self.events_max(len(job.spec.tasks)),
                    len(job.spec.tasks),
                    TaskState().to_json(),
                    *fields,
                ],
            )
        )
        # Listing only: drop members whose jobs expired long ago.
        trim_ms = created_ms - self.retention_ms - 86_400_000
        queue_keys = [self.queue, self.index]
        args: list[Any] = [job.job_id, created_ms, trim_ms]
        if idempotency is not None:
            key, digest = idempotency
            queue_keys.append(self.idempotency_key(job.owner_digest, key))
            args += [f"{job.job_id} {digest}", IDEMPOTENCY_TTL_S]
        reply = await self._script("enqueue_job", queue_keys, args)
        if int(reply[0]) == 0:
            with contextlib.suppress(ServiceError):  # never queued: nobody saw it; else expires
                await _call(self.client.delete(*keys.scripted))
            assert idempotency is not None
            winner, _, winner_digest = _text(reply[1]).partition(" ")
            if winner_digest != idempotency[1]:
                key = idempotency[0]
                raise IdempotencyMismatch(
                    f"Idempotency-Key '{key[:200]}' was already used with a different "
                    "request body; use a new key for a new request",
                    fields={"idempotency_key": key[:200]},
                )
            return winner, False
        # For the queue position and a cancel of the queued job; the job is queued either way
        # (without it, its runner still finds a canceled job ended: take_job.lua).
        with contextlib.suppress(ServiceError):
            await _call(self.client.hset(keys.job, "entry", _text(reply[1])))
        return job.job_id, True

    # -- reading ------------------------------------------------------------------------------

    async def read(self, job_id: str) -> JobRecord | None:
        keys = self.keys(job_id)
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(keys.job)
        pipe.hgetall(keys.tasks)
        raw_job, raw_tasks = await _call(pipe.execute())
        if not raw_job or b"spec" not in raw_job:
            return None
        fields = {_text(k): _text(v) for k, v in raw_job.items()}
        record = JobRecord(job_id, fields, JobSpec.from_json(fields["spec"]))
        record.tasks = {int(_text(k)): TaskState.from_json(v) for k, v in raw_tasks.items()}
        return record

    async def status(self, job_id: str) -> str | None:
        value = await _call(self.client.hget(self.keys(job_id).job, "status"))
        return _text(value) if value is not None else None

    async def taken_over(self, job_id: str, epoch: int) -> bool:
        """Whether another runner has taken the job over since this one took it at `epoch`."""
        value = await _call(self.client.hget(self.keys(job_id).job, "epoch"))
        return value is not None and int(value) != epoch

    async def cancel_requested(self, job_id: str) -> bool:
        value = await _call(self.client.hget(self.keys(job_id).job, "cancel"))
        return value is not None and _text(value) == "1"

    async def queue_position(self, entry: str) -> int | None:
        """1 for the next job a runner will read; None when already read (or unknown)."""
        groups = await _call(self.client.xinfo_groups(self.queue))
        last = next(
            (_text(g["last-delivered-id"]) for g in groups if _text(g["name"]) == GROUP), "0-0"
        )
        if _stream_id(entry) <= _stream_id(last):
            return None
        ahead: Any = await _call(self.client.xrange(self.queue, f"({last}", entry, count=10_001))
        return len(ahead)

    async def recent(self, limit: int) -> list[str]:
        """The newest job ids (operators)."""
        ids = await _call(self.client.zrevrange(self.index, 0, max(0, limit - 1)))
        return [_text(i) for i in ids]

    async def statuses(self, job_ids: Sequence[str]) -> list[str | None]:
        pipe = self.client.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hget(self.keys(job_id).job, "status")
        found = await _call(pipe.execute())
        return [_text(v) if v is not None else None for v in found]

    async def events(
        self, job_id: str, after: str, *, block_ms: int | None = None, count: int = 500
    ) -> list[tuple[str, dict[str, Any]]]:
        """Events after stream id `after` ("0" for all), waiting up to `block_ms` for one."""
        key = self.keys(job_id).events
        found: Any
        if block_ms is None:
            found = await _call(self.client.xrange(key, f"({after}", "+", count=count))
        else:
            reply: Any = await _call(self.client.xread({key: after}, count=count, block=block_ms))
            found = reply[0][1] if reply else []
        return [(_text(eid), json.loads(_text(values[b"data"]))) for eid, values in found]

    # -- running ------------------------------------------------------------------------------

    async def take(self, job_id: str, consumer: str) -> Taken:
        keys = self.keys(job_id)
        reply = await self._script(
            "take_job",
            keys.scripted,
            [consumer, self.retention_ms, self.events_max(10_000)],
        )
        code = int(reply[0])
        if code == 0:
            return Taken("gone")
        if code == 1:
            return Taken("finished", _text(reply[1]))
        return Taken("taken", _text(reply[1]), int(reply[2]), int(reply[3]) == 1)

    async def update_task(
        self,
        job_id: str,
        epoch: int,
        index: int,
        state: TaskState,
        event: dict[str, Any] | None,
        task_count: int,
    ) -> bool:
        data = json.dumps(event, separators=(",", ":"), ensure_ascii=True) if event else ""
        written = await self._script(
            "update_task",
            self.keys(job_id).scripted,
            [
                epoch,
                index,
                state.to_json(),
                data,
                self.retention_ms,
                self.events_max(task_count),
            ],
        )
        return int(written) == 1

    async def finish(
        self, job_id: str, epoch: int, status: str, error: str | None, task_count: int
    ) -> bool:
        done = await self._script(
            "finish_job",
            self.keys(job_id).scripted,
            [epoch, status, error or "", self.retention_ms, self.events_max(task_count)],
        )
        return int(done) != 0

    async def cancel(self, job_id: str) -> tuple[str, str]:
        """('gone', ''), ('finished', status) or ('accepted', status now)."""
        reply = await self._script(
            "cancel_job", self.keys(job_id).scripted, [self.retention_ms, self.events_max(10_000)]
        )
        code = int(reply[0])
        if code == 0:
            return "gone", ""
        return ("finished" if code == 1 else "accepted"), _text(reply[1])

    # -- the queue ------------------------------------------------------------------------------

    async def read_new(self, consumer: str, *, count: int, block_ms: int) -> list[tuple[str, str]]:
        reply: Any = await _call(
            self.client.xreadgroup(GROUP, consumer, {self.queue: ">"}, count=count, block=block_ms)
        )
        if not reply:
            return []
        return _entries(reply[0][1])

    async def claim_idle(
        self, consumer: str, *, min_idle_ms: int, count: int
    ) -> list[tuple[str, str]]:
        """Entries whose runner has been silent for `min_idle_ms` become this consumer's."""
        reply: Any = await _call(
            self.client.xautoclaim(
                self.queue, GROUP, consumer, min_idle_time=min_idle_ms, start_id="0-0", count=count
            )
        )
        return _entries(reply[1])

    async def renew(self, consumer: str, entry: str) -> bool:
        return int(await self._script("renew_entry", [self.queue], [GROUP, consumer, entry])) == 1

    async def done(self, entry: str) -> None:
        pipe = self.client.pipeline(transaction=False)
        pipe.xack(self.queue, GROUP, entry)
        pipe.xdel(self.queue, entry)
        await _call(pipe.execute())

    async def drop_entry(self, entry: str) -> None:
        """A queued job canceled before any runner read it leaves the queue."""
        await _call(self.client.xdel(self.queue, entry))


def _entries(raw: Any) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    for item in raw or []:
        if not item:
            continue
        entry_id, values = item
        if not values:  # deleted meanwhile
            continue
        job = values.get(b"job")
        if job is not None:
            found.append((_text(entry_id), _text(job)))
    return found


def _stream_id(text: str) -> tuple[int, int]:
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


__all__ = ["GROUP", "IdempotencyMismatch", "JobRecord", "JobStore", "NewJob", "Taken"]
