"""POST /generate and POST /generate-batch: parse → authenticate → generate → the seed's shape.

The generation runs in its own task, watched by the route: when the caller hangs up (checked
every WATCH_INTERVAL_S), the task is cancelled, which cancels the Replicate prediction and
releases every slot (see service.generation). The task is also registered with the lifespan,
so a shutdown cancels and awaits it before the coordinator closes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from service.api import Services, services
from service.api.body import ClientClosedRequest, read_json
from service.auth import ADMIN_HEADER, authenticate
from service.errors import Unavailable
from service.generation import GeneratedFile, TaskOutcome
from service.schemas import parse_batch, parse_generate

log = logging.getLogger("service.api.generate")

router = APIRouter()

WATCH_INTERVAL_S = 0.3
T = TypeVar("T")


@router.post("/generate")
async def generate(request: Request) -> JSONResponse:
    found = services(request)
    body = await read_json(request, found.settings.max_body_bytes)
    parsed = parse_generate(body)
    caller = await authenticate(
        found.settings,
        found.upstream,
        admin_key=request.headers.get(ADMIN_HEADER),
        token=parsed.replicate_api_token,
    )
    outcome = await _watched(request, found, found.generator.generate(caller, parsed))
    return JSONResponse(
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


@router.post("/generate-batch")
async def generate_batch(request: Request) -> JSONResponse:
    found = services(request)
    body = await read_json(request, found.settings.max_body_bytes)
    parsed = parse_batch(body, max_tasks=found.settings.max_batch_tasks)
    caller = await authenticate(
        found.settings,
        found.upstream,
        admin_key=request.headers.get(ADMIN_HEADER),
        token=parsed.replicate_api_token,
    )
    # Fail the whole batch fast (503) rather than answer 200 with every task failed.
    if not await found.coordinator.ping():
        raise Unavailable(
            "Coordination store (Redis) is unreachable; no generation can start until it is back",
            headers={"Retry-After": "5"},
        )
    outcomes = await _watched(request, found, found.generator.generate_batch(caller, parsed))
    results = [_result(outcome) for outcome in outcomes]
    succeeded = [r for r in results if r["status"] == "succeeded"]
    failed = [r for r in results if r["status"] == "failed"]
    return JSONResponse(
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


async def _watched(request: Request, found: Services, work: Coroutine[Any, Any, T]) -> T:
    """Run `work` in a task; cancel it when the caller disconnects or this route is cancelled."""
    task: asyncio.Task[T] = asyncio.create_task(work)
    found.inflight.add(task)
    task.add_done_callback(found.inflight.discard)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=WATCH_INTERVAL_S)
            if done:
                return task.result()
            if await request.is_disconnected():
                log.info("client disconnected: cancelling its generation")
                await _cancel(task)
                raise ClientClosedRequest("Client closed the request; the generation was cancelled")
    except asyncio.CancelledError:
        await _cancel(task)
        raise


async def _cancel(task: asyncio.Task[Any]) -> None:
    """Cancel and wait until the task has cleaned up (prediction cancelled, slots released).

    A second cancellation of the route does not cut that wait short (the cleanup is bounded by
    the generation's own cancel timeouts); it is re-raised once the task is done.
    """
    task.cancel()
    interrupted = False
    while not task.done():
        try:
            await asyncio.wait({task})
        except asyncio.CancelledError:
            interrupted = True
    if not task.cancelled():
        task.exception()  # retrieved: a failure during cancellation is not the caller's answer
    if interrupted:
        raise asyncio.CancelledError


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
