"""Response models: what each endpoint answers, for the OpenAPI document (/docs, /redoc).

The routes build their answers as plain JSON (a generation's answer must go out even with an
odd character in it: service.api.responses), so these models describe the answers; they do not
produce them. tests/api/test_openapi_schemathesis.py checks, against the running app, that every
answer matches its model, so a route that changes its answer without its model fails there.

Models are open (extra fields allowed): a client may rely on the fields listed, and a field added
later breaks no client. A field shown as optional is left out when it does not apply, never null,
unless its type says null.

    ErrorResponse       every 4xx/5xx: {"error": "...", ...fields that apply}
    GenerateResponse    POST /generate
    BatchResponse       POST /generate-batch (BatchSucceeded / BatchFailed entries)
    Semaphore*          /global-semaphores
    Lease*              /global-semaphores/{id}/leases
    Health, Probe*      /health, /livez, /readyz
    DashboardData       GET /dashboard/data
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema

_OPEN = ConfigDict(extra="allow")


def _examples(*examples: dict[str, Any]) -> ConfigDict:
    return ConfigDict(extra="allow", json_schema_extra={"examples": list(examples)})


# -- errors ------------------------------------------------------------------------------------


class ErrorDetail(BaseModel):
    """One problem of a rejected body: the field (a path such as `tasks[2].guidance`) and the
    rule it broke."""

    model_config = _OPEN

    field: str
    rule: str


class ErrorResponse(BaseModel):
    """The error envelope of every 4xx and 5xx answer: `error` says what is wrong and how to fix
    it (naming the field and the rule); the other fields appear when they apply. A limit error
    (429) also sets the `Retry-After` and `X-Limit-Scope` headers."""

    model_config = _examples(
        {"error": "Invalid admin API key"},
        {
            "error": "Unknown parameter 'guidence' (not a parameter of flux-dev; did you mean "
            "'guidance'?)",
            "details": [{"field": "guidence", "rule": "not a parameter of flux-dev"}],
        },
        {
            "error": "Timed out after 300.0s waiting for a slot of semaphore "
            "'image-generation-global' (limit 5); retry after 3s",
            "limit_scope": "semaphore",
            "limit_id": "image-generation-global",
            "retry_after": 3,
        },
    )

    error: str = Field(description="What went wrong, naming the field or limit and the rule")
    details: list[ErrorDetail] | SkipJsonSchema[None] = Field(
        None, description="400: every problem found (the first 50), as {field, rule}"
    )
    supported_models: list[str] | SkipJsonSchema[None] = Field(
        None, description="400 for a missing or unknown model_name: the models this service runs"
    )
    limit_scope: str | SkipJsonSchema[None] = Field(
        None,
        description="429: which limit stayed full (`semaphore`, `account_concurrency`, "
        "`account_rate`, `upstream`); also the `X-Limit-Scope` header",
    )
    limit_id: str | SkipJsonSchema[None] = Field(
        None, description="429: the semaphore id, or the account's fingerprint"
    )
    retry_after: int | SkipJsonSchema[None] = Field(
        None, description="429: seconds to wait before retrying; also the `Retry-After` header"
    )
    semaphore_id: str | SkipJsonSchema[None] = None
    declared_limit: int | SkipJsonSchema[None] = Field(
        None, description="409: the limit GLOBAL_SEMAPHORES declares for this semaphore"
    )
    max_batch_tasks: int | SkipJsonSchema[None] = None
    prediction_id: str | SkipJsonSchema[None] = Field(
        None, description="502: the Replicate prediction that failed"
    )
    status: str | SkipJsonSchema[None] = Field(
        None, description="502: the prediction's final status (failed, canceled, aborted)"
    )
    request_id: str | SkipJsonSchema[None] = Field(
        None, description="500 and shutdown 503: the request id to quote (as X-Request-ID)"
    )


# -- generation --------------------------------------------------------------------------------

_FILE_EXAMPLE = {
    "url": "https://replicate.delivery/xezq/JnAq6ke6EGzvTiO6eXs7OtbZINX7vCPDdd7c4xtWWr8/out-0.webp",
    "filename": "mountain_sunset.webp",
    "expires_at": "2026-11-26T16:10:29Z",
}


class GeneratedFile(BaseModel):
    """One output: Replicate's URL (deleted by Replicate after one hour: copy what you keep) and
    a safe file name to save it under."""

    model_config = _examples(_FILE_EXAMPLE)

    url: str
    filename: str
    expires_at: str | None = Field(
        description="When Replicate deletes the file (ISO 8601 UTC), if known"
    )


class GenerateResponse(BaseModel):
    """POST /generate: the seed's fields, plus `prediction_id` and each file's `expires_at`."""

    model_config = _examples(
        {
            "success": True,
            "model_name": "flux-dev",
            "prompt": "A serene mountain landscape at sunset",
            "output_filename": "mountain_sunset",
            "generated_files": [_FILE_EXAMPLE],
            "count": 1,
            "external_semaphore_used": True,
            "semaphore_id": "image-generation-global",
            "prediction_id": "gm3qorzdhgbfurvjtvhg6dckhu",
        }
    )

    success: Literal[True]
    model_name: str
    prompt: str
    output_filename: str | None = Field(description="As sent (null when none was given)")
    generated_files: list[GeneratedFile]
    count: int = Field(description="len(generated_files)")
    external_semaphore_used: bool
    semaphore_id: str | None
    prediction_id: str


class BatchSucceeded(BaseModel):
    """A task that succeeded (also listed in `successful_results`)."""

    model_config = _OPEN

    task_index: int = Field(description="The task's position in `tasks` (or `prompts`)")
    status: Literal["succeeded"]
    prompt: str
    output_filename: str | None
    generated_files: list[GeneratedFile]
    count: int
    prediction_id: str


class BatchFailed(BaseModel):
    """A task that failed (also listed in `failed_results`); it never fails its siblings. Carries
    the error's own fields (`limit_scope`, `retry_after`, `prediction_id`, ...) beside these."""

    model_config = _OPEN

    task_index: int
    status: Literal["failed"]
    prompt: str
    output_filename: str | None
    error: str = Field(description="The error, as the task alone would have answered it")
    error_status: int = Field(description="The HTTP status the task alone would have had")
    prediction_status: str | SkipJsonSchema[None] = Field(
        None, description="The prediction's final status, when it ran and failed"
    )


class BatchResponse(BaseModel):
    """POST /generate-batch: the seed's fields, plus `results` (every task, in input order)."""

    model_config = _examples(
        {
            "success": True,
            "model_name": "flux-dev",
            "total_tasks": 1,
            "successful_count": 1,
            "failed_count": 0,
            "successful_results": [
                {
                    "task_index": 0,
                    "status": "succeeded",
                    "prompt": "A red sports car",
                    "output_filename": "red_car.jpg",
                    "generated_files": [{**_FILE_EXAMPLE, "filename": "red_car.jpg"}],
                    "count": 1,
                    "prediction_id": "gm3qorzdhgbfurvjtvhg6dckhu",
                }
            ],
            "failed_results": [],
            "results": [
                {
                    "task_index": 0,
                    "status": "succeeded",
                    "prompt": "A red sports car",
                    "output_filename": "red_car.jpg",
                    "generated_files": [{**_FILE_EXAMPLE, "filename": "red_car.jpg"}],
                    "count": 1,
                    "prediction_id": "gm3qorzdhgbfurvjtvhg6dckhu",
                }
            ],
            "external_semaphore_used": False,
            "semaphore_id": None,
        }
    )

    success: bool = Field(description="True when no task failed")
    model_name: str
    total_tasks: int
    successful_count: int
    failed_count: int
    successful_results: list[BatchSucceeded]
    failed_results: list[BatchFailed]
    results: list[BatchSucceeded | BatchFailed] = Field(
        description="One entry per task, in input order"
    )
    external_semaphore_used: bool
    semaphore_id: str | None


# -- semaphores and leases ---------------------------------------------------------------------


class SemaphoreList(BaseModel):
    model_config = _examples(
        {"count": 2, "global_semaphores": ["image-generation-global", "cross-service-limit"]}
    )

    count: int
    global_semaphores: list[str]


class SemaphoreCreated(BaseModel):
    model_config = _examples(
        {"success": True, "semaphore_id": "image-generation-global", "limit": 20}
    )

    success: Literal[True]
    semaphore_id: str
    limit: int


class SemaphoreHolder(BaseModel):
    """A slot in use. Without the admin key, `lease_id` and `prediction_id` are cut to their
    first 8 characters."""

    model_config = _OPEN

    lease_id: str
    replica: str = Field(description="Who holds it: a replica id, or a lease client's name")
    purpose: str
    prediction_id: str | None
    expires_in_s: float
    state: Literal["held", "orphaned", "adopted"] = Field(
        description="`orphaned`: its replica stopped renewing while its prediction may run; "
        "`adopted`: another replica is settling it (docs/slot-ownership.md)"
    )
    adopted_by: str | None


class SemaphoreWaiter(BaseModel):
    model_config = _OPEN

    position: int
    replica: str
    waiting_since: str | None = Field(
        description="When the wait began, ISO-8601 UTC (by the waiting replica's clock)"
    )
    expires_in_s: float


class SemaphoreDetail(BaseModel):
    """GET /global-semaphores/{semaphore_id}."""

    model_config = _examples(
        {
            "semaphore_id": "image-generation-global",
            "limit": 2,
            "in_use": 1,
            "waiting": 0,
            "orphans": 0,
            "holders": [
                {
                    "lease_id": "3f2a9c1e",
                    "replica": "api-1",
                    "purpose": "generate flux-dev",
                    "prediction_id": "gm3qorzd",
                    "expires_in_s": 21.4,
                    "state": "held",
                    "adopted_by": None,
                }
            ],
            "waiters": [],
            "counters": {"acquired": 12, "expired": 0},
        }
    )

    semaphore_id: str
    limit: int
    in_use: int
    waiting: int
    orphans: int = Field(description="Slots whose holder vanished, still counted until settled")
    holders: list[SemaphoreHolder]
    waiters: list[SemaphoreWaiter]
    counters: dict[str, int]


class SemaphoreLimitChanged(BaseModel):
    model_config = _examples(
        {"semaphore_id": "image-generation-global", "limit": 30, "previous_limit": 20}
    )

    semaphore_id: str
    limit: int
    previous_limit: int


class SemaphoreDeleted(BaseModel):
    model_config = _examples({"success": True, "semaphore_id": "image-generation-global"})

    success: Literal[True]
    semaphore_id: str


class LeaseGranted(BaseModel):
    """A lease: renew it (PUT) every `ttl_s`/3 or so, release it (DELETE) when done."""

    model_config = _examples(
        {
            "lease_id": "Jm3c0Q0t1Yy4hD9d3F8s2w",
            "semaphore_id": "image-generation-global",
            "expires_at": "2026-11-26T15:10:59.120Z",
            "ttl_s": 30.0,
        }
    )

    lease_id: str
    semaphore_id: str
    expires_at: str = Field(description="ISO 8601 UTC, from Redis' clock")
    ttl_s: float


class LeaseReleased(BaseModel):
    model_config = _examples({"released": True})

    released: bool = Field(description="False when the lease was already gone (idempotent)")


# -- health and probes -------------------------------------------------------------------------


class ConcurrencyStatus(BaseModel):
    model_config = _OPEN

    concurrent_limit: int
    requests_per_minute_limit: int


class RedisStatus(BaseModel):
    model_config = _OPEN

    reachable: bool


class Health(BaseModel):
    """GET /health: the seed's fields, plus `redis` and `replica_id`."""

    model_config = _examples(
        {
            "status": "healthy",
            "service": "replicate-concurrent-generation",
            "version": "4.1 (Redis leased semaphores + URL-direct-return)",
            "supported_models": ["flux-dev", "flux-kontext-max", "qwen-image"],
            "concurrency_status": {"concurrent_limit": 60, "requests_per_minute_limit": 600},
            "redis": {"reachable": True},
            "replica_id": "api-1",
        }
    )

    status: Literal["healthy", "degraded"]
    service: str
    version: str
    supported_models: list[str]
    concurrency_status: ConcurrencyStatus
    redis: RedisStatus
    replica_id: str


class ProbeAlive(BaseModel):
    model_config = _examples({"status": "alive"})

    status: Literal["alive"]


class ProbeReady(BaseModel):
    model_config = _examples({"status": "ready"})

    status: Literal["ready"]


class ProbeUnready(BaseModel):
    model_config = _examples({"status": "unready", "reason": "redis unreachable"})

    status: Literal["unready"]
    reason: Literal["starting", "draining", "redis unreachable"]


class DashboardData(BaseModel):
    """GET /dashboard/data, polled by the dashboard page. Ids are cut to a prefix."""

    model_config = _OPEN

    generated_at: str
    replica_id: str
    redis: RedisStatus
    semaphores: list[dict[str, Any]]
    truncated: bool
    jobs: dict[str, int] | None = None  # durable jobs by status (newest 5000, all replicas)


class DashboardHistory(BaseModel):
    """GET /dashboard/history: the last 15 minutes, merged over every replica (the dashboard's
    charts); with Redis unreachable, only `redis`."""

    model_config = _OPEN

    redis: RedisStatus
