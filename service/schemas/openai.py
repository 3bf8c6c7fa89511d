"""The OpenAI-compatible images API: its request and response models, and the translation of a
request into the service's own (docs/openai-compatible.md).

    POST /v1/images/generations body            →  what the service runs
    model (service name or Replicate ref)       →  the ModelSpec (absent: flux-dev)
    prompt + extra_body model parameters        →  parse_generate: the model's own input schema
    size "WxH" / "auto"                         →  aspect_ratio (+ megapixels for flux-dev)
    output_format, output_compression           →  output_format, output_quality
    n                                           →  n identical tasks of one BatchRequest
    external_semaphore_id (or the header)       →  the batch's external semaphore
    quality, style, user, safety_identifier,    →  accepted and ignored
    moderation, background "auto"/"opaque"

Every problem is a BadRequest whose message names the field and the rule and whose
`fields["param"]` names the field for OpenAI's error envelope; an unknown model is
`ModelNotFound` (404, OpenAI's `model_not_found`).

Sizes: none of the three models takes a width and a height, so a size chooses the model's aspect
ratio: one of the model's own pixel sizes (NATIVE_SIZES) maps to its ratio, any other W x H to
the model's ratio nearest to W/H if within SIZE_RATIO_TOLERANCE (3%; 1792x1024 is 1.75, taken
as 16:9). For flux-dev, a size of at most HALF_MEGAPIXEL_AREA pixels
(512x512, 768x512, ...) also asks for 0.25 megapixels instead of 1. The model renders at its own
pixel size for that ratio (flux-dev 16:9 is 1344x768), not at exactly W x H.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from service.config import SEMAPHORE_ID_PATTERN
from service.errors import BadRequest, NotFound
from service.schemas.models import (
    MODELS,
    FluxDevAspectRatio,
    KontextAspectRatio,
    ModelSpec,
    QwenAspectRatio,
)
from service.schemas.requests import BatchRequest, TaskRequest, json_type, parse_generate

DEFAULT_MODEL = "flux-dev"
MAX_N = 10  # OpenAI's own bound; MAX_BATCH_TASKS lowers it further when smaller
SEMAPHORE_HEADER = "X-External-Semaphore-Id"

# The closest two ratios of one model (4:5 and 3:4) are 6.5% apart: 3% never matches two.
SIZE_RATIO_TOLERANCE = 0.03
MIN_SIDE_PX = 64
MAX_SIDE_PX = 4096
HALF_MEGAPIXEL_AREA = 512 * 1024  # at or below: flux-dev's megapixels "0.25"
_SIZE_RE = re.compile(r"([0-9]{1,5})x([0-9]{1,5})")
_SEMAPHORE_ID_RE = re.compile(SEMAPHORE_ID_PATTERN)

# The ratios a size may map to, per model (kontext's match_input_image is no size).
ASPECT_RATIOS: dict[str, tuple[str, ...]] = {
    "flux-dev": get_args(FluxDevAspectRatio),
    "flux-kontext-max": tuple(r for r in get_args(KontextAspectRatio) if ":" in r),
    "qwen-image": get_args(QwenAspectRatio),
}
# The models' own pixel sizes (cog-flux's ASPECT_RATIOS at 1 MP, Qwen-Image's native sizes),
# rounded to multiples of 16 or 64 and so up to 3.6% off their ratio: matched exactly first.
_FLUX_PIXELS: dict[tuple[int, int], str] = {
    (1024, 1024): "1:1",
    (1344, 768): "16:9",
    (768, 1344): "9:16",
    (1536, 640): "21:9",
    (640, 1536): "9:21",
    (1216, 832): "3:2",
    (832, 1216): "2:3",
    (1088, 896): "5:4",
    (896, 1088): "4:5",
    (1152, 896): "4:3",
    (896, 1152): "3:4",
}
NATIVE_SIZES: dict[str, dict[tuple[int, int], str]] = {
    "flux-dev": _FLUX_PIXELS,
    "flux-kontext-max": _FLUX_PIXELS,
    "qwen-image": {
        (1328, 1328): "1:1",
        (1664, 928): "16:9",
        (928, 1664): "9:16",
        (1472, 1140): "4:3",
        (1140, 1472): "3:4",
        (1584, 1056): "3:2",
        (1056, 1584): "2:3",
    },
}
# Accepted besides the service's names: the Replicate refs.
MODEL_ALIASES: dict[str, str] = {spec.ref: name for name, spec in MODELS.items()}
# When each model was published (Replicate), for GET /v1/models' `created`.
MODEL_CREATED: dict[str, int] = {
    "flux-dev": 1722470400,  # 2024-08-01
    "flux-kontext-max": 1748476800,  # 2025-05-29
    "qwen-image": 1754265600,  # 2025-08-04
}

# OpenAI fields of the request (everything else is a model parameter), and body keys of
# /generate that mean something else here.
_RESERVED = {
    "model_name": "this endpoint names the model in 'model'",
    "credentials": "authenticate with 'Authorization: Bearer <admin key or r8_ token>'",
    "output_filename": "the answer carries no filenames",
}


# -- request ---------------------------------------------------------------------------------


class ImageGenerationRequest(BaseModel):
    """`POST /v1/images/generations`. Any other key is a parameter of the chosen model (the
    openai SDK sends them with `extra_body`), validated by the model's input schema as on
    /generate."""

    model_config = ConfigDict(
        extra="allow",
        strict=True,
        hide_input_in_errors=True,
        json_schema_extra={
            "examples": [
                {"model": "flux-dev", "prompt": "A red fox in the snow", "size": "1792x1024"},
                {
                    "model": "qwen-image",
                    "prompt": "A lighthouse at dusk",
                    "n": 2,
                    "response_format": "b64_json",
                    "num_inference_steps": 20,
                    "external_semaphore_id": "image-generation-global",
                },
            ]
        },
    )

    prompt: str = Field(description="What to draw; the model's `prompt`.")
    model: str | None = Field(
        None,
        description="flux-dev (default), flux-kontext-max or qwen-image; the Replicate refs "
        "(black-forest-labs/flux-dev, ...) are accepted too.",
    )
    n: int | None = Field(
        None, ge=1, le=MAX_N, description="Images to make: 1-10 (at most MAX_BATCH_TASKS)."
    )
    size: str | None = Field(
        None,
        max_length=16,
        description="'WxH' mapped to the model's aspect ratio (docs/openai-compatible.md), or "
        "'auto' / absent for the model's default.",
    )
    response_format: Literal["url", "b64_json"] | None = Field(
        None, description="'url' (default): Replicate's output URL, valid one hour."
    )
    output_format: Literal["png", "jpeg", "jpg", "webp"] | None = Field(
        None, description="The model's output_format (jpeg is sent as jpg)."
    )
    output_compression: int | None = Field(
        None, ge=0, le=100, description="The model's output_quality (flux-dev, qwen-image)."
    )
    background: Literal["auto", "opaque"] | None = Field(
        None, description="Accepted; the models draw no transparency."
    )
    stream: Literal[False] | None = Field(None, description="Streaming is not supported.")
    partial_images: int | None = Field(None, ge=0, le=0, description="Only 0 (no streaming).")
    quality: str | None = Field(None, max_length=32, description="Accepted and ignored.")
    style: str | None = Field(None, max_length=32, description="Accepted and ignored.")
    moderation: str | None = Field(None, max_length=32, description="Accepted and ignored.")
    user: str | None = Field(None, max_length=256, description="Accepted and ignored.")
    safety_identifier: str | None = Field(None, max_length=256, description="Accepted and ignored.")
    external_semaphore_id: str | None = Field(
        None,
        description="An external semaphore to hold while each prediction runs (or the "
        f"{SEMAPHORE_HEADER} header).",
    )


_RULES: dict[str, str] = {
    "stream": "streaming is not supported: omit it or send false",
    "partial_images": "partial images need streaming, which is not supported: omit it or send 0",
    "background": "must be 'auto' or 'opaque' (the models draw no transparency)",
    "output_format": "must be 'png', 'jpeg' or 'webp' (flux-kontext-max: png or jpeg)",
}


@dataclass(frozen=True)
class ImagesRequest:
    """A validated request: the batch the Generator runs (n identical tasks) and how to answer."""

    batch: BatchRequest
    n: int
    response_format: Literal["url", "b64_json"]


class ModelNotFound(NotFound):
    """OpenAI answers an unknown model with 404 `model_not_found`."""

    def __init__(self, model: str) -> None:
        shown = model if len(model) <= 100 else model[:100] + "…"
        super().__init__(
            f"The model '{shown}' does not exist; available: {', '.join(MODELS)}",
            fields={"param": "model", "code": "model_not_found"},
        )


def invalid(param: str, rule: str, value: object = ..., *, code: str | None = None) -> BadRequest:
    """`Invalid field '<param>': <rule> (got ...)`, with the param for the envelope."""
    got = "" if value is ... else _got(value)
    fields: dict[str, Any] = {"param": param}
    if code is not None:
        fields["code"] = code
    return BadRequest(f"Invalid field '{param}': {rule}{got}", fields=fields)


def resolve_model(name: str | None) -> ModelSpec:
    if name is None:
        return MODELS[DEFAULT_MODEL]
    canonical = MODEL_ALIASES.get(name, name)
    spec = MODELS.get(canonical)
    if spec is None:
        raise ModelNotFound(name)
    return spec


def parse_images_request(
    body: object,
    *,
    max_n: int,
    header_semaphore_id: str | None = None,
) -> ImagesRequest:
    """Validate a decoded body; raises BadRequest (param named) or ModelNotFound."""
    if not isinstance(body, dict):
        raise BadRequest(
            f"Request body must be a JSON object, got {json_type(body)}",
            fields={"code": "invalid_json"},
        )
    request = _validate_openai_fields(body, max_n)
    spec = resolve_model(request.model)
    extras = dict(request.model_extra or {})
    for key, why in _RESERVED.items():
        if key in extras:
            raise invalid(key, f"not a field of this endpoint ({why})", code="unknown_parameter")
    semaphore_id = _semaphore_id(request.external_semaphore_id, header_semaphore_id)

    params = {**extras, **_size_params(spec, request.size, extras)}
    params.update(_format_params(spec, request, extras))
    generate = parse_generate(
        {"model_name": spec.name, "prompt": request.prompt, **params}, supported=list(MODELS)
    )
    n = request.n or 1
    tasks = [
        TaskRequest(
            index=index,
            prompt=generate.prompt,
            output_filename=None,
            replicate_input=dict(generate.replicate_input),
        )
        for index in range(n)
    ]
    batch = BatchRequest(
        model_name=spec.name,
        spec=spec,
        tasks=tasks,
        external_semaphore_id=semaphore_id,
    )
    return ImagesRequest(batch=batch, n=n, response_format=request.response_format or "url")


def _validate_openai_fields(body: dict[str, Any], max_n: int) -> ImageGenerationRequest:
    try:
        request = ImageGenerationRequest.model_validate(body)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        loc = error["loc"]
        name = str(loc[0]) if loc else "body"
        if error["type"] == "missing":
            raise BadRequest(
                f"Missing required field: {name}", fields={"param": name, "code": "missing"}
            ) from None
        if name == "n":
            raise _bad_n(body.get("n"), max_n) from None
        rule = _RULES.get(name, error["msg"])
        raise invalid(name, rule, body.get(name, ...)) from None
    if not request.prompt.strip():
        raise BadRequest(
            "Missing required field: prompt (it is empty or only whitespace)",
            fields={"param": "prompt", "code": "missing"},
        )
    if request.n is not None and request.n > max_n:
        raise _bad_n(request.n, max_n)
    return request


def _bad_n(value: object, max_n: int) -> BadRequest:
    return invalid("n", f"must be an integer from 1 to {max_n}", value, code="invalid_n")


def _semaphore_id(in_body: str | None, in_header: str | None) -> str | None:
    from_header = in_header.strip() if in_header else None
    if from_header:
        _check_semaphore_id(from_header, SEMAPHORE_HEADER)
    if in_body:
        _check_semaphore_id(in_body, "external_semaphore_id")
    if from_header and in_body and from_header != in_body:
        raise invalid(
            "external_semaphore_id",
            f"differs from the {SEMAPHORE_HEADER} header; name the semaphore once",
        )
    return from_header or in_body or None


def _check_semaphore_id(value: str, name: str) -> None:
    if not _SEMAPHORE_ID_RE.fullmatch(value):
        raise invalid(
            name,
            "must be 1-128 characters of letters, digits, '.', '_', ':' or '-', starting with "
            f"a letter or digit (pattern {SEMAPHORE_ID_PATTERN})",
        )


# -- size ------------------------------------------------------------------------------------


def size_params(spec: ModelSpec, size: str) -> dict[str, str]:
    """The model parameters a "WxH" size stands for; BadRequest (param "size") if none."""
    ratios = ASPECT_RATIOS[spec.name]
    match = _SIZE_RE.fullmatch(size)
    if match is None:
        raise invalid(
            "size",
            "must be 'auto' or 'WIDTHxHEIGHT' in pixels, such as '1024x1024' or '1792x1024'",
            size,
            code="invalid_size",
        )
    width, height = int(match.group(1)), int(match.group(2))
    if not (MIN_SIDE_PX <= width <= MAX_SIDE_PX and MIN_SIDE_PX <= height <= MAX_SIDE_PX):
        raise invalid(
            "size",
            f"width and height must each be {MIN_SIDE_PX}-{MAX_SIDE_PX} pixels",
            size,
            code="invalid_size",
        )
    ratio = NATIVE_SIZES[spec.name].get((width, height)) or nearest_ratio(width, height, ratios)
    if ratio is None:
        raise invalid(
            "size",
            f"{width}x{height} matches none of {spec.name}'s aspect ratios "
            f"({', '.join(ratios)}) within {SIZE_RATIO_TOLERANCE:.0%}",
            size,
            code="invalid_size",
        )
    params = {"aspect_ratio": ratio}
    if spec.name == "flux-dev":
        params["megapixels"] = "0.25" if width * height <= HALF_MEGAPIXEL_AREA else "1"
    return params


def nearest_ratio(width: int, height: int, ratios: tuple[str, ...]) -> str | None:
    """The ratio "a:b" closest to width/height (in log scale), if within the tolerance."""
    wanted = math.log(width / height)
    best: tuple[float, str] | None = None
    for ratio in ratios:
        a, b = ratio.split(":")
        distance = abs(wanted - math.log(int(a) / int(b)))
        if best is None or distance < best[0]:
            best = (distance, ratio)
    if best is None or best[0] > math.log1p(SIZE_RATIO_TOLERANCE):
        return None
    return best[1]


def _size_params(spec: ModelSpec, size: str | None, extras: dict[str, Any]) -> dict[str, str]:
    if size is None or size == "auto":
        return {}
    params = size_params(spec, size)
    for key in params:
        if key in extras:
            raise invalid(key, "give either 'size' or the model's own size parameters, not both")
    return params


def _format_params(
    spec: ModelSpec, request: ImageGenerationRequest, extras: dict[str, Any]
) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if request.output_format is not None:
        params["output_format"] = (
            "jpg" if request.output_format == "jpeg" else request.output_format
        )
    if request.output_compression is not None:
        if "output_quality" not in spec.parameter_names:
            raise invalid(
                "output_compression",
                f"{spec.name} has no output quality setting; omit it",
                request.output_compression,
            )
        if "output_quality" in extras:
            raise invalid(
                "output_compression", "give either output_compression or output_quality, not both"
            )
        params["output_quality"] = request.output_compression
    return params


def _got(value: object) -> str:
    if isinstance(value, bool) or value is None:
        return f" (got {'null' if value is None else str(value).lower()})"
    if isinstance(value, int | float):
        return f" (got {value!r})"
    if isinstance(value, str):
        return f" (got {value!r})" if len(value) <= 32 else f" (got a string of {len(value)})"
    return f" (got {json_type(value)})"


# -- responses (the shapes the openai SDK reads; for OpenAPI) --------------------------------


class ImageData(BaseModel):
    """One image: `url` or `b64_json`, as the request's response_format asked."""

    url: str | None = Field(None, description="Replicate's output URL (deleted after one hour).")
    b64_json: str | None = Field(None, description="The image file's bytes, base64.")


class ImagesResponse(BaseModel):
    created: int = Field(description="Unix time of the answer.")
    data: list[ImageData]


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class OpenAIErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIErrorEnvelope(BaseModel):
    """Every error of the /v1 routes: OpenAI's envelope."""

    error: OpenAIErrorBody


def model_card(spec: ModelSpec) -> ModelCard:
    return ModelCard(
        id=spec.name, created=MODEL_CREATED.get(spec.name, 0), owned_by=spec.ref.split("/")[0]
    )


__all__ = [
    "ASPECT_RATIOS",
    "DEFAULT_MODEL",
    "MAX_N",
    "MODEL_ALIASES",
    "SEMAPHORE_HEADER",
    "ImageData",
    "ImageGenerationRequest",
    "ImagesRequest",
    "ImagesResponse",
    "ModelCard",
    "ModelList",
    "ModelNotFound",
    "OpenAIErrorBody",
    "OpenAIErrorEnvelope",
    "invalid",
    "model_card",
    "nearest_ratio",
    "parse_images_request",
    "resolve_model",
    "size_params",
]
