"""POST /generate and POST /generate-batch: decode → authenticate → validate → generate → the
seed's shape.

Authentication comes as early as the body allows: the user-tier token is inside it, so the JSON
is decoded first, then the caller authenticated, and only then the model input validated. An
anonymous body is refused (401) without being validated in depth.

The generation runs in its own task, watched by the route: when the caller hangs up (checked
every few hundred ms, service/api/watch.py), the task is cancelled, which cancels the Replicate
prediction and releases every slot (see service.generation). The task is also registered with
the lifespan, so a shutdown cancels and awaits it before the coordinator closes.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from service.api import Services, services
from service.api.body import MAX_JSON_VALUES, max_json_values, read_json
from service.api.responses import SafeJSONResponse
from service.api.watch import until_disconnected
from service.auth import ADMIN_HEADER, Caller, authenticate
from service.errors import Unavailable
from service.generation import GeneratedFile, TaskOutcome
from service.schemas import parse_batch_async, parse_generate, request_token
from service.schemas.job_responses import Job
from service.schemas.openapi import ADMIN_OR_CREDENTIALS, errors, operation
from service.schemas.responses import BatchResponse, GenerateResponse

router = APIRouter()

_HANG_UP = "Client closed the request; the generation was cancelled"


async def read_and_authenticate(
    request: Request, found: Services, *, batch: bool
) -> tuple[Any, Caller]:
    """A generation body's first two steps, in this order: its JSON (bounded; a batch's value
    budget grows with MAX_BATCH_TASKS), then who is calling (the user tier's token is inside
    the body) — before any of the model's parameters is looked at."""
    settings = found.settings
    max_values = max_json_values(settings.max_batch_tasks) if batch else MAX_JSON_VALUES
    body = await read_json(request, settings.max_body_bytes, max_values=max_values)
    caller = await authenticate(
        settings,
        found.upstream,
        admin_key=request.headers.get(ADMIN_HEADER),
        token=request_token(body),
    )
    return body, caller


@router.post(
    "/generate",
    operation_id="generate",
    tags=["generation"],
    summary="Generate images from one prompt",
    response_model=GenerateResponse,
    responses=errors(400, 401, 404, 413, 415, 429, 502, 503),
    openapi_extra=operation(body="GenerateRequest", auth=ADMIN_OR_CREDENTIALS),
)
async def generate(request: Request) -> JSONResponse:
    found = services(request)
    body, caller = await read_and_authenticate(request, found, batch=False)
    parsed = parse_generate(body)
    outcome = await until_disconnected(
        request, found, found.generator.generate(caller, parsed), message=_HANG_UP
    )
    return SafeJSONResponse(  # the prediction is paid for: this answer must go out
        {
            "success": True,
            "model_name": parsed.model_name,
            "prompt": outcome.prompt,
            "output_filename": outcome.output_filename,
            "generated_files": _files(outcome.files),
            "count": len(outcome.files),
            "external_semaphore_used": parsed.external_semaphore_id is not None,
            "semaphore_id": parsed.external_semaphore_id,
            "prediction_id": outcome.prediction_id,
        }
    )


@router.post(
    "/generate-batch",
    operation_id="generate_batch",
    tags=["generation"],
    summary="Generate a batch of tasks concurrently (results in input order)",
    response_model=BatchResponse,
    responses={
        202: {
            "model": Job,
            "description": "With `Prefer: respond-async`: queued as a durable job, as POST "
            "/jobs answers (then also `Idempotency-Key`, 409 and 422 as there)",
            "headers": {"Location": {"description": "/jobs/{id}", "schema": {"type": "string"}}},
        },
        **errors(400, 401, 404, 409, 413, 415, 422, 503),
    },
    openapi_extra={
        **operation(body="BatchRequest", auth=ADMIN_OR_CREDENTIALS),
        "parameters": [
            {
                "name": "Prefer",
                "in": "header",
                "required": False,
                "description": "`respond-async` (RFC 7240): answer 202 at once with a durable "
                "job (POST /jobs) instead of waiting for the batch",
                "schema": {"type": "string"},
                "example": "respond-async",
            }
        ],
    },
)
async def generate_batch(request: Request) -> JSONResponse:
    from service.api import jobs  # Prefer: respond-async (RFC 7240) → a durable job, 202

    if jobs.prefers_async(request):
        return await jobs.submit(request, batch=True)
    found = services(request)
    settings = found.settings
    body, caller = await read_and_authenticate(request, found, batch=True)
    parsed = await parse_batch_async(body, max_tasks=settings.max_batch_tasks)
    # Fail the whole batch fast (503) rather than answer 200 with every task failed.
    if not await found.coordinator.ping():
        raise Unavailable(
            "Coordination store (Redis) is unreachable; no generation can start until it is back",
            headers={"Retry-After": "5"},
        )
    outcomes = await until_disconnected(
        request, found, found.generator.generate_batch(caller, parsed), message=_HANG_UP
    )
    results = [_result(outcome) for outcome in outcomes]
    succeeded = [r for r in results if r["status"] == "succeeded"]
    failed = [r for r in results if r["status"] == "failed"]
    return SafeJSONResponse(
        {
            "success": not failed,
            "model_name": parsed.model_name,
            "total_tasks": len(results),
            "successful_count": len(succeeded),
            "failed_count": len(failed),
            "successful_results": succeeded,
            "failed_results": failed,
            "results": results,
            "external_semaphore_used": parsed.external_semaphore_id is not None,
            "semaphore_id": parsed.external_semaphore_id,
        }
    )


def _files(files: list[GeneratedFile]) -> list[dict[str, Any]]:
    return [{"url": f.url, "filename": f.filename, "expires_at": f.expires_at} for f in files]


def _result(outcome: TaskOutcome) -> dict[str, Any]:
    if outcome.error is None:
        return {
            "task_index": outcome.index,
            "prompt": outcome.prompt,
            "output_filename": outcome.output_filename,
            "generated_files": _files(outcome.files),
            "count": len(outcome.files),
            "prediction_id": outcome.prediction_id,
            "status": "succeeded",
        }
    error = outcome.error
    entry: dict[str, Any] = {
        "task_index": outcome.index,
        "prompt": outcome.prompt,
        "output_filename": outcome.output_filename,
        "status": "failed",
        "error": error.message,
        "error_status": error.status_code,
    }
    for key, value in error.fields.items():
        if key == "status":  # the prediction's own status (failed / canceled / aborted)
            entry["prediction_status"] = value
        elif key not in entry:
            entry[key] = value
    return entry
