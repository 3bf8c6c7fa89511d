"""Request bodies as JSON Schema, for the OpenAPI document, built from the models that validate.

The routes decode bodies themselves (service.api.body: size cap, depth and value limits, lone
surrogates, before authentication), so FastAPI never sees a body model. What the document
shows is built here from the same definitions the parsers use:

- a generation body's model parameters are the model's own input model
  (service.schemas.models: FluxDevInput, ...), one body per entry of MODELS, chosen by
  `model_name`; the service fields take their rules from the constants the parser checks
  against (SEMAPHORE_ID_PATTERN, TOKEN_PATTERN, MAX_OUTPUT_FILENAME_CHARS);
- a batch's top-level parameters are the same input model's fields (defaults for every task),
  and each task is the input model plus `output_filename`;
- the semaphore and lease bodies take their bounds from the routes' own constants, passed in
  as `Bounds` (schemas never import the api layer), with this deployment's settings
  (MAX_BATCH_TASKS, QUEUE_TIMEOUT_SECONDS).

Routes name their body with `request_body("GenerateRequest")`; `body_components(bounds)`
gives every named body's schema (and the schemas they refer to) for `components/schemas`.
The models here never validate a request.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, create_model

from service.config import SEMAPHORE_ID_PATTERN
from service.filenames import MAX_OUTPUT_FILENAME_CHARS
from service.schemas.models import MODELS, ModelSpec, Prompt
from service.schemas.requests import TOKEN_PATTERN

REF_PREFIX = "#/components/schemas/"
MAX_WEBHOOK_URL_CHARS = 2048  # service.jobs.webhooks.MAX_URL_CHARS (schemas import no jobs)
_CLOSED = ConfigDict(extra="forbid", strict=True)


@dataclass(frozen=True)
class Bounds:
    """The numbers a body's schema depends on: the routes' constants and this deployment's
    settings."""

    max_batch_tasks: int
    max_limit: int
    max_holder_chars: int
    max_timeout_s: float


# -- service fields ----------------------------------------------------------------------------

SemaphoreId = Annotated[
    str,
    Field(
        pattern=SEMAPHORE_ID_PATTERN,
        description="1-128 characters of letters, digits, '.', '_', ':' or '-', starting with "
        "a letter or digit",
        examples=["image-generation-global"],
    ),
]
OutputFilename = Annotated[
    str,
    Field(
        max_length=MAX_OUTPUT_FILENAME_CHARS,
        description="The name to save the output under; cleaned into a safe file name. An "
        "image extension given is kept; without one the output's own is added; several "
        'outputs are numbered (name_1.webp, ...). Null or "": `<model>_<prediction id>`',
        examples=["mountain_sunset"],
    ),
]


class Credentials(BaseModel):
    """Tier 2: the caller's own Replicate account. The token is checked once against Replicate
    (GET /v1/account), never logged, and never echoed in an answer."""

    model_config = ConfigDict(extra="forbid", strict=True)

    replicate_api_token: (
        Annotated[str, Field(pattern=TOKEN_PATTERN, examples=["r8_your_replicate_token"])] | None
    ) = Field(None, description="Null means no user credentials (authentication then decides)")


def _service_fields() -> dict[str, Any]:
    return {
        "external_semaphore_id": (
            SemaphoreId | Literal[""] | None,
            Field(
                None,
                description="A global semaphore (POST /global-semaphores, or GLOBAL_SEMAPHORES) "
                'to hold a slot of while the prediction runs; null or "" for none. 404 if it '
                "does not exist",
            ),
        ),
        "credentials": (
            Credentials | None,
            Field(
                None,
                description="Your own Replicate token; without it, the X-Admin-API-Key header "
                "(the server's token)",
            ),
        ),
    }


def _model_name(spec: ModelSpec) -> Any:
    return (Literal[spec.name], Field(description="The model to run"))


def _title(spec: ModelSpec) -> str:
    return spec.input_model.__name__.removesuffix("Input")


# -- /generate and /generate-batch --------------------------------------------------------------


def _generate_body(spec: ModelSpec) -> type[BaseModel]:
    """/generate for one model: its input model, plus the service fields."""
    return create_model(
        f"{_title(spec)}Generate",
        __base__=spec.input_model,
        __doc__=f"POST /generate with model_name `{spec.name}` ({spec.ref}).",
        model_name=_model_name(spec),
        output_filename=(OutputFilename | None, None),
        **_service_fields(),
    )


def _task(spec: ModelSpec) -> type[BaseModel]:
    return create_model(
        f"{_title(spec)}Task",
        __base__=spec.input_model,
        __doc__="One task: its prompt, file name and any parameters (they win over the "
        "batch's top-level ones).",
        output_filename=(OutputFilename | None, None),
    )


def _batch_body(spec: ModelSpec, max_tasks: int) -> type[BaseModel]:
    """/generate-batch for one model: `tasks` (or the legacy `prompts` + `custom_filenames`),
    the service fields, and the model's parameters as defaults for every task."""
    defaults: dict[str, Any] = {
        name: (info.annotation, info)
        for name, info in spec.input_model.model_fields.items()
        if name != "prompt"
    }
    task: Any = _task(spec)
    return create_model(
        f"{_title(spec)}Batch",
        __config__=ConfigDict(
            extra="forbid",
            strict=True,
            json_schema_extra={"oneOf": [{"required": ["tasks"]}, {"required": ["prompts"]}]},
        ),
        __doc__=f"POST /generate-batch with model_name `{spec.name}`: `tasks`, or the "
        "legacy `prompts` (+ `custom_filenames`); top-level parameters are defaults for "
        "every task.",
        model_name=_model_name(spec),
        tasks=(list[task] | None, Field(None, min_length=1, max_length=max_tasks)),
        prompts=(
            list[Prompt] | None,
            Field(
                None,
                min_length=1,
                max_length=max_tasks,
                description="Legacy form: one prompt per task",
            ),
        ),
        custom_filenames=(
            list[OutputFilename | None] | None,
            Field(
                None,
                min_length=1,
                max_length=max_tasks,
                description="Legacy form: one file name per prompt (same length)",
            ),
        ),
        **_service_fields(),
        **defaults,
    )


# -- /jobs ---------------------------------------------------------------------------------------


class WebhookTarget(BaseModel):
    """Where to POST the job when it ends (and each task, with `"events": ["task",
    "completed"]`), signed per Standard Webhooks with the server's WEBHOOK_SECRET (without one,
    400). `https`, and not resolving to a loopback, private or link-local address (unless the
    server sets WEBHOOK_ALLOW_PRIVATE)."""

    model_config = _CLOSED

    url: str = Field(max_length=MAX_WEBHOOK_URL_CHARS, examples=["https://example.com/hooks/rcg"])
    events: list[Literal["task", "completed"]] = Field(
        ["completed"],
        min_length=1,
        description='`["completed"]` or `["task", "completed"]` (must include `completed`)',
    )


def _job_body(make: Callable[[ModelSpec], type[BaseModel]]) -> Callable[[ModelSpec], Any]:
    """A /generate or /generate-batch body of one model, plus the job's `webhook`."""

    def made(spec: ModelSpec) -> type[BaseModel]:
        body = make(spec)
        return create_model(
            f"{body.__name__}Job",
            __base__=body,
            __doc__=f"POST /jobs: {body.__doc__}",
            webhook=(WebhookTarget | None, Field(None, description="Optional: webhooks out")),
        )

    return made


def _job_request(bounds: Bounds) -> Any:
    """POST /jobs: any /generate body or any /generate-batch body (`tasks` or `prompts`)."""
    generate = [_job_body(_generate_body)(spec) for spec in MODELS.values()]
    batch = [
        _job_body(lambda spec: _batch_body(spec, bounds.max_batch_tasks))(spec)
        for spec in MODELS.values()
    ]
    return Union[tuple(generate + batch)]  # noqa: UP007


def _by_model(make: Callable[[ModelSpec], type[BaseModel]]) -> Any:
    """One body per model, chosen by `model_name`."""
    choices = tuple(make(spec) for spec in MODELS.values())
    return Annotated[Union[choices], Field(discriminator="model_name")]  # noqa: UP007


# -- semaphores and leases ---------------------------------------------------------------------


def _semaphore_create(bounds: Bounds) -> type[BaseModel]:
    return create_model(
        "SemaphoreCreateRequest",
        __config__=_CLOSED,
        __doc__="Register a global semaphore (admin).",
        semaphore_id=(SemaphoreId, ...),
        limit=(
            int,
            Field(
                ge=1,
                le=bounds.max_limit,
                description="Slots: at most this many "
                "holders at once, across every replica and service",
            ),
        ),
    )


def _semaphore_limit(bounds: Bounds) -> type[BaseModel]:
    return create_model(
        "SemaphoreLimitRequest",
        __config__=_CLOSED,
        __doc__="Change a semaphore's limit (admin): takes effect for the next acquisition; a "
        "raise admits waiters at once.",
        limit=(int, Field(ge=1, le=bounds.max_limit)),
    )


def _lease_request(bounds: Bounds) -> type[BaseModel]:
    return create_model(
        "LeaseRequest",
        __config__=_CLOSED,
        __doc__="Wait (FIFO with every other waiter) up to `timeout_s` for a slot. The lease "
        "lasts LEASE_TTL_SECONDS and is kept by renewing it (PUT).",
        timeout_s=(
            float,
            Field(
                ge=0,
                le=bounds.max_timeout_s,
                description="Seconds to wait for a slot (QUEUE_TIMEOUT_SECONDS at most); 429 "
                "after that",
            ),
        ),
        holder=(
            str | None,
            Field(
                None,
                max_length=bounds.max_holder_chars,
                description="Free text shown to operators as the holder (printable)",
            ),
        ),
    )


# -- the document's side -----------------------------------------------------------------------

_BODIES: dict[str, Callable[[Bounds], Any]] = {
    "GenerateRequest": lambda _: _by_model(_generate_body),
    "BatchRequest": lambda bounds: _by_model(
        lambda spec: _batch_body(spec, bounds.max_batch_tasks)
    ),
    "JobRequest": _job_request,
    "SemaphoreCreateRequest": _semaphore_create,
    "SemaphoreLimitRequest": _semaphore_limit,
    "LeaseRequest": _lease_request,
}

EXAMPLES: dict[str, dict[str, dict[str, Any]]] = {
    "GenerateRequest": {
        "flux-dev": {
            "summary": "flux-dev with the admin key and a global semaphore",
            "value": {
                "model_name": "flux-dev",
                "prompt": "A serene mountain landscape at sunset",
                "output_filename": "mountain_sunset",
                "aspect_ratio": "16:9",
                "external_semaphore_id": "image-generation-global",
            },
        },
        "own-token": {
            "summary": "With your own Replicate token (no admin key)",
            "value": {
                "model_name": "qwen-image",
                "prompt": "A beautiful landscape",
                "output_filename": "qwen_artwork",
                "credentials": {"replicate_api_token": "r8_your_replicate_token"},
            },
        },
        "kontext": {
            "summary": "flux-kontext-max editing an image",
            "value": {
                "model_name": "flux-kontext-max",
                "prompt": "Make it a watercolor painting",
                "input_image": "https://example.com/image.jpg",
                "output_format": "png",
            },
        },
    },
    "BatchRequest": {
        "tasks": {
            "summary": "Tasks, each with its own parameters",
            "value": {
                "model_name": "flux-dev",
                "aspect_ratio": "16:9",
                "tasks": [
                    {"prompt": "A red sports car", "output_filename": "red_car.jpg"},
                    {
                        "prompt": "A blue ocean wave",
                        "output_filename": "blue_wave",
                        "num_outputs": 2,
                    },
                ],
            },
        },
        "legacy": {
            "summary": "The legacy prompts form",
            "value": {
                "model_name": "flux-dev",
                "prompts": ["A red car", "A blue house"],
                "custom_filenames": ["red_car", "blue_house"],
            },
        },
    },
    "JobRequest": {
        "batch": {
            "summary": "A batch, called back when it ends",
            "value": {
                "model_name": "flux-dev",
                "tasks": [{"prompt": "A red sports car"}, {"prompt": "A blue wave"}],
                "webhook": {
                    "url": "https://example.com/hooks/rcg",
                    "events": ["task", "completed"],
                },
            },
        },
        "generate": {
            "summary": "One generation, with your own token (read it back with it as Bearer)",
            "value": {
                "model_name": "flux-dev",
                "prompt": "A lighthouse at dawn",
                "credentials": {"replicate_api_token": "r8_your_replicate_token"},
            },
        },
    },
    "SemaphoreCreateRequest": {
        "create": {"value": {"semaphore_id": "image-generation-global", "limit": 20}}
    },
    "SemaphoreLimitRequest": {"raise": {"value": {"limit": 30}}},
    "LeaseRequest": {"wait": {"value": {"timeout_s": 5, "holder": "thumbnailer"}}},
}


def request_body(name: str) -> dict[str, Any]:
    """`openapi_extra` for a route that reads the body `name` itself (see the module doc)."""
    if name not in _BODIES:
        raise KeyError(f"no request body named {name!r}")
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {"$ref": REF_PREFIX + name},
                    "examples": EXAMPLES.get(name, {}),
                }
            },
        }
    }


def body_components(bounds: Bounds) -> dict[str, dict[str, Any]]:
    """Every named body's JSON Schema, and the schemas they refer to, for components/schemas."""
    components: dict[str, dict[str, Any]] = {}
    for name, make in _BODIES.items():
        schema = TypeAdapter(make(bounds)).json_schema(ref_template=REF_PREFIX + "{model}")
        components.update(schema.pop("$defs", {}))
        components[name] = schema
    return components
