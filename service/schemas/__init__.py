"""Request models: one input model per Replicate model, and the parsing of the HTTP bodies."""

from service.schemas.models import (
    MODELS,
    SUPPORTED_MODELS,
    FluxDevInput,
    FluxKontextMaxInput,
    ModelInput,
    ModelSpec,
    QwenImageInput,
)
from service.schemas.requests import (
    BatchRequest,
    GenerateRequest,
    TaskRequest,
    parse_batch,
    parse_batch_async,
    parse_generate,
    request_token,
)

__all__ = [
    "MODELS",
    "SUPPORTED_MODELS",
    "BatchRequest",
    "FluxDevInput",
    "FluxKontextMaxInput",
    "GenerateRequest",
    "ModelInput",
    "ModelSpec",
    "QwenImageInput",
    "TaskRequest",
    "parse_batch",
    "parse_batch_async",
    "parse_generate",
    "request_token",
]
