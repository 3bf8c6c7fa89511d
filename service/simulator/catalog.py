"""The three official models the simulator serves: input schemas, output shape, image sizes.

Schemas follow /work/shared/replicate-api.md §3 (the live schemas as of 2025). Values are echoed
back unchanged in `prediction.input`; defaults below only drive what gets rendered.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from service.simulator.validation import FieldSpec, InvalidField, ObjectSpec, check_object

# Pixel sizes at 1 megapixel (cog-flux `ASPECT_RATIOS`); "0.25" megapixels halves each side.
FLUX_SIZES: dict[str, tuple[int, int]] = {
    "1:1": (1024, 1024),
    "16:9": (1344, 768),
    "21:9": (1536, 640),
    "3:2": (1216, 832),
    "2:3": (832, 1216),
    "4:5": (896, 1088),
    "5:4": (1088, 896),
    "3:4": (896, 1152),
    "4:3": (1152, 896),
    "9:16": (768, 1344),
    "9:21": (640, 1536),
    # Kontext only (assumed, about 1 MP, multiples of 16).
    "2:1": (1440, 720),
    "1:2": (720, 1440),
}

# Qwen-Image's native sizes ("optimize_for_quality"). "optimize_for_speed" is assumed to be the
# flux 1 MP size of the same ratio; the real speed sizes were not documented.
QWEN_SIZES: dict[str, tuple[int, int]] = {
    "1:1": (1328, 1328),
    "16:9": (1664, 928),
    "9:16": (928, 1664),
    "4:3": (1472, 1140),
    "3:4": (1140, 1472),
    "3:2": (1584, 1056),
    "2:3": (1056, 1584),
}

_FLUX_RATIOS = ("1:1", "16:9", "21:9", "3:2", "2:3", "4:5", "5:4", "3:4", "4:3", "9:16", "9:21")
_KONTEXT_RATIOS = (
    "match_input_image",
    "1:1",
    "16:9",
    "9:16",
    "4:3",
    "3:4",
    "3:2",
    "2:3",
    "4:5",
    "5:4",
    "21:9",
    "9:21",
    "2:1",
    "1:2",
)
_QWEN_RATIOS = ("1:1", "16:9", "9:16", "4:3", "3:4", "3:2", "2:3")


@dataclass(frozen=True)
class RenderPlan:
    """What a succeeded prediction produces: N files of one size and format."""

    count: int
    width: int
    height: int
    fmt: str  # "webp" | "jpg" | "png"
    quality: int


@dataclass(frozen=True)
class ModelSpec:
    name: str  # "owner/name"
    input: ObjectSpec
    list_output: bool  # True: output is a list of URLs; False: a single URL string

    def validate(self, value: Mapping[str, Any]) -> list[InvalidField]:
        problems = check_object(self.input, value, "input")
        if not problems and self.name == "black-forest-labs/flux-kontext-max":
            problems = _kontext_extra_rules(value)
        return problems

    def plan(self, value: Mapping[str, Any]) -> RenderPlan:
        """The files a valid input yields (defaults applied)."""
        if self.name == "qwen/qwen-image":
            ratio = str(value.get("aspect_ratio", "16:9"))
            if value.get("image_size", "optimize_for_quality") == "optimize_for_speed":
                width, height = FLUX_SIZES[ratio]
            else:
                width, height = QWEN_SIZES[ratio]
            return RenderPlan(
                1, width, height, str(value.get("output_format", "webp")), _quality(value)
            )
        if self.name == "black-forest-labs/flux-kontext-max":
            ratio = str(value.get("aspect_ratio", "match_input_image"))
            # No input image is fetched, so "match_input_image" renders square.
            width, height = FLUX_SIZES.get(ratio, FLUX_SIZES["1:1"])
            return RenderPlan(1, width, height, str(value.get("output_format", "png")), 95)
        width, height = FLUX_SIZES[str(value.get("aspect_ratio", "1:1"))]
        if str(value.get("megapixels", "1")) == "0.25":
            width, height = width // 2, height // 2
        return RenderPlan(
            int(value.get("num_outputs", 1)),
            width,
            height,
            str(value.get("output_format", "webp")),
            _quality(value),
        )


def _quality(value: Mapping[str, Any]) -> int:
    return int(value.get("output_quality", 80))


def _kontext_extra_rules(value: Mapping[str, Any]) -> list[InvalidField]:
    if value.get("input_image") and int(value.get("safety_tolerance", 2)) > 2:
        return [
            InvalidField(
                "number_lte",
                "input.safety_tolerance",
                "safety_tolerance must be less than or equal to 2 when input_image is provided",
            )
        ]
    return []


_S = FieldSpec

FLUX_DEV = ModelSpec(
    name="black-forest-labs/flux-dev",
    list_output=True,
    input=ObjectSpec(
        required=("prompt",),
        properties={
            "prompt": _S("string"),
            "aspect_ratio": _S("string", enum=_FLUX_RATIOS),
            "image": _S("string", uri=True),
            "prompt_strength": _S("number", minimum=0, maximum=1),
            "num_outputs": _S("integer", minimum=1, maximum=4),
            "num_inference_steps": _S("integer", minimum=1, maximum=50),
            "guidance": _S("number", minimum=0, maximum=10),
            "seed": _S("integer", nullable=True),
            "output_format": _S("string", enum=("webp", "jpg", "png")),
            "output_quality": _S("integer", minimum=0, maximum=100),
            "disable_safety_checker": _S("boolean"),
            "go_fast": _S("boolean"),
            "megapixels": _S("string", enum=("1", "0.25")),
        },
    ),
)

FLUX_KONTEXT_MAX = ModelSpec(
    name="black-forest-labs/flux-kontext-max",
    list_output=False,
    input=ObjectSpec(
        required=("prompt",),
        properties={
            "prompt": _S("string"),
            "input_image": _S("string", uri=True, nullable=True),
            "aspect_ratio": _S("string", enum=_KONTEXT_RATIOS),
            "seed": _S("integer", nullable=True),
            "output_format": _S("string", enum=("jpg", "png")),
            "safety_tolerance": _S("integer", minimum=0, maximum=6),
            "prompt_upsampling": _S("boolean"),
        },
    ),
)

QWEN_IMAGE = ModelSpec(
    name="qwen/qwen-image",
    list_output=True,
    input=ObjectSpec(
        required=("prompt",),
        properties={
            "prompt": _S("string"),
            "enhance_prompt": _S("boolean"),
            "lora_weights": _S("string", uri=True, nullable=True),
            "replicate_weights": _S("string", uri=True, nullable=True),
            "lora_scale": _S("number"),
            "extra_lora_weights": _S("array", nullable=True, items=_S("string", uri=True)),
            "extra_lora_scale": _S("array", nullable=True, items=_S("number")),
            "image": _S("string", uri=True),
            "strength": _S("number", minimum=0, maximum=1),
            "negative_prompt": _S("string"),
            "aspect_ratio": _S("string", enum=_QWEN_RATIOS),
            "image_size": _S("string", enum=("optimize_for_quality", "optimize_for_speed")),
            "go_fast": _S("boolean"),
            "num_inference_steps": _S("integer", minimum=1, maximum=50),
            "guidance": _S("number", minimum=0, maximum=10),
            "seed": _S("integer", nullable=True),
            "output_format": _S("string", enum=("webp", "jpg", "png")),
            "output_quality": _S("integer", minimum=0, maximum=100),
            "disable_safety_checker": _S("boolean"),
        },
    ),
)

MODELS: dict[str, ModelSpec] = {m.name: m for m in (FLUX_DEV, FLUX_KONTEXT_MAX, QWEN_IMAGE)}

# Fields of the create-prediction body (`additionalProperties: false` in the OpenAPI schema).
MODEL_BODY = ObjectSpec(
    required=("input",),
    properties={
        "input": _S("object"),  # its content is checked against the model's schema
        "webhook": _S("string", uri=True),
        "webhook_completed": _S("string", uri=True),
        "webhook_events_filter": _S(
            "array", items=_S("string", enum=("start", "output", "logs", "completed"))
        ),
        "stream": _S("boolean"),
    },
)
VERSION_BODY = ObjectSpec(
    properties={**MODEL_BODY.properties, "version": _S("string")}, required=("version", "input")
)
