"""OpenAI-compatible images API: `POST /v1/images/generations`, `GET /v1/models[/{model}]`, so
that the official `openai` SDK with `base_url="http://<service>/v1"` works unchanged
(docs/openai-compatible.md).

    Authorization: Bearer <key>   the admin key → the server's token (as X-Admin-API-Key on
                                  /generate); an `r8_...` key → the caller's own Replicate
                                  account (checked once against Replicate, as `credentials`);
                                  absent → the environment tier if ALLOW_ENV_FALLBACK, else 401
    body                          service.schemas.openai: n identical tasks of one batch
    generation                    Generator.generate_batch: the same limits as /generate-batch
    answer                        {"created", "data": [{"url"} | {"b64_json"}]}; the bytes of
                                  b64_json are read from the output URLs (bounded size and time)

Authentication comes first (it needs only a header), then the body. When some of the n images
fail and others do not, the answer carries those that succeeded, in task order, and the header
`X-Failed-Images: <count>`; when none succeeded, the first failure is the answer.

Every error of these routes is OpenAI's envelope `{"error": {"message", "type", "param",
"code"}}` with the ServiceError's status and headers: `OpenAIRoute` is this router's one mapping
(service.app keeps `{"error": "..."}` for the rest of the service).
"""

from __future__ import annotations

import base64
import logging
import re
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import SecretStr

from service.api import Services, services
from service.api.body import read_json
from service.api.responses import SafeJSONResponse
from service.api.watch import until_disconnected
from service.auth import Caller, authenticate, is_admin_key
from service.errors import (
    BadRequest,
    NotFound,
    PredictionFailed,
    ServiceError,
    Unauthorized,
    Unavailable,
    UpstreamError,
)
from service.schemas import MODELS
from service.schemas.openai import (
    MAX_N,
    SEMAPHORE_HEADER,
    ImageGenerationRequest,
    ImagesRequest,
    ImagesResponse,
    ModelCard,
    ModelList,
    OpenAIErrorEnvelope,
    model_card,
    parse_images_request,
    resolve_model,
)
from service.upstream.downloads import fetch_outputs

log = logging.getLogger("service.api.openai_images")

MAX_OUTPUT_FILE_BYTES = 16 * 1024 * 1024  # per image read for b64_json
OUTPUT_FETCH_TIMEOUT_S = 60.0  # per image read for b64_json
FAILED_HEADER = "X-Failed-Images"

_HANG_UP = "Client closed the request; the generation was cancelled"
_TOKEN_RE = re.compile(r"[\x21-\x7e]{1,512}")
MISSING_KEY = (
    "Missing API key: send 'Authorization: Bearer <key>' with the service's admin key or your "
    "own Replicate API token (r8_...)"
)
MALFORMED_KEY = "Malformed Authorization header: expected 'Bearer <key>'"
INCORRECT_KEY = (
    "Incorrect API key provided: expected the service's admin key or a Replicate API token (r8_...)"
)
REFUSED_TOKEN = "Incorrect API key provided: Replicate refused this token"

OPENAI_PREFIX = "/v1/"  # every path under it answers errors in OpenAI's envelope

# status → (type, code) of the envelope, when the error names no code of its own.
_KINDS: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", "invalid_value"),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("permission_error", None),
    404: ("invalid_request_error", "not_found"),
    413: ("invalid_request_error", "request_too_large"),
    415: ("invalid_request_error", "unsupported_media_type"),
    429: ("requests", "rate_limit_exceeded"),
    499: ("invalid_request_error", "client_closed_request"),
    502: ("server_error", "upstream_error"),
    503: ("server_error", "service_unavailable"),
}


def error_response(exc: ServiceError) -> Response:
    """A ServiceError in OpenAI's envelope (its status and headers kept)."""
    status = exc.status_code
    kind, default_code = _KINDS.get(
        status, ("server_error" if status >= 500 else "invalid_request_error", None)
    )
    param = exc.fields.get("param")
    details = exc.fields.get("details")
    if param is None and isinstance(details, list) and details and isinstance(details[0], dict):
        param = details[0].get("field")
    code = exc.fields.get("code")
    if code is None and status == 400 and exc.message.startswith("Unknown parameter"):
        code = "unknown_parameter"
    headers = dict(exc.headers)
    if isinstance(exc, PredictionFailed):
        code = code or "prediction_failed"
        headers["x-should-retry"] = "false"  # the SDK would pay for the same failure again
    if status >= 500:
        shown = exc.message.encode("utf-8", "backslashreplace").decode("utf-8")
        log.warning("request failed: %s", shown, extra={"status": status})
    body = {
        "error": {
            "message": exc.message,
            "type": kind,
            "param": param if isinstance(param, str) else None,
            "code": code if isinstance(code, str) else default_code,
        }
    }
    return SafeJSONResponse(body, status_code=status, headers=headers)


class OpenAIRoute(APIRoute):
    """Routes whose errors are answered in OpenAI's envelope."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except ServiceError as exc:
                return error_response(exc)
            except RequestValidationError as exc:
                error = exc.errors()[0] if exc.errors() else {}
                where = ".".join(str(part) for part in error.get("loc", ()))
                rule = str(error.get("msg", "invalid"))
                return error_response(
                    BadRequest(f"Invalid {where}: {rule}", fields={"param": where or None})
                )

        return route


_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": OpenAIErrorEnvelope, "description": description}
    for status, description in {
        400: "A field breaks its rule (the message and `param` name it)",
        401: "No key, or neither the admin key nor a valid Replicate token",
        404: "Unknown model (`model_not_found`) or external semaphore",
        413: "Body larger than MAX_BODY_BYTES",
        415: "Unsupported Content-Type (multipart); send JSON",
        429: "A limit stayed full for QUEUE_TIMEOUT_SECONDS (Retry-After)",
        502: "Replicate failed the prediction, or an output could not be read",
        503: "Redis unreachable, or the replica is shutting down",
    }.items()
}
_ERRORS[429]["headers"] = {
    "Retry-After": {"description": "Seconds to wait", "schema": {"type": "string"}},
    "X-Limit-Scope": {"description": "Which limit stayed full", "schema": {"type": "string"}},
}

_AUTH_NOTE = (
    "`Authorization: Bearer <key>` (the openai SDK's `api_key`): the admin key (the server's "
    "Replicate token) or your own Replicate token `r8_...`; errors in OpenAI's envelope. "
    "Sizes, fields and examples: docs/openai-compatible.md."
)

router = APIRouter(route_class=OpenAIRoute, tags=["openai"])


@router.post(
    "/v1/images/generations",
    response_model=ImagesResponse,
    responses=_ERRORS,
    summary="Generate images (OpenAI images API)",
    description=_AUTH_NOTE,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": ImageGenerationRequest.model_json_schema()}},
        },
        "parameters": [
            {
                "name": SEMAPHORE_HEADER,
                "in": "header",
                "required": False,
                "schema": {"type": "string"},
                "description": "An external semaphore each prediction holds (or "
                "`external_semaphore_id` in the body)",
            }
        ],
    },
)
async def create_images(request: Request) -> Response:
    found = services(request)
    settings = found.settings
    caller = await _caller(found, request.headers.get("authorization"))
    body = await read_json(request, settings.max_body_bytes)
    parsed = parse_images_request(
        body,
        max_n=min(MAX_N, settings.max_batch_tasks),
        header_semaphore_id=request.headers.get(SEMAPHORE_HEADER),
    )
    # Fail fast (503) rather than wait for every task to fail on its own.
    if not await found.coordinator.ping():
        raise Unavailable(
            "Coordination store (Redis) is unreachable; no generation can start until it is back",
            headers={"Retry-After": "5"},
        )
    answer = await until_disconnected(
        request, found, _images(found, caller, parsed), message=_HANG_UP
    )
    headers = {FAILED_HEADER: str(answer.failed)} if answer.failed else None
    return SafeJSONResponse(  # the predictions are paid for: this answer must go out
        {"created": int(time.time()), "data": answer.data}, headers=headers
    )


@router.get("/v1/models", response_model=ModelList, summary="The models (OpenAI models API)")
async def list_models() -> ModelList:
    return ModelList(data=[model_card(spec) for spec in MODELS.values()])


@router.get(
    "/v1/models/{model:path}",
    response_model=ModelCard,
    responses={404: _ERRORS[404]},
    summary="One model, by name or Replicate ref",
)
async def retrieve_model(
    model: Annotated[
        str,
        # What the route matches: a path segment or a ref with one slash, no line breaks (the
        # router's `path` converter stops at one).
        Path(pattern=r"^[^\r\n]+$", examples=["flux-dev", "black-forest-labs/flux-dev"]),
    ],
) -> ModelCard:
    return model_card(resolve_model(model))


# -- authentication -----------------------------------------------------------------------------


async def _caller(found: Services, authorization: str | None) -> Caller:
    """The bearer key → a Caller, through service.auth's tiers (the admin key is compared in
    constant time; only an `r8_` key is ever sent to Replicate)."""
    settings, upstream = found.settings, found.upstream
    key = _bearer(authorization)
    if key is None:
        try:
            return await authenticate(settings, upstream, admin_key=None, token=None)
        except Unauthorized:
            raise Unauthorized(MISSING_KEY) from None
    if is_admin_key(settings, key):
        return await authenticate(settings, upstream, admin_key=key, token=None)
    if key.startswith("r8_") and _TOKEN_RE.fullmatch(key):
        try:
            return await authenticate(settings, upstream, admin_key=None, token=SecretStr(key))
        except Unauthorized:
            raise Unauthorized(REFUSED_TOKEN) from None
    raise Unauthorized(INCORRECT_KEY)


def _bearer(authorization: str | None) -> str | None:
    if authorization is None or not authorization.strip():
        return None
    scheme, _, key = authorization.strip().partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        raise Unauthorized(MALFORMED_KEY)
    return key


# -- the work -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Answer:
    data: list[dict[str, str]]
    failed: int


async def _images(found: Services, caller: Caller, parsed: ImagesRequest) -> _Answer:
    try:
        outcomes = await found.generator.generate_batch(caller, parsed.batch)
    except NotFound as exc:  # the only 404 before any task runs: the external semaphore
        raise NotFound(
            exc.message, fields={"param": "external_semaphore_id", "code": "semaphore_not_found"}
        ) from None
    errors: list[ServiceError] = [o.error for o in outcomes if o.error is not None]
    urls = [file.url for o in outcomes if o.error is None for file in o.files]
    data: list[dict[str, str]] = []
    if parsed.response_format == "url":
        data = [{"url": url} for url in urls]
    elif urls:
        fetched = await fetch_outputs(
            urls,
            token=caller.token,
            upstream_base_url=found.settings.replicate_base_url,
            max_bytes=MAX_OUTPUT_FILE_BYTES,
            timeout_s=OUTPUT_FETCH_TIMEOUT_S,
        )
        for item in fetched:
            if isinstance(item, bytes):
                data.append({"b64_json": base64.b64encode(item).decode("ascii")})
            else:
                errors.append(item)
    if not data:
        raise errors[0] if errors else UpstreamError("The predictions succeeded without an image")
    if errors:
        log.warning(
            "%d of the images failed; answering with the %d that succeeded: %s",
            len(errors),
            len(data),
            errors[0].message,
        )
    return _Answer(data, len(errors))


__all__ = ["OpenAIRoute", "error_response", "router"]
