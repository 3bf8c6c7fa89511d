"""`Jobs`: what the API and the lifespan use — submit, read, cancel, and the runner's life."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from service.auth import Caller
from service.config import Settings
from service.coordination import Coordinator
from service.errors import BadRequest, Conflict, NotFound, ServiceError, Unavailable
from service.generation import Generator
from service.jobs.delivery import WebhookSender
from service.jobs.models import (
    CANCELED,
    JOB_STATUSES,
    QUEUED,
    TERMINAL,
    JobSpec,
    TaskState,
    Webhook,
    iso_ms,
    task_view,
)
from service.jobs.replicate_webhooks import ReplicateWebhooks
from service.jobs.runner import JobRunner
from service.jobs.store import JobRecord, JobStore, NewJob
from service.limits import PIN_MARGIN_S
from service.sealing import TokenSealer
from service.upstream import Upstream

log = logging.getLogger("service.jobs")

STATS_EVERY_S = 5.0
STATS_MAX_JOBS = 5000


def owner_digest(token: str) -> str:
    """Full-length, one-way name of a token: who may read a job (never the 64-bit fingerprint,
    which two tokens could share)."""
    return hashlib.sha256(b"rcg-job-owner:" + token.encode()).hexdigest()


def new_job_id() -> str:
    """160 random bits, base32 lowercase (32 characters): unguessable."""
    return base64.b32encode(secrets.token_bytes(20)).decode().lower()


def body_digest(body: dict[str, Any]) -> str:
    """What makes two submissions "the same request" for an Idempotency-Key: the body without
    its credentials (the caller is part of the key already), as canonical JSON."""
    kept = {k: v for k, v in body.items() if k != "credentials"}
    text = json.dumps(kept, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class Reader:
    """Who asks to read or cancel a job: the admin, or the holder of a token."""

    is_admin: bool = False
    token_digest: str | None = None
    anonymous_env: bool = False  # no credentials, and ALLOW_ENV_FALLBACK is on


class Jobs:
    def __init__(
        self,
        settings: Settings,
        coordinator: Coordinator,
        generator: Generator,
        upstream: Upstream,
    ) -> None:
        self.settings = settings
        retention_s = settings.job_retention_seconds
        self.store = JobStore(coordinator.redis, settings.redis_key_prefix, retention_s=retention_s)
        sealing_key = settings.token_sealing_key
        # A job may wait in the queue, then run: its sealed token must open for its whole life.
        self.sealer = TokenSealer(
            sealing_key.get_secret_value() if sealing_key else None,
            max_age_s=settings.job_retention_seconds
            + settings.prediction_timeout_seconds
            + PIN_MARGIN_S,
        )
        self.runner = JobRunner(self.store, generator, upstream, settings, self.sealer)
        secret = settings.webhook_secret
        self.webhooks = WebhookSender(
            coordinator.redis,
            settings.redis_key_prefix,
            secret=secret.get_secret_value() if secret else None,
            retry_s=settings.webhook_retry_seconds,
            allow_private=settings.webhook_allow_private,
            retention_ms=self.store.retention_ms,
        )
        self.runner.on_finished.append(self._job_finished)
        self.replicate = ReplicateWebhooks(coordinator, settings.redis_key_prefix, upstream)
        self.runner.on_task.append(self._task_finished)
        self.counts: dict[str, int] = dict.fromkeys(JOB_STATUSES, 0)
        self._stats: asyncio.Task[None] | None = None
        self.on_close: list[Callable[[], None]] = []

    async def start(self) -> None:
        self.runner.start()
        self.webhooks.start()
        self.replicate.start()
        self._stats = asyncio.create_task(self._count_forever(), name="job-stats")

    async def close(self) -> None:
        if self._stats is not None:
            self._stats.cancel()
            with contextlib.suppress(BaseException):
                await self._stats
        await self.runner.close()
        await self.webhooks.close()
        await self.replicate.close()
        for callback in self.on_close:
            callback()

    # -- submit ---------------------------------------------------------------------------

    async def submit(
        self,
        caller: Caller,
        spec: JobSpec,
        *,
        webhook: Webhook | None,
        idempotency: tuple[str, str] | None,
    ) -> tuple[dict[str, Any], bool]:
        """Queue a job; (its view, True), or the earlier job of the same Idempotency-Key."""
        if webhook is not None and not self.webhooks.enabled:
            raise BadRequest(
                "Invalid field 'webhook': this server has no WEBHOOK_SECRET to sign webhooks with"
            )
        sealed: str | None = None
        if caller.tier == "credentials":
            sealed = self.sealer.seal(caller.token)
            if sealed is None:
                raise Unavailable(
                    "Durable jobs with your own Replicate token need TOKEN_SEALING_KEY on the "
                    "server (the token is kept sealed until the job has run); use /generate or "
                    "/generate-batch instead"
                )
        job = NewJob(
            job_id=new_job_id(),
            spec=spec,
            owner=caller.account,
            owner_digest=owner_digest(caller.token),
            tier=caller.tier,
            sealed_token=sealed,
            webhook=webhook,
        )
        job_id, created = await self.store.create(job, idempotency=idempotency)
        # An Idempotency-Key names its job only once the job is written (JobStore.create).
        record = await self.store.read(job_id)
        if record is None:
            raise Conflict(
                "The job of this Idempotency-Key has expired (JOB_RETENTION_SECONDS); use a new "
                "key",
                fields={"job_id": job_id},
            )
        return await self.view(record), created

    # -- read and cancel ------------------------------------------------------------------

    async def get(self, job_id: str, reader: Reader) -> JobRecord:
        """The job, if it exists and this reader may see it; 404 otherwise (the same answer
        for a job that exists and one that does not: ids are not for probing)."""
        record = await self.store.read(job_id) if _plausible_id(job_id) else None
        if record is None or not _may_read(record, reader):
            raise NotFound(f"Job '{job_id[:64]}' not found")
        return record

    async def cancel(self, record: JobRecord) -> JobRecord:
        outcome, status = await self.store.cancel(record.id)
        if outcome == "gone":
            raise NotFound(f"Job '{record.id}' not found")
        if outcome == "accepted" and status == CANCELED:
            # A queued job, ended here rather than by a runner: its webhook is queued here,
            # and only then does its entry leave the queue. A replica that dies in between
            # leaves the entry, and the runner that reads it queues the webhook (JobRunner).
            with contextlib.suppress(ServiceError):
                await self._job_finished(record, CANCELED)
                entry = record.get("entry")
                if entry:
                    await self.store.drop_entry(entry)
        # The runner notices within CANCEL_POLL_S and cancels the predictions; wait a little
        # so the answer usually shows the job ended.
        current: JobRecord | None = record
        for _ in range(40):
            current = await self.store.read(record.id)
            if current is None:
                raise NotFound(f"Job '{record.id}' not found")
            if current.status in TERMINAL:
                break
            await asyncio.sleep(0.25)
        assert current is not None
        return current

    async def view(self, record: JobRecord) -> dict[str, Any]:
        position = None
        entry = record.get("entry")
        if record.status == QUEUED and entry:
            with contextlib.suppress(ServiceError):
                position = await self.store.queue_position(entry)
        view = job_view(record, position)
        if "webhook" in view:
            with contextlib.suppress(ServiceError):
                view["webhook"]["deliveries"] = await self.webhooks.attempts_of(record.id)
        return view

    # -- webhooks out ---------------------------------------------------------------------

    async def _job_finished(self, record: JobRecord, status: str) -> None:
        webhook = record.webhook
        if webhook is None:
            return
        fresh = await self.store.read(record.id) or record
        payload = {"type": "job.completed", "timestamp": _now_iso(), "data": job_view(fresh)}
        await self.webhooks.enqueue(record.id, "completed", webhook.url, payload)

    async def _task_finished(self, record: JobRecord, index: int, state: TaskState) -> None:
        webhook = record.webhook
        if webhook is None or "task" not in webhook.events:
            return
        request = next((t for t in record.spec.tasks if t.index == index), None)
        data = {"job_id": record.id, "task": task_view(index, state, request)}
        payload = {"type": "job.task", "timestamp": _now_iso(), "data": data}
        await self.webhooks.enqueue(record.id, f"task-{index}", webhook.url, payload)

    # -- operators ------------------------------------------------------------------------

    async def _count_forever(self) -> None:
        while True:
            with contextlib.suppress(ServiceError):
                self.counts = await self.count_by_status()
            await asyncio.sleep(STATS_EVERY_S)

    async def count_by_status(self) -> dict[str, int]:
        ids = await self.store.recent(STATS_MAX_JOBS)
        counts = dict.fromkeys(JOB_STATUSES, 0)
        for status in await self.store.statuses(ids):
            if status in counts:
                counts[status] += 1
        return counts


def job_view(record: JobRecord, position: int | None = None) -> dict[str, Any]:
    status = record.status
    tasks = []
    counts = dict.fromkeys(JOB_STATUSES, 0)
    for request in record.spec.tasks:
        state = record.tasks.get(request.index, TaskState())
        if status == CANCELED and not state.terminal:
            state = TaskState(status=CANCELED, prediction_id=state.prediction_id)
        counts[state.status] = counts.get(state.status, 0) + 1
        tasks.append(task_view(request.index, state, request))
    view: dict[str, Any] = {
        "id": record.id,
        "status": status,
        "kind": record.spec.kind,
        "model_name": record.spec.model_name,
        "external_semaphore_id": record.spec.semaphore_id,
        "created_at": iso_ms(record.get("created_ms")),
        "started_at": iso_ms(record.get("started_ms")),
        "completed_at": iso_ms(record.get("completed_ms")),
        "queue_position": position,
        "total_tasks": len(tasks),
        "counts": counts,
        "error": record.get("error"),
        "tasks": tasks,
    }
    webhook = record.webhook
    if webhook is not None:
        view["webhook"] = {"url": webhook.url, "events": list(webhook.events)}
    return view


def _now_iso() -> str:
    return datetime.now(tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _may_read(record: JobRecord, reader: Reader) -> bool:
    if reader.is_admin:
        return True
    if reader.token_digest is not None:
        return secrets.compare_digest(reader.token_digest, record.get("owner_digest") or "")
    return reader.anonymous_env and record.get("tier") == "environment"


def _plausible_id(job_id: str) -> bool:
    return len(job_id) == 32 and all(c in "abcdefghijklmnopqrstuvwxyz234567" for c in job_id)


__all__ = ["Jobs", "Reader", "body_digest", "job_view", "owner_digest"]
