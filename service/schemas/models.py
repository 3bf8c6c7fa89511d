"""One pydantic input model per Replicate model, and the table of supported models.

The models follow the real Replicate input schemas (docs: shared/replicate-api.md §3). Where the
seed README and the real model disagree, the real model wins: flux-dev takes eleven aspect ratios
and an `image`, qwen-image takes 1-50 steps and has no bound on `lora_scale`.

Every model is strict, like Replicate itself:

- unknown parameters are refused (`extra="forbid"`), so a typo never silently does nothing;
- no coercion: `"5"` is not an integer, `2.0` is not an integer, `1` is not a boolean, and
  `megapixels` is the *string* `"1"` or `"0.25"`;
- numbers must be finite (Python's json module decodes `NaN` and `Infinity`);
- file inputs (`image`, `input_image`, `lora_weights`, ...) must be an `https://` URL or a
  `data:` URI. The service never reads a local file on a caller's behalf, so a path such as
  `/etc/passwd`, `C:\\x.png` or `file:///x` is refused, as is any other scheme.

`ModelInput.to_replicate_input()` gives the exact `input` object sent to Replicate: every
default written out, `None` values (an absent seed, no image) dropped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

MAX_PROMPT_CHARS = 10_000
MAX_URL_CHARS = 4_096
# Replicate recommends data URIs only for files under 1 MB; 8 MiB of text (about 6 MB of data)
# is our hard cap, well under the request body cap.
MAX_DATA_URI_CHARS = 8 * 1024 * 1024
MAX_EXTRA_LORAS = 16
# Seeds are passed through untouched; bounded to 64-bit so no JSON consumer loses precision.
SEED_MIN = -(2**63)
SEED_MAX = 2**63 - 1

# The header of a data: URI (media type and parameters, up to the first comma). It is matched on
# its own, and looked for only in the first MAX_DATA_URI_HEADER_CHARS: matching the whole URI
# backtracked over all of an 8 MiB value without a comma (0.3 s in one call).
_DATA_URI_HEADER_RE = re.compile(
    r"(?i:data):([A-Za-z0-9!#$&^_.+-]+/[A-Za-z0-9!#$&^_.+-]+)?(;[^,;]+)*"
)
MAX_DATA_URI_HEADER_CHARS = 1024
_WINDOWS_PATH_RE = re.compile(r"^[A-Za-z]:([\\/]|$)")
_ALLOWED_URL_RULE = "must be an https:// URL or a data: URI"


def _check_prompt(value: str) -> str:
    if not value.strip():
        raise PydanticCustomError("prompt_blank", "must not be empty or only whitespace")
    return value


def _check_input_url(value: str) -> str:
    """Accept an `https://` URL or a `data:` URI; refuse paths and every other scheme."""
    if not value:
        raise PydanticCustomError(
            "url_empty", "must not be empty (omit the parameter or send null for none)"
        )
    if value[:5].lower() == "data:":
        if len(value) > MAX_DATA_URI_CHARS:
            raise PydanticCustomError(
                "data_uri_too_long",
                "data: URI is {length} characters; the limit is {limit} (host the file and "
                "pass an https:// URL instead)",
                {"length": len(value), "limit": MAX_DATA_URI_CHARS},
            )
        comma = value.find(",", 0, MAX_DATA_URI_HEADER_CHARS)
        if (
            comma < 0
            or not _DATA_URI_HEADER_RE.fullmatch(value, 0, comma)
            or value[comma + 1 : comma + 2] in ("", "\n")  # was `,.`: one character, not \n
        ):
            raise PydanticCustomError(
                "data_uri_malformed",
                "malformed data: URI; expected data:<type>/<subtype>[;base64],<data>",
            )
        return value
    if len(value) > MAX_URL_CHARS:
        raise PydanticCustomError(
            "url_too_long",
            "URL is {length} characters; the limit is {limit}",
            {"length": len(value), "limit": MAX_URL_CHARS},
        )
    if (
        value.startswith(("/", "\\", ".", "~"))
        or _WINDOWS_PATH_RE.match(value)
        or "://" not in value
    ):
        raise PydanticCustomError(
            "url_is_path",
            _ALLOWED_URL_RULE + "; local file paths are not accepted (the service never "
            "reads files on a caller's behalf)",
        )
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        raise PydanticCustomError(
            "url_malformed", "URL must not contain spaces or control characters"
        )
    try:
        parts = urlsplit(value)
    except ValueError:
        raise PydanticCustomError("url_malformed", "malformed URL") from None
    scheme = parts.scheme.lower()
    if scheme != "https":
        shown = scheme if re.fullmatch(r"[a-z][a-z0-9+.-]{0,15}", scheme) else "?"
        raise PydanticCustomError(
            "url_scheme",
            "scheme '{scheme}' is not allowed; " + _ALLOWED_URL_RULE,
            {"scheme": shown},
        )
    if not parts.hostname:
        raise PydanticCustomError("url_malformed", "https:// URL has no host")
    return value


Prompt = Annotated[
    str,
    Field(min_length=1, max_length=MAX_PROMPT_CHARS),
    AfterValidator(_check_prompt),
]
InputUrl = Annotated[str, AfterValidator(_check_input_url)]
Seed = Annotated[int, Field(ge=SEED_MIN, le=SEED_MAX)]
OutputQuality = Annotated[int, Field(ge=0, le=100)]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]

FluxDevAspectRatio = Literal[
    "1:1", "16:9", "21:9", "3:2", "2:3", "4:5", "5:4", "3:4", "4:3", "9:16", "9:21"
]
KontextAspectRatio = Literal[
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
]
QwenAspectRatio = Literal["1:1", "16:9", "9:16", "4:3", "3:4", "3:2", "2:3"]


class ModelInput(BaseModel):
    """Base of the per-model inputs: strict, closed, finite."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        allow_inf_nan=False,
        hide_input_in_errors=True,
        validate_default=False,
    )

    prompt: Prompt

    def to_replicate_input(self) -> dict[str, Any]:
        """The `input` object for Replicate: defaults written out, `None` values dropped."""
        return self.model_dump(mode="json", exclude_none=True)


class FluxDevInput(ModelInput):
    """black-forest-labs/flux-dev (cog-flux DevPredictor). Outputs a list of URIs."""

    aspect_ratio: FluxDevAspectRatio = "1:1"
    image: InputUrl | None = None
    prompt_strength: float = Field(0.8, ge=0, le=1)
    num_outputs: int = Field(1, ge=1, le=4)
    num_inference_steps: int = Field(28, ge=1, le=50)
    guidance: float = Field(3.0, ge=0, le=10)
    seed: Seed | None = None
    output_format: Literal["webp", "jpg", "png"] = "webp"
    output_quality: OutputQuality = 80
    disable_safety_checker: bool = False
    go_fast: bool = True
    megapixels: Literal["1", "0.25"] = "1"


class FluxKontextMaxInput(ModelInput):
    """black-forest-labs/flux-kontext-max. Outputs a single URI.

    Service policy for `aspect_ratio`: Replicate's default is `match_input_image`, which has
    nothing to match when no `input_image` is given (upstream behaviour unknown). So when the
    caller gives no aspect ratio we send `match_input_image` if there is an input image and
    `1:1` otherwise; an explicit `match_input_image` without an `input_image` is refused.

    Replicate's rule `safety_tolerance <= 2` with an input image is checked here too.
    """

    input_image: InputUrl | None = None
    aspect_ratio: KontextAspectRatio | None = None
    seed: Seed | None = None
    output_format: Literal["jpg", "png"] = "png"
    safety_tolerance: int = Field(2, ge=0, le=6)
    prompt_upsampling: bool = False

    @field_validator("aspect_ratio")
    @classmethod
    def _match_needs_image(cls, value: str | None, info: ValidationInfo) -> str | None:
        # Runs only for a given value; fields are validated in order, so input_image is known.
        # A missing key means input_image itself failed and is reported already.
        if value == "match_input_image" and info.data.get("input_image", "") is None:
            raise PydanticCustomError(
                "match_needs_image",
                "'match_input_image' needs an input_image; give input_image or choose a "
                "ratio such as '1:1'",
            )
        return value

    @field_validator("safety_tolerance")
    @classmethod
    def _tolerance_with_image(cls, value: int, info: ValidationInfo) -> int:
        if value > 2 and info.data.get("input_image") is not None:
            raise PydanticCustomError(
                "tolerance_with_image",
                "must be <= 2 when input_image is given (Replicate's rule for image editing)",
            )
        return value

    @model_validator(mode="after")
    def _fill_aspect_ratio(self) -> FluxKontextMaxInput:
        if self.aspect_ratio is None:
            self.aspect_ratio = "match_input_image" if self.input_image is not None else "1:1"
        return self


class QwenImageInput(ModelInput):
    """qwen/qwen-image. Outputs a list of URIs (usually one).

    `lora_scale` has no bound in Replicate's schema, so any finite number is accepted (trainer
    variants bound it at 2 or 3; the model decides). `extra_lora_weights` and
    `extra_lora_scale` are arrays in the current version (older versions took comma-separated
    strings, which are refused); at most 16 entries each.
    """

    enhance_prompt: bool = False
    lora_weights: InputUrl | None = None
    replicate_weights: InputUrl | None = None
    lora_scale: FiniteFloat = 1.0
    extra_lora_weights: list[InputUrl] | None = Field(None, max_length=MAX_EXTRA_LORAS)
    extra_lora_scale: list[FiniteFloat] | None = Field(None, max_length=MAX_EXTRA_LORAS)
    image: InputUrl | None = None
    strength: float = Field(0.9, ge=0, le=1)
    negative_prompt: str = Field(" ", max_length=MAX_PROMPT_CHARS)
    aspect_ratio: QwenAspectRatio = "16:9"
    image_size: Literal["optimize_for_quality", "optimize_for_speed"] = "optimize_for_quality"
    go_fast: bool = True
    num_inference_steps: int = Field(30, ge=1, le=50)
    guidance: float = Field(3.0, ge=0, le=10)
    seed: Seed | None = None
    output_format: Literal["webp", "jpg", "png"] = "webp"
    output_quality: OutputQuality = 80
    disable_safety_checker: bool = False


@dataclass(frozen=True)
class ModelSpec:
    """A supported model: the service's name for it, Replicate's ref, and how to read outputs.

    `default_extension` is the file extension implied by the model's default `output_format`.
    """

    name: str
    ref: str
    input_model: type[ModelInput]
    output_is_list: bool
    default_extension: str

    @property
    def parameter_names(self) -> frozenset[str]:
        """Every input parameter the model takes, `prompt` included."""
        return frozenset(self.input_model.model_fields)


MODELS: dict[str, ModelSpec] = {
    "flux-dev": ModelSpec(
        name="flux-dev",
        ref="black-forest-labs/flux-dev",
        input_model=FluxDevInput,
        output_is_list=True,
        default_extension="webp",
    ),
    "flux-kontext-max": ModelSpec(
        name="flux-kontext-max",
        ref="black-forest-labs/flux-kontext-max",
        input_model=FluxKontextMaxInput,
        output_is_list=False,
        default_extension="png",
    ),
    "qwen-image": ModelSpec(
        name="qwen-image",
        ref="qwen/qwen-image",
        input_model=QwenImageInput,
        output_is_list=True,
        default_extension="webp",
    ),
}
SUPPORTED_MODELS: list[str] = list(MODELS)
