"""Durable jobs: POST /jobs, GET /jobs/{id}, POST /jobs/{id}/cancel (service/jobs/).

    POST /jobs                  a /generate or /generate-batch body (+ optional `webhook`),
                                the same validation and auth tiers → 202, Location, the job
                                (`Idempotency-Key`: the same key, caller and body within 24 h
                                → the same job; another body → 422 naming the key)
    GET  /jobs/{id}             the job, from any replica
    GET  /jobs/{id}/events      Server-Sent Events: one per task state change, one when the
                                job ends (then the stream closes); ids are the job's event
                                stream ids, so `Last-Event-ID` resumes on any replica;
                                comment pings every SSE_PING_SECONDS keep proxies from timing out
    POST /jobs/{id}/cancel      cancels its pending tasks and running predictions

Reading and cancelling: the submitting account (`Authorization: Bearer <its Replicate token>`,
compared by a full-length digest) or the admin (`X-Admin-API-Key`). A job submitted through the
environment fallback is readable without credentials while ALLOW_ENV_FALLBACK is on. Any other
reader gets 404, as for an unknown id.

/generate-batch with `Prefer: respond-async` (RFC 7240) is answered by `submit` too.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from sse_starlette import EventSourceResponse, ServerSentEvent

from service.api import services
from service.api.body import read_body
from service.api.generate import read_and_authenticate
from service.api.responses import SafeJSONResponse
from service.auth import ADMIN_HEADER, is_admin_caller, is_admin_key
from service.errors import (
    BadRequest,
    Conflict,
    NotFound,
    ServiceError,
    Unauthorized,
    Unavailable,
)
from service.jobs.models import CANCELED, KIND_BATCH, KIND_GENERATE, TERMINAL, JobSpec, Webhook
from service.jobs.service import Jobs, Reader, body_digest, owner_digest
from service.jobs.webhooks import parse_webhook
from service.schemas import TaskRequest, parse_batch_async, parse_generate
from service.schemas.job_responses import Job, JobEvent, ReplicateWebhookReceived
from service.schemas.openapi import (
    ADMIN_OR_BEARER,
    ADMIN_OR_CREDENTIALS,
    NO_AUTH,
    errors,
    operation,
)

router = APIRouter()

IDEMPOTENCY_HEADER = "Idempotency-Key"
_IDEMPOTENCY_RE = re.compile(r"^[\x21-\x7e]{1,255}$")
_PREFER_ASYNC_RE = re.compile(r"(^|[,;\s])respond-async($|[,;\s=])", re.IGNORECASE)
READER_REQUIRED = (
    "Authentication required: provide 'X-Admin-API-Key' or "
    "'Authorization: Bearer <the Replicate API token the job was submitted with>'"
)


IDEMPOTENCY_PARAMETER: dict[str, Any] = {
    "name": IDEMPOTENCY_HEADER,
    "in": "header",
    "required": False,
    "description": "1-255 printable ASCII characters: the same key, caller and body within 24 h "
    "answer the same job (`Idempotent-Replayed: true`); another body is 422",
    "schema": {"type": "string", "pattern": _IDEMPOTENCY_RE.pattern},
}
LOCATION_HEADER = {"Location": {"description": "/jobs/{id}", "schema": {"type": "string"}}}
# Answers a job route gives besides its own (POST /generate-batch with `Prefer: respond-async`
# gives them too).
SUBMIT_ERRORS = (400, 401, 404, 409, 413, 415, 422, 503)
ACCEPTED = {
    "model": Job,
    "description": "Queued: any replica runs it; follow it at `Location`",
    "headers": LOCATION_HEADER,
}


def jobs_of(request: Request) -> Jobs:
    found = getattr(request.app.state, "jobs", None)
    if not isinstance(found, Jobs):
        raise Unavailable("Service is starting or shutting down; try again shortly")
    return found


def prefers_async(request: Request) -> bool:
    """`Prefer: respond-async` (RFC 7240), among any other preferences."""
    return any(_PREFER_ASYNC_RE.search(v) for v in request.headers.getlist("prefer"))


@router.post(
    "/jobs",
    operation_id="submit_job",
    tags=["jobs"],
    summary="Submit a /generate or /generate-batch body as a durable job",
    status_code=202,
    response_model=Job,
    responses={202: ACCEPTED, **errors(*SUBMIT_ERRORS)},
    openapi_extra={
        **operation(body="JobRequest", auth=ADMIN_OR_CREDENTIALS),
        "parameters": [IDEMPOTENCY_PARAMETER],
    },
)
async def submit_job(request: Request) -> JSONResponse:
    return await submit(request, batch=None)


async def submit(request: Request, *, batch: bool | None) -> JSONResponse:
    """Queue a job from a /generate (batch False) or /generate-batch (True) body; None: the
    body's shape decides (`tasks` or `prompts` → a batch)."""
    found = services(request)
    jobs = jobs_of(request)
    settings = found.settings
    body, caller = await read_and_authenticate(request, found, batch=True)
    assert isinstance(body, dict)  # request_token refused anything else
    idempotency = _idempotency(request, body)
    webhook: Webhook | None = None
    if body.get("webhook") is not None:
        webhook = await parse_webhook(body["webhook"], allow_private=settings.webhook_allow_private)
    body = {k: v for k, v in body.items() if k != "webhook"}
    is_batch = batch if batch is not None else ("tasks" in body or "prompts" in body)
    if is_batch:
        parsed = await parse_batch_async(body, max_tasks=settings.max_batch_tasks)
        spec = JobSpec(KIND_BATCH, parsed.model_name, parsed.external_semaphore_id, parsed.tasks)
    else:
        one = parse_generate(body)
        task = TaskRequest(0, one.prompt, one.output_filename, one.replicate_input)
        spec = JobSpec(KIND_GENERATE, one.model_name, one.external_semaphore_id, [task])
    await found.generator.check_semaphore(spec.semaphore_id)
    view, created = await jobs.submit(caller, spec, webhook=webhook, idempotency=idempotency)
    headers = {"Location": f"/jobs/{view['id']}"}
    if not created:
        headers["Idempotent-Replayed"] = "true"
    return SafeJSONResponse(view, status_code=202, headers=headers)


def _idempotency(request: Request, body: dict[str, Any]) -> tuple[str, str] | None:
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is None:
        return None
    if not _IDEMPOTENCY_RE.fullmatch(key):
        raise BadRequest(
            f"Invalid header '{IDEMPOTENCY_HEADER}': must be 1-255 printable ASCII characters "
            "without spaces"
        )
    return key, body_digest(body)


def reader_of(request: Request) -> Reader:
    settings = services(request).settings
    if is_admin_caller(settings, request.headers.get(ADMIN_HEADER)):
        return Reader(is_admin=True)
    authorization = request.headers.get("authorization")
    if authorization is not None and authorization.strip():
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() not in ("bearer", "token") or not token.strip():
            raise Unauthorized("Invalid Authorization header: expected 'Bearer <token>'")
        if is_admin_key(settings, token.strip()):
            # The admin key as a bearer: a 404 would read as a lost job.
            raise Unauthorized(
                f"The admin key goes in the '{ADMIN_HEADER}' header; 'Authorization: Bearer' "
                "takes the Replicate API token the job was submitted with"
            )
        return Reader(token_digest=owner_digest(token.strip()))
    if settings.allow_env_fallback:
        return Reader(anonymous_env=True)
    raise Unauthorized(READER_REQUIRED)


@router.get(
    "/jobs/{job_id}",
    operation_id="get_job",
    tags=["jobs"],
    summary="A job: its status, its tasks and their files (from any replica)",
    response_model=Job,
    responses=errors(401, 404, 503),
    openapi_extra=operation(auth=ADMIN_OR_BEARER),
)
async def get_job(request: Request, job_id: str) -> JSONResponse:
    jobs = jobs_of(request)
    record = await jobs.get(job_id, reader_of(request))
    return SafeJSONResponse(await jobs.view(record))


@router.post(
    "/jobs/{job_id}/cancel",
    operation_id="cancel_job",
    tags=["jobs"],
    summary="Cancel a job's pending tasks and running predictions",
    response_model=Job,
    responses={
        200: {"description": "Canceled (or it already was)"},
        202: {"model": Job, "description": "Cancel requested; its runner is still ending it"},
        **errors(401, 404, 409, 503),
    },
    openapi_extra=operation(auth=ADMIN_OR_BEARER),
)
async def cancel_job(request: Request, job_id: str) -> JSONResponse:
    jobs = jobs_of(request)
    record = await jobs.get(job_id, reader_of(request))
    if record.status in TERMINAL and record.status != CANCELED:
        raise Conflict(
            f"Job '{job_id}' already {record.status}; nothing to cancel",
            fields={"status": record.status},
        )
    record = await jobs.cancel(record)
    view = await jobs.view(record)
    return SafeJSONResponse(view, status_code=200 if view["status"] == "canceled" else 202)


SSE_PING_S = 15.0
SSE_POLL_S = 0.25
_EVENT_ID_RE = re.compile(r"^(0|\d{1,20}-\d{1,20})$")


@router.get(
    "/jobs/{job_id}/events",
    operation_id="job_events",
    tags=["jobs"],
    summary="Follow a job live (Server-Sent Events), resumable with Last-Event-ID",
    response_class=Response,
    responses={
        200: {
            "description": "`event: task` per task state change (its view as data), `event: "
            "job` when the job ends (then the stream closes); ids are for `Last-Event-ID`",
            "content": {"text/event-stream": {"schema": JobEvent.model_json_schema()}},
        },
        **errors(400, 401, 404, 503),
    },
    openapi_extra=operation(auth=ADMIN_OR_BEARER),
)
async def job_events(request: Request, job_id: str) -> EventSourceResponse:
    jobs = jobs_of(request)
    record = await jobs.get(job_id, reader_of(request))
    after = request.headers.get("last-event-id") or request.query_params.get("after") or "0"
    if not _EVENT_ID_RE.fullmatch(after) or any(int(part) >= 2**64 for part in after.split("-")):
        raise BadRequest("Invalid Last-Event-ID: expected an id this stream sent (like 1700-0)")
    ping_s = float(getattr(request.app.state, "sse_ping_seconds", SSE_PING_S))

    async def stream() -> AsyncIterator[ServerSentEvent]:
        cursor = after
        while True:
            try:
                events = await jobs.store.events(record.id, cursor)
            except ServiceError:
                await asyncio.sleep(1.0)  # Redis away: the client keeps its place
                continue
            for event_id, data in events:
                cursor = event_id
                yield _event(event_id, data)
                if data.get("final"):
                    return
            if not events:
                status = await jobs.store.status(record.id)
                if status is None:
                    return  # expired
                if status in TERMINAL:  # its end event came before, or comes now
                    for event_id, data in await jobs.store.events(record.id, cursor):
                        yield _event(event_id, data)
                    return
            await asyncio.sleep(SSE_POLL_S)

    return EventSourceResponse(stream(), ping=ping_s, headers={"Cache-Control": "no-store"})


def _event(event_id: str, data: dict[str, Any]) -> ServerSentEvent:
    return ServerSentEvent(
        data=json.dumps(data, separators=(",", ":")),
        event=str(data.get("type", "message")),
        id=event_id,
    )


@router.post(
    "/replicate/webhook",
    operation_id="replicate_webhook",
    tags=["jobs"],
    summary="Replicate's signed prediction webhook (with PUBLIC_BASE_URL)",
    response_model=ReplicateWebhookReceived,
    responses=errors(400, 401, 404, 409, 413, 503),
    openapi_extra=operation(auth=NO_AUTH),
)
async def replicate_webhook(request: Request) -> JSONResponse:
    """Replicate's signed `completed` webhook (PUBLIC_BASE_URL): completes the prediction's
    task at once instead of at its next poll. 401 bad signature, 400 signed but not a
    prediction, 409 replay."""
    found = services(request)
    replicate = jobs_of(request).replicate
    if not replicate.enabled:
        raise NotFound("Replicate webhooks are not enabled here (PUBLIC_BASE_URL is unset)")
    body = await read_body(request, found.settings.max_body_bytes)
    prediction = await replicate.receive(body, dict(request.headers))
    return JSONResponse({"received": prediction["id"]})
