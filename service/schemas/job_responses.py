"""Response models of the durable jobs' routes (service/api/jobs.py), for the OpenAPI document:
they describe the answers service.jobs.service.job_view builds (see service.schemas.responses
for the conventions: open models, a field left out when it does not apply, null only when its
type says so).

    Job                       POST /jobs (202), GET /jobs/{job_id}, POST /jobs/{job_id}/cancel,
                              POST /generate-batch with `Prefer: respond-async` (202)
    JobEvent                  each event of GET /jobs/{job_id}/events (text/event-stream)
    ReplicateWebhookReceived  POST /replicate/webhook
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema

from service.schemas.responses import GeneratedFile

JobStatus = Literal["queued", "running", "succeeded", "failed", "canceled"]

_OPEN = ConfigDict(extra="allow")


class JobTask(BaseModel):
    """One task of a job. A failed task carries its error's own fields (`limit_scope`,
    `retry_after`, ...) beside these, as /generate-batch's failed results do."""

    model_config = _OPEN

    index: int = Field(description="The task's position in `tasks` (0 for a /generate body)")
    status: JobStatus
    prediction_id: str | None = Field(description="Its Replicate prediction, once created")
    prompt: str | None
    output_filename: str | None
    files: list[GeneratedFile] = Field(description="Its outputs, once it succeeded")
    error: str | None = Field(description="Why it failed, as /generate would have answered")
    error_status: int | SkipJsonSchema[None] = Field(
        None, description="With `error`: the HTTP status /generate would have answered"
    )
    prediction_status: str | SkipJsonSchema[None] = Field(
        None, description="The prediction's final status, when it ran and failed"
    )


class JobCounts(BaseModel):
    """How many tasks are in each status."""

    model_config = _OPEN

    queued: int
    running: int
    succeeded: int
    failed: int
    canceled: int


class WebhookDelivery(BaseModel):
    """One webhook delivery and its attempts (`id` is the `webhook-id` of every attempt)."""

    model_config = _OPEN

    id: str
    event: str | None = Field(description="`completed`, or `task-<index>`")
    status: Literal["pending", "delivered", "failed"]
    attempts: int
    last_attempt_at: str | SkipJsonSchema[None] = None
    last_status: int | None = Field(
        None, description="The receiver's HTTP status (null: no answer, or not sent)"
    )
    last_error: str | SkipJsonSchema[None] = None
    next_attempt_at: str | SkipJsonSchema[None] = None


class JobWebhook(BaseModel):
    model_config = _OPEN

    url: str
    events: list[Literal["task", "completed"]]
    deliveries: list[WebhookDelivery] | SkipJsonSchema[None] = None


class Job(BaseModel):
    """A durable job: queued, run by any replica, readable from any replica until
    JOB_RETENTION_SECONDS after its last change."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "id": "x3kq7mfa2vbn6wz4hyc5tjrdspelqsgu",
                    "status": "running",
                    "kind": "batch",
                    "model_name": "flux-dev",
                    "external_semaphore_id": None,
                    "created_at": "2026-11-26T15:10:00.120Z",
                    "started_at": "2026-11-26T15:10:00.180Z",
                    "completed_at": None,
                    "queue_position": None,
                    "total_tasks": 2,
                    "counts": {
                        "queued": 0,
                        "running": 1,
                        "succeeded": 1,
                        "failed": 0,
                        "canceled": 0,
                    },
                    "error": None,
                    "tasks": [
                        {
                            "index": 0,
                            "status": "succeeded",
                            "prediction_id": "gm3qorzdhgbfurvjtvhg6dckhu",
                            "prompt": "A red sports car",
                            "output_filename": None,
                            "files": [
                                {
                                    "url": "https://replicate.delivery/xezq/abc/out-0.webp",
                                    "filename": "A_red_sports_car.webp",
                                    "expires_at": "2026-11-26T16:10:04Z",
                                }
                            ],
                            "error": None,
                        },
                        {
                            "index": 1,
                            "status": "running",
                            "prediction_id": "qz8d1vybkxrgc0cmx7ab3f9k2c",
                            "prompt": "A blue wave",
                            "output_filename": None,
                            "files": [],
                            "error": None,
                        },
                    ],
                }
            ]
        },
    )

    id: str = Field(description="32 characters, unguessable")
    status: JobStatus = Field(
        description="A batch with failed tasks is `succeeded`, with per-task errors"
    )
    kind: Literal["generate", "batch"]
    model_name: str
    external_semaphore_id: str | None
    created_at: str | None = Field(description="ISO 8601 UTC, from Redis' clock")
    started_at: str | None
    completed_at: str | None
    queue_position: int | None = Field(
        description="While queued: 1 for the next job a runner takes"
    )
    total_tasks: int
    counts: JobCounts
    error: str | None = Field(description="Why a `failed` job failed")
    tasks: list[JobTask]
    webhook: JobWebhook | SkipJsonSchema[None] = Field(
        None, description="When the job was submitted with one: where, and every delivery"
    )


class JobEvent(BaseModel):
    """One Server-Sent Event of GET /jobs/{job_id}/events, as a client's parser reads it."""

    model_config = _OPEN

    event: Literal["task", "job"] = Field(
        description="`task`: a task's state changed; `job`: the job's (the last one, with "
        '`"final": true` in its data, ends the stream)'
    )
    id: str = Field(
        pattern=r"^\d+-\d+$",
        description="Send it back as `Last-Event-ID` to resume, on any replica",
    )
    data: str = Field(
        description="JSON: a task's view (as in the job's `tasks`, plus `type`), or the job's "
        "`{type, status, at_ms, final}`",
        json_schema_extra={"contentMediaType": "application/json"},
    )


class ReplicateWebhookReceived(BaseModel):
    model_config = ConfigDict(
        extra="allow", json_schema_extra={"examples": [{"received": "gm3qorzdhgbfurvjtvhg6dckhu"}]}
    )

    received: str = Field(description="The prediction the webhook was about")


__all__ = [
    "Job",
    "JobCounts",
    "JobEvent",
    "JobTask",
    "JobWebhook",
    "ReplicateWebhookReceived",
    "WebhookDelivery",
]
