"""Request parsing for /generate and /generate-batch, and the per-model input models."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import SecretStr, ValidationError

from service.errors import BadRequest, ModelNotSupported
from service.schemas import (
    MODELS,
    SUPPORTED_MODELS,
    FluxDevInput,
    FluxKontextMaxInput,
    QwenImageInput,
    parse_batch,
    parse_generate,
)
from service.schemas import models as models_module

TOKEN = "r8_S3cr3tT0kenValue0123456789abcdefghijk"
HTTPS_IMAGE = "https://example.com/images/cat.png"
DATA_IMAGE = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"


def generate(model: str = "flux-dev", **params: Any) -> dict[str, Any]:
    """Parse a /generate body and return what Replicate would receive."""
    return parse_generate({"model_name": model, "prompt": "a cat", **params}).replicate_input


def generate_error(body: object, **kwargs: Any) -> BadRequest:
    with pytest.raises(BadRequest) as info:
        parse_generate(body, **kwargs)
    return info.value


def batch_error(body: object, max_tasks: int = 10) -> BadRequest:
    with pytest.raises(BadRequest) as info:
        parse_batch(body, max_tasks=max_tasks)
    return info.value


def param_error(model: str = "flux-dev", **params: Any) -> BadRequest:
    return generate_error({"model_name": model, "prompt": "a cat", **params})


# --- the model table ------------------------------------------------------------------------


def test_models_table() -> None:
    assert SUPPORTED_MODELS == ["flux-dev", "flux-kontext-max", "qwen-image"]
    flux, kontext, qwen = (MODELS[name] for name in SUPPORTED_MODELS)
    assert (flux.ref, flux.input_model, flux.output_is_list, flux.default_extension) == (
        "black-forest-labs/flux-dev",
        FluxDevInput,
        True,
        "webp",
    )
    assert (kontext.ref, kontext.input_model, kontext.output_is_list) == (
        "black-forest-labs/flux-kontext-max",
        FluxKontextMaxInput,
        False,
    )
    assert kontext.default_extension == "png"
    assert (qwen.ref, qwen.input_model, qwen.output_is_list, qwen.default_extension) == (
        "qwen/qwen-image",
        QwenImageInput,
        True,
        "webp",
    )
    assert len(flux.parameter_names) == 13
    assert "prompt" in qwen.parameter_names


def test_model_spec_is_frozen() -> None:
    with pytest.raises(AttributeError):
        MODELS["flux-dev"].name = "other"  # type: ignore[misc]


# --- defaults: exactly what Replicate receives ---------------------------------------------


def test_flux_dev_defaults_are_explicit() -> None:
    assert generate("flux-dev") == {
        "prompt": "a cat",
        "aspect_ratio": "1:1",
        "prompt_strength": 0.8,
        "num_outputs": 1,
        "num_inference_steps": 28,
        "guidance": 3.0,
        "output_format": "webp",
        "output_quality": 80,
        "disable_safety_checker": False,
        "go_fast": True,
        "megapixels": "1",
    }


def test_kontext_defaults_without_image_use_square() -> None:
    assert generate("flux-kontext-max") == {
        "prompt": "a cat",
        "aspect_ratio": "1:1",
        "output_format": "png",
        "safety_tolerance": 2,
        "prompt_upsampling": False,
    }


def test_kontext_defaults_with_image_match_it() -> None:
    sent = generate("flux-kontext-max", input_image=HTTPS_IMAGE)
    assert sent["aspect_ratio"] == "match_input_image"
    assert sent["input_image"] == HTTPS_IMAGE


def test_qwen_defaults_are_explicit() -> None:
    assert generate("qwen-image") == {
        "prompt": "a cat",
        "enhance_prompt": False,
        "lora_scale": 1.0,
        "strength": 0.9,
        "negative_prompt": " ",
        "aspect_ratio": "16:9",
        "image_size": "optimize_for_quality",
        "go_fast": True,
        "num_inference_steps": 30,
        "guidance": 3.0,
        "output_format": "webp",
        "output_quality": 80,
        "disable_safety_checker": False,
    }


@pytest.mark.parametrize("model", SUPPORTED_MODELS)
def test_none_values_are_dropped(model: str) -> None:
    assert "seed" not in generate(model)
    assert "seed" not in generate(model, seed=None)
    assert generate(model, seed=42)["seed"] == 42


def test_service_fields_are_not_sent_to_replicate() -> None:
    sent = generate(
        output_filename="x.png",
        external_semaphore_id="sem-1",
        credentials={"replicate_api_token": TOKEN},
    )
    for key in ("model_name", "output_filename", "external_semaphore_id", "credentials"):
        assert key not in sent
    assert TOKEN not in repr(sent)


def test_input_model_directly() -> None:
    assert FluxDevInput(prompt="x", guidance=5).to_replicate_input()["guidance"] == 5.0
    with pytest.raises(ValidationError):
        FluxDevInput(prompt="x", guidance=11)


# --- enums and ranges: boundary values accepted, just outside refused ---------------------

ACCEPTED = [
    ("flux-dev", "prompt_strength", 0),
    ("flux-dev", "prompt_strength", 1),
    ("flux-dev", "num_outputs", 1),
    ("flux-dev", "num_outputs", 4),
    ("flux-dev", "num_inference_steps", 1),
    ("flux-dev", "num_inference_steps", 50),
    ("flux-dev", "guidance", 0),
    ("flux-dev", "guidance", 10),
    ("flux-dev", "guidance", 3.5),
    ("flux-dev", "output_quality", 0),
    ("flux-dev", "output_quality", 100),
    ("flux-dev", "output_format", "jpg"),
    ("flux-dev", "output_format", "png"),
    ("flux-dev", "megapixels", "0.25"),
    ("flux-dev", "go_fast", False),
    ("flux-dev", "disable_safety_checker", True),
    ("flux-dev", "seed", 0),
    ("flux-dev", "seed", -(2**63)),
    ("flux-dev", "seed", 2**63 - 1),
    ("flux-dev", "image", HTTPS_IMAGE),
    ("flux-kontext-max", "safety_tolerance", 0),
    ("flux-kontext-max", "safety_tolerance", 6),
    ("flux-kontext-max", "output_format", "jpg"),
    ("flux-kontext-max", "prompt_upsampling", True),
    ("qwen-image", "num_inference_steps", 1),
    ("qwen-image", "num_inference_steps", 50),
    ("qwen-image", "guidance", 0),
    ("qwen-image", "guidance", 10),
    ("qwen-image", "strength", 0),
    ("qwen-image", "strength", 1),
    ("qwen-image", "output_quality", 0),
    ("qwen-image", "output_quality", 100),
    ("qwen-image", "image_size", "optimize_for_speed"),
    ("qwen-image", "enhance_prompt", True),
    ("qwen-image", "negative_prompt", "blurry, low quality"),
    ("qwen-image", "negative_prompt", ""),
    ("qwen-image", "lora_scale", 0),
    ("qwen-image", "lora_scale", -3.5),
    ("qwen-image", "lora_scale", 2.5),
    ("qwen-image", "lora_scale", 1e6),
    ("qwen-image", "image", DATA_IMAGE),
    ("qwen-image", "lora_weights", "https://huggingface.co/x/y/resolve/main/lora.safetensors"),
    ("qwen-image", "replicate_weights", "https://replicate.delivery/x/trained.tar"),
    ("qwen-image", "extra_lora_weights", [HTTPS_IMAGE, DATA_IMAGE]),
    ("qwen-image", "extra_lora_scale", [0.5, 1, -1]),
    ("qwen-image", "disable_safety_checker", True),
]


@pytest.mark.parametrize(("model", "param", "value"), ACCEPTED)
def test_boundary_values_are_accepted(model: str, param: str, value: Any) -> None:
    assert generate(model, **{param: value})[param] == value


REFUSED = [
    ("flux-dev", "prompt_strength", -0.01, "greater than or equal to 0"),
    ("flux-dev", "prompt_strength", 1.01, "less than or equal to 1"),
    ("flux-dev", "num_outputs", 0, "greater than or equal to 1"),
    ("flux-dev", "num_outputs", 5, "less than or equal to 4"),
    ("flux-dev", "num_inference_steps", 0, "greater than or equal to 1"),
    ("flux-dev", "num_inference_steps", 51, "less than or equal to 50"),
    ("flux-dev", "guidance", -0.1, "greater than or equal to 0"),
    ("flux-dev", "guidance", 10.01, "less than or equal to 10"),
    ("flux-dev", "output_quality", -1, "greater than or equal to 0"),
    ("flux-dev", "output_quality", 101, "less than or equal to 100"),
    ("flux-dev", "output_format", "gif", "'webp', 'jpg' or 'png'"),
    ("flux-dev", "megapixels", "2", "'1' or '0.25'"),
    ("flux-dev", "aspect_ratio", "7:3", "'1:1'"),
    ("flux-dev", "aspect_ratio", "match_input_image", "'1:1'"),
    ("flux-dev", "seed", 2**63, "less than or equal to"),
    ("flux-kontext-max", "safety_tolerance", -1, "greater than or equal to 0"),
    ("flux-kontext-max", "safety_tolerance", 7, "less than or equal to 6"),
    ("flux-kontext-max", "output_format", "webp", "'jpg' or 'png'"),
    ("flux-kontext-max", "aspect_ratio", "3:1", "'match_input_image'"),
    ("qwen-image", "num_inference_steps", 0, "greater than or equal to 1"),
    ("qwen-image", "num_inference_steps", 51, "less than or equal to 50"),
    ("qwen-image", "num_inference_steps", 100, "less than or equal to 50"),
    ("qwen-image", "guidance", 10.5, "less than or equal to 10"),
    ("qwen-image", "strength", 1.5, "less than or equal to 1"),
    ("qwen-image", "output_quality", 101, "less than or equal to 100"),
    ("qwen-image", "aspect_ratio", "21:9", "'1:1'"),
    ("qwen-image", "aspect_ratio", "4:5", "'1:1'"),
    ("qwen-image", "image_size", "huge", "'optimize_for_quality'"),
    ("qwen-image", "extra_lora_weights", "https://a/x,https://a/y", "valid list"),
    ("qwen-image", "extra_lora_scale", "0.5,1", "valid list"),
    ("qwen-image", "extra_lora_scale", [0.5] * 17, "at most 16"),
]


@pytest.mark.parametrize(("model", "param", "value", "rule"), REFUSED)
def test_values_outside_the_schema_are_refused(
    model: str, param: str, value: Any, rule: str
) -> None:
    error = param_error(model, **{param: value})
    assert error.message.startswith(f"Invalid parameter '{param}': ")
    assert rule in error.message
    assert error.fields["details"][0]["field"] == param
    assert rule in error.fields["details"][0]["rule"]


@pytest.mark.parametrize(
    "ratio", ["1:1", "16:9", "21:9", "3:2", "2:3", "4:5", "5:4", "3:4", "4:3", "9:16", "9:21"]
)
def test_flux_dev_takes_all_eleven_aspect_ratios(ratio: str) -> None:
    assert generate("flux-dev", aspect_ratio=ratio)["aspect_ratio"] == ratio


@pytest.mark.parametrize(
    "ratio",
    ["1:1", "16:9", "9:16", "4:3", "3:4", "3:2", "2:3", "4:5", "5:4", "21:9", "9:21", "2:1", "1:2"],
)
def test_kontext_aspect_ratios(ratio: str) -> None:
    assert generate("flux-kontext-max", aspect_ratio=ratio)["aspect_ratio"] == ratio


@pytest.mark.parametrize("ratio", ["1:1", "16:9", "9:16", "4:3", "3:4", "3:2", "2:3"])
def test_qwen_aspect_ratios(ratio: str) -> None:
    assert generate("qwen-image", aspect_ratio=ratio)["aspect_ratio"] == ratio


# --- strict types -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("param", "value", "rule"),
    [
        ("num_outputs", "2", "valid integer"),
        ("num_outputs", 2.0, "valid integer"),
        ("num_inference_steps", 28.5, "valid integer"),
        ("output_quality", 80.0, "valid integer"),
        ("seed", "42", "valid integer"),
        ("seed", 4.2, "valid integer"),
        ("num_outputs", True, "valid integer"),
        ("guidance", "3", "valid number"),
        ("guidance", True, "valid number"),
        ("guidance", None, "valid number"),
        ("guidance", float("nan"), "finite number"),
        ("guidance", float("inf"), "finite number"),
        ("go_fast", 1, "valid boolean"),
        ("go_fast", "true", "valid boolean"),
        ("disable_safety_checker", 0, "valid boolean"),
        ("megapixels", 1, "'1' or '0.25'"),
        ("megapixels", 0.25, "'1' or '0.25'"),
        ("aspect_ratio", 1, "'1:1'"),
        ("image", 5, "valid string"),
    ],
)
def test_no_type_coercion(param: str, value: Any, rule: str) -> None:
    error = param_error("flux-dev", **{param: value})
    assert f"Invalid parameter '{param}'" in error.message
    assert rule in error.message


def test_integer_is_accepted_for_a_number() -> None:
    assert generate(guidance=5)["guidance"] == 5.0


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf"), "1"])
def test_qwen_lora_scale_must_be_a_finite_number(value: Any) -> None:
    assert "Invalid parameter 'lora_scale'" in param_error("qwen-image", lora_scale=value).message


def test_qwen_extra_lora_scale_items_are_checked() -> None:
    error = param_error("qwen-image", extra_lora_scale=[1.0, "x"])
    assert "Invalid parameter 'extra_lora_scale[1]'" in error.message


# --- unknown parameters -------------------------------------------------------------------


def test_unknown_parameter_is_named() -> None:
    error = param_error(foo=1)
    assert error.message == "Unknown parameter 'foo' (not a parameter of flux-dev)"
    assert error.fields == {"details": [{"field": "foo", "rule": "not a parameter of flux-dev"}]}


def test_unknown_parameter_suggests_the_close_one() -> None:
    error = param_error(guidence=3)
    assert "Unknown parameter 'guidence'" in error.message
    assert "did you mean 'guidance'?" in error.message


@pytest.mark.parametrize(
    ("model", "param", "value"),
    [
        ("flux-kontext-max", "output_quality", 80),
        ("flux-kontext-max", "num_outputs", 2),
        ("flux-kontext-max", "guidance", 3.0),
        ("flux-kontext-max", "go_fast", True),
        ("flux-dev", "negative_prompt", "x"),
        ("qwen-image", "megapixels", "1"),
        ("qwen-image", "num_outputs", 2),
    ],
)
def test_parameters_of_other_models_are_unknown(model: str, param: str, value: Any) -> None:
    error = param_error(model, **{param: value})
    assert f"Unknown parameter '{param}' (not a parameter of {model}" in error.message


def test_all_problems_in_one_message() -> None:
    error = param_error(guidance=11, foo="bar", num_outputs="2")
    assert error.message == (
        "Invalid parameter 'num_outputs': Input should be a valid integer (got \"2\"); "
        "Invalid parameter 'guidance': Input should be less than or equal to 10 (got 11); "
        "Unknown parameter 'foo' (not a parameter of flux-dev)"
    )
    assert [d["field"] for d in error.fields["details"]] == ["num_outputs", "guidance", "foo"]
    assert all(set(d) == {"field", "rule"} for d in error.fields["details"])


def test_many_problems_are_summarised() -> None:
    error = param_error(**{f"unknown_{i}": i for i in range(15)})
    assert error.message.endswith("; and 5 more problems")
    assert len(error.fields["details"]) == 15


def test_huge_values_are_not_echoed() -> None:
    huge = "x" * 50_000
    for params in ({"aspect_ratio": huge}, {"prompt": huge}, {huge: 1}, {"image": huge}):
        error = param_error(**params)
        assert len(error.message) < 600
        assert huge[:200] not in error.message


# --- prompt ---------------------------------------------------------------------------------


@pytest.mark.parametrize("prompt", [None, "", "   \n\t"])
def test_generate_missing_prompt(prompt: Any) -> None:
    error = generate_error({"model_name": "flux-dev", "prompt": prompt})
    assert error.message == "Missing required field: prompt"
    assert generate_error({"model_name": "flux-dev"}).message == "Missing required field: prompt"


def test_prompt_length_is_bounded() -> None:
    long_prompt = "a" * models_module.MAX_PROMPT_CHARS
    assert parse_generate({"model_name": "flux-dev", "prompt": long_prompt}).prompt == long_prompt
    error = generate_error({"model_name": "flux-dev", "prompt": long_prompt + "a"})
    assert error.message == (
        "Invalid parameter 'prompt': String should have at most 10000 characters "
        "(got a string of 10001 characters)"
    )


def test_prompt_must_be_a_string() -> None:
    error = generate_error({"model_name": "flux-dev", "prompt": ["a"]})
    assert (
        error.message == "Invalid parameter 'prompt': Input should be a valid string (got a list)"
    )


def test_prompt_is_kept_as_given() -> None:
    request = parse_generate({"model_name": "qwen-image", "prompt": " 山水画, 水墨 "})
    assert request.prompt == " 山水画, 水墨 "
    assert request.replicate_input["prompt"] == " 山水画, 水墨 "


# --- file inputs: https and data only ---------------------------------------------------------

URL_FIELDS = [
    ("flux-dev", "image"),
    ("flux-kontext-max", "input_image"),
    ("qwen-image", "image"),
    ("qwen-image", "lora_weights"),
    ("qwen-image", "replicate_weights"),
]


@pytest.mark.parametrize(("model", "param"), URL_FIELDS)
@pytest.mark.parametrize(
    "url",
    [
        HTTPS_IMAGE,
        "HTTPS://EXAMPLE.COM/A.PNG",
        "https://example.com:8443/a.png?sig=abc&x=1",
        DATA_IMAGE,
        "data:,hello",
        "data:image/webp;base64,UklGRg==",
    ],
)
def test_https_and_data_urls_are_accepted(model: str, param: str, url: str) -> None:
    assert generate(model, **{param: url})[param] == url


PATHS = [
    "/etc/passwd",
    "../x.png",
    "./x.png",
    "~/x.png",
    "C:\\x",
    "C:/x.png",
    "\\\\server\\x",
    "x.png",
]


@pytest.mark.parametrize(("model", "param"), URL_FIELDS)
@pytest.mark.parametrize("path", PATHS)
def test_local_paths_are_refused(model: str, param: str, path: str) -> None:
    error = param_error(model, **{param: path})
    assert error.message.startswith(
        f"Invalid parameter '{param}': must be an https:// URL or a data: URI; "
        "local file paths are not accepted"
    )


@pytest.mark.parametrize(
    ("url", "scheme"),
    [
        ("file:///x", "file"),
        ("file:///etc/passwd", "file"),
        ("http://example.com/a.png", "http"),
        ("ftp://example.com/a.png", "ftp"),
        ("s3://bucket/a.png", "s3"),
        ("javascript://x", "javascript"),
    ],
)
def test_other_schemes_are_refused(url: str, scheme: str) -> None:
    error = param_error("flux-kontext-max", input_image=url)
    assert error.message.startswith(
        f"Invalid parameter 'input_image': scheme '{scheme}' is not allowed; "
        "must be an https:// URL or a data: URI"
    )


@pytest.mark.parametrize(
    "url",
    ["https://", "https:///path", "https://exa mple.com/a.png", "https://example.com/a\n.png"],
)
def test_malformed_https_urls_are_refused(url: str) -> None:
    assert "Invalid parameter 'image'" in param_error("flux-dev", image=url).message


@pytest.mark.parametrize("url", ["data:", "data:image/png;base64,", "data:image/png;base64"])
def test_malformed_data_uris_are_refused(url: str) -> None:
    assert "malformed data: URI" in param_error("flux-dev", image=url).message


def test_data_uri_size_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(models_module, "MAX_DATA_URI_CHARS", 100)
    ok = "data:image/png;base64," + "A" * 78
    assert generate(image=ok)["image"] == ok
    error = param_error(image=ok + "A")
    assert "data: URI is 101 characters; the limit is 100" in error.message


def test_url_length_is_bounded() -> None:
    url = "https://example.com/" + "a" * models_module.MAX_URL_CHARS
    assert "the limit is 4096" in param_error(image=url).message


def test_extra_lora_weights_items_are_checked() -> None:
    error = param_error("qwen-image", extra_lora_weights=[HTTPS_IMAGE, "/etc/passwd"])
    assert error.message.startswith("Invalid parameter 'extra_lora_weights[1]': must be an https")


@pytest.mark.parametrize(("model", "param"), URL_FIELDS)
def test_null_file_input_means_none(model: str, param: str) -> None:
    assert param not in generate(model, **{param: None})


# --- flux-kontext-max rules -----------------------------------------------------------------


def test_kontext_explicit_ratio_is_kept_without_image() -> None:
    assert generate("flux-kontext-max", aspect_ratio="16:9")["aspect_ratio"] == "16:9"


def test_kontext_explicit_ratio_is_kept_with_image() -> None:
    sent = generate("flux-kontext-max", aspect_ratio="4:3", input_image=HTTPS_IMAGE)
    assert sent["aspect_ratio"] == "4:3"


def test_kontext_match_input_image_needs_an_image() -> None:
    error = param_error("flux-kontext-max", aspect_ratio="match_input_image")
    assert error.message.startswith(
        "Invalid parameter 'aspect_ratio': 'match_input_image' needs an input_image"
    )
    sent = generate("flux-kontext-max", aspect_ratio="match_input_image", input_image=DATA_IMAGE)
    assert sent["aspect_ratio"] == "match_input_image"


def test_kontext_bad_image_is_reported_alone() -> None:
    error = param_error(
        "flux-kontext-max",
        input_image="/etc/passwd",
        aspect_ratio="match_input_image",
        safety_tolerance=5,
    )
    assert [d["field"] for d in error.fields["details"]] == ["input_image"]


@pytest.mark.parametrize("tolerance", [0, 1, 2])
def test_kontext_tolerance_up_to_two_with_image(tolerance: int) -> None:
    sent = generate("flux-kontext-max", input_image=HTTPS_IMAGE, safety_tolerance=tolerance)
    assert sent["safety_tolerance"] == tolerance


@pytest.mark.parametrize("tolerance", [3, 6])
def test_kontext_tolerance_above_two_with_image_is_refused(tolerance: int) -> None:
    error = param_error("flux-kontext-max", input_image=HTTPS_IMAGE, safety_tolerance=tolerance)
    assert error.message.startswith(
        "Invalid parameter 'safety_tolerance': must be <= 2 when input_image is given"
    )
    assert generate("flux-kontext-max", safety_tolerance=tolerance)["safety_tolerance"] == tolerance


# --- model_name ------------------------------------------------------------------------------


def test_model_name_is_required() -> None:
    error = generate_error({"prompt": "a cat"})
    assert error.message == "model_name is required"
    assert error.fields["supported_models"] == SUPPORTED_MODELS


def test_model_name_must_be_a_string() -> None:
    error = generate_error({"model_name": 3, "prompt": "a cat"})
    assert error.message.startswith("Invalid field 'model_name': must be a string")


def test_unsupported_model_uses_the_seed_message() -> None:
    with pytest.raises(ModelNotSupported) as info:
        parse_generate({"model_name": "invalid-model", "prompt": "a cat"})
    assert info.value.message == "Model 'invalid-model' not supported"
    assert info.value.body() == {
        "error": "Model 'invalid-model' not supported",
        "supported_models": ["flux-dev", "flux-kontext-max", "qwen-image"],
    }
    with pytest.raises(ModelNotSupported):
        parse_batch({"model_name": "sdxl", "prompts": ["x"]}, max_tasks=5)


def test_supported_can_narrow_the_models() -> None:
    with pytest.raises(ModelNotSupported) as info:
        parse_generate({"model_name": "qwen-image", "prompt": "x"}, supported=["flux-dev"])
    assert info.value.fields["supported_models"] == ["flux-dev"]


def test_long_model_name_is_truncated() -> None:
    with pytest.raises(ModelNotSupported) as info:
        parse_generate({"model_name": "m" * 10_000, "prompt": "x"})
    assert len(info.value.message) < 150


@pytest.mark.parametrize(("body", "kind"), [([1, 2], "a list"), ("x", "a string"), (None, "null")])
def test_body_must_be_an_object(body: object, kind: str) -> None:
    assert generate_error(body).message == f"Request body must be a JSON object, got {kind}"
    assert batch_error(body).message == f"Request body must be a JSON object, got {kind}"


# --- external_semaphore_id ----------------------------------------------------------------


@pytest.mark.parametrize("value", ["my-global-semaphore", "a", "svc:images.v2_x", "A" * 128])
def test_valid_semaphore_ids(value: str) -> None:
    request = parse_generate(
        {"model_name": "flux-dev", "prompt": "x", "external_semaphore_id": value}
    )
    assert request.external_semaphore_id == value


@pytest.mark.parametrize("value", [None, ""])
def test_empty_semaphore_id_means_none(value: Any) -> None:
    request = parse_generate(
        {"model_name": "flux-dev", "prompt": "x", "external_semaphore_id": value}
    )
    assert request.external_semaphore_id is None


@pytest.mark.parametrize(
    "value", ["bad id", "-x", ".x", "a" * 129, "abc\n", "a/b", "a{b}", 5, ["a"]]
)
def test_invalid_semaphore_ids(value: Any) -> None:
    error = generate_error(
        {"model_name": "flux-dev", "prompt": "x", "external_semaphore_id": value}
    )
    assert error.message.startswith(
        "Invalid field 'external_semaphore_id': must be 1-128 characters"
    )


# --- credentials ----------------------------------------------------------------------------


def test_token_is_parsed_and_hidden() -> None:
    body = {"model_name": "flux-dev", "prompt": "x", "credentials": {"replicate_api_token": TOKEN}}
    request = parse_generate(body)
    assert isinstance(request.replicate_api_token, SecretStr)
    assert request.replicate_api_token.get_secret_value() == TOKEN
    assert TOKEN not in repr(request)
    assert TOKEN not in str(request)
    assert TOKEN not in repr(request.replicate_input)


@pytest.mark.parametrize("credentials", [None, {}, {"replicate_api_token": None}])
def test_no_token(credentials: Any) -> None:
    body = {"model_name": "flux-dev", "prompt": "x", "credentials": credentials}
    assert parse_generate(body).replicate_api_token is None


@pytest.mark.parametrize(
    "token",
    [
        "",
        " ",
        TOKEN + " ",
        TOKEN + "\nX-Evil: 1",
        "r8_" + "a" * 600,
        12345,
        ["r8_x"],
        {"t": "r8_x"},
    ],
)
def test_bad_tokens_are_refused_without_echo(token: Any) -> None:
    body = {"model_name": "flux-dev", "prompt": "x", "credentials": {"replicate_api_token": token}}
    error = generate_error(body)
    assert error.message.startswith("Invalid field 'credentials.replicate_api_token'")
    for text in (str(error), repr(error), repr(error.fields)):
        assert TOKEN not in text
        assert "r8_" not in text


@pytest.mark.parametrize("credentials", ["r8_x", ["r8_x"], 5, True])
def test_credentials_must_be_an_object(credentials: Any) -> None:
    body = {"model_name": "flux-dev", "prompt": "x", "credentials": credentials}
    error = generate_error(body)
    assert error.message.startswith("Invalid field 'credentials': must be an object")
    assert "r8_x" not in error.message


def test_unknown_credentials_key_is_refused() -> None:
    body = {"model_name": "flux-dev", "prompt": "x", "credentials": {"api_token": TOKEN}}
    error = generate_error(body)
    assert error.message == (
        "Unknown field 'credentials.api_token' (credentials takes only replicate_api_token)"
    )
    assert TOKEN not in str(error)


def test_token_in_the_wrong_place_is_not_echoed() -> None:
    error = param_error(replicate_api_token=TOKEN, seed=TOKEN)
    assert "Unknown parameter 'replicate_api_token'" in error.message
    assert TOKEN not in str(error)
    assert TOKEN not in repr(error.fields)


def test_token_with_other_errors_is_not_echoed() -> None:
    body = {
        "model_name": "flux-dev",
        "prompt": "x",
        "guidance": 99,
        "credentials": {"replicate_api_token": TOKEN},
    }
    error = generate_error(body)
    assert TOKEN not in str(error)


# --- output_filename -------------------------------------------------------------------------


def test_output_filename_is_kept_as_given() -> None:
    body = {"model_name": "flux-dev", "prompt": "x", "output_filename": "mountain sunset.jpg"}
    assert parse_generate(body).output_filename == "mountain sunset.jpg"


@pytest.mark.parametrize("value", [None, ""])
def test_empty_output_filename_means_none(value: Any) -> None:
    body = {"model_name": "flux-dev", "prompt": "x", "output_filename": value}
    assert parse_generate(body).output_filename is None


@pytest.mark.parametrize("value", [5, ["a"], {"a": 1}, True])
def test_output_filename_must_be_a_string(value: Any) -> None:
    body = {"model_name": "flux-dev", "prompt": "x", "output_filename": value}
    assert generate_error(body).message == "Invalid field 'output_filename': must be a string"


def test_output_filename_is_bounded() -> None:
    body = {"model_name": "flux-dev", "prompt": "x", "output_filename": "a" * 256}
    assert generate_error(body).message == (
        "Invalid field 'output_filename': must be at most 255 characters (got 256)"
    )


# --- the seed's /generate example ------------------------------------------------------------


def test_seed_generate_example() -> None:
    request = parse_generate(
        {
            "model_name": "flux-dev",
            "prompt": "A serene mountain landscape at sunset",
            "output_filename": "mountain_sunset",
            "aspect_ratio": "16:9",
            "external_semaphore_id": "my-global-semaphore",
        }
    )
    assert request.model_name == "flux-dev"
    assert request.spec is MODELS["flux-dev"]
    assert request.prompt == "A serene mountain landscape at sunset"
    assert request.output_filename == "mountain_sunset"
    assert request.external_semaphore_id == "my-global-semaphore"
    assert request.replicate_api_token is None
    assert request.replicate_input["aspect_ratio"] == "16:9"


def test_seed_documented_parameters_are_accepted() -> None:
    flux = {
        "aspect_ratio": "16:9",
        "megapixels": "1",
        "output_format": "webp",
        "output_quality": 80,
        "seed": 42,
        "guidance": 3.0,
        "num_inference_steps": 28,
        "prompt_strength": 0.8,
        "num_outputs": 1,
        "go_fast": True,
        "disable_safety_checker": False,
    }
    assert generate("flux-dev", **flux) == {"prompt": "a cat", **flux}
    kontext = {
        "input_image": "https://example.com/image.jpg",
        "aspect_ratio": "match_input_image",
        "output_format": "png",
        "seed": 42,
        "safety_tolerance": 2,
        "prompt_upsampling": False,
    }
    assert generate("flux-kontext-max", **kontext) == {"prompt": "a cat", **kontext}
    # The seed's qwen example, within the real schema (steps 1-50).
    qwen = {
        "aspect_ratio": "16:9",
        "output_format": "webp",
        "output_quality": 80,
        "image_size": "optimize_for_quality",
        "guidance": 4.0,
        "num_inference_steps": 50,
        "lora_scale": 1.0,
        "enhance_prompt": False,
        "negative_prompt": "",
        "go_fast": True,
    }
    assert generate("qwen-image", **qwen).items() >= qwen.items()


# --- /generate-batch: tasks form ---------------------------------------------------------------

SEED_BATCH = {
    "model_name": "flux-dev",
    "tasks": [
        {"prompt": "A red sports car", "output_filename": "red_car.jpg", "aspect_ratio": "16:9"},
        {"prompt": "A blue ocean wave", "output_filename": "blue_wave", "num_outputs": 2},
        {"prompt": "A green forest path", "output_filename": "forest_path.png", "guidance": 5.0},
    ],
    "external_semaphore_id": "my-global-semaphore",
}


def test_seed_batch_example() -> None:
    request = parse_batch(SEED_BATCH, max_tasks=10)
    assert request.model_name == "flux-dev"
    assert request.spec is MODELS["flux-dev"]
    assert request.legacy is False
    assert request.external_semaphore_id == "my-global-semaphore"
    assert [t.index for t in request.tasks] == [0, 1, 2]
    assert [t.prompt for t in request.tasks] == [
        "A red sports car",
        "A blue ocean wave",
        "A green forest path",
    ]
    assert [t.output_filename for t in request.tasks] == [
        "red_car.jpg",
        "blue_wave",
        "forest_path.png",
    ]
    inputs = [t.replicate_input for t in request.tasks]
    assert [i["aspect_ratio"] for i in inputs] == ["16:9", "1:1", "1:1"]
    assert [i["num_outputs"] for i in inputs] == [1, 2, 1]
    assert [i["guidance"] for i in inputs] == [3.0, 3.0, 5.0]
    assert all("output_filename" not in i for i in inputs)


def test_top_level_parameters_are_defaults_and_tasks_win() -> None:
    request = parse_batch(
        {
            "model_name": "qwen-image",
            "aspect_ratio": "1:1",
            "guidance": 4.0,
            "tasks": [{"prompt": "a"}, {"prompt": "b", "aspect_ratio": "9:16"}],
        },
        max_tasks=10,
    )
    first, second = (t.replicate_input for t in request.tasks)
    assert (first["aspect_ratio"], first["guidance"]) == ("1:1", 4.0)
    assert (second["aspect_ratio"], second["guidance"]) == ("9:16", 4.0)
    assert first["prompt"] == "a"


def test_task_errors_carry_the_index() -> None:
    error = batch_error(
        {
            "model_name": "flux-dev",
            "tasks": [{"prompt": "a"}, {"prompt": "b"}, {"prompt": "c", "guidance": 11, "foo": 1}],
        }
    )
    assert error.message == (
        "Invalid parameter 'tasks[2].guidance': Input should be less than or equal to 10 "
        "(got 11); Unknown parameter 'tasks[2].foo' (not a parameter of flux-dev)"
    )
    assert error.fields["details"] == [
        {"field": "tasks[2].guidance", "rule": "Input should be less than or equal to 10"},
        {"field": "tasks[2].foo", "rule": "not a parameter of flux-dev"},
    ]


def test_errors_of_several_tasks_are_collected() -> None:
    error = batch_error(
        {
            "model_name": "flux-dev",
            "tasks": [{"prompt": "a", "num_outputs": 9}, {"prompt": "b", "seed": "1"}],
        }
    )
    assert [d["field"] for d in error.fields["details"]] == [
        "tasks[0].num_outputs",
        "tasks[1].seed",
    ]


def test_bad_default_is_reported_once_under_its_own_name() -> None:
    error = batch_error(
        {
            "model_name": "flux-dev",
            "guidance": 20,
            "fooo": 1,
            "tasks": [{"prompt": "a"}, {"prompt": "b"}, {"prompt": "c", "guidance": 2}],
        }
    )
    assert error.fields["details"] == [
        {"field": "guidance", "rule": "Input should be less than or equal to 10"},
        {"field": "fooo", "rule": "not a parameter of flux-dev"},
    ]


def test_kontext_rule_applies_to_merged_task() -> None:
    error = batch_error(
        {
            "model_name": "flux-kontext-max",
            "safety_tolerance": 5,
            "tasks": [{"prompt": "a"}, {"prompt": "b", "input_image": HTTPS_IMAGE}],
        }
    )
    assert error.fields["details"] == [
        {
            "field": "safety_tolerance",
            "rule": "must be <= 2 when input_image is given (Replicate's rule for image editing)",
        }
    ]


def test_missing_prompt_uses_the_seed_message() -> None:
    error = batch_error({"model_name": "flux-dev", "tasks": [{"output_filename": "x"}]})
    assert error.message == "Task 0 missing required field: prompt"
    assert error.body() == {"error": "Task 0 missing required field: prompt"}


@pytest.mark.parametrize("missing", [{}, {"prompt": None}, {"prompt": ""}, {"prompt": "  "}])
def test_missing_prompt_names_the_first_offender(missing: dict[str, Any]) -> None:
    tasks = [{"prompt": "a", "guidance": 99}, missing, {"guidance": 1}]
    error = batch_error({"model_name": "flux-dev", "tasks": tasks})
    assert error.message == "Task 1 missing required field: prompt"


def test_task_prompt_must_be_a_string() -> None:
    error = batch_error({"model_name": "flux-dev", "tasks": [{"prompt": 5}]})
    assert (
        error.message
        == "Invalid parameter 'tasks[0].prompt': Input should be a valid string (got 5)"
    )


@pytest.mark.parametrize("task", ["a prompt", 5, None, ["a"]])
def test_task_must_be_an_object(task: Any) -> None:
    error = batch_error({"model_name": "flux-dev", "tasks": [{"prompt": "a"}, task]})
    assert error.message == "Invalid field 'tasks[1]': must be an object"


def test_tasks_must_be_a_list() -> None:
    error = batch_error({"model_name": "flux-dev", "tasks": {"prompt": "a"}})
    assert error.message == "Invalid field 'tasks': must be a list of task objects, got an object"


def test_empty_tasks() -> None:
    error = batch_error({"model_name": "flux-dev", "tasks": []})
    assert error.message == "Invalid field 'tasks': must not be empty"


def test_max_tasks() -> None:
    tasks = [{"prompt": f"p{i}"} for i in range(5)]
    assert len(parse_batch({"model_name": "flux-dev", "tasks": tasks}, max_tasks=5).tasks) == 5
    error = batch_error({"model_name": "flux-dev", "tasks": [*tasks, {"prompt": "x"}]}, max_tasks=5)
    assert error.message == "Batch has 6 tasks; the limit is MAX_BATCH_TASKS=5"
    error = batch_error({"model_name": "flux-dev", "prompts": ["p"] * 6}, max_tasks=5)
    assert error.message == "Batch has 6 tasks; the limit is MAX_BATCH_TASKS=5"


def test_max_tasks_is_checked_before_the_tasks() -> None:
    error = batch_error({"model_name": "flux-dev", "tasks": [{}] * 6}, max_tasks=5)
    assert error.message.startswith("Batch has 6 tasks")


def test_tasks_and_prompts_together_are_refused() -> None:
    error = batch_error({"model_name": "flux-dev", "tasks": [{"prompt": "a"}], "prompts": ["b"]})
    assert error.message == "Give either 'tasks' or the legacy 'prompts', not both"


def test_neither_tasks_nor_prompts() -> None:
    error = batch_error({"model_name": "flux-dev"})
    assert error.message.startswith("Missing required field: tasks")


def test_custom_filenames_with_tasks_is_refused() -> None:
    error = batch_error(
        {"model_name": "flux-dev", "tasks": [{"prompt": "a"}], "custom_filenames": ["x"]}
    )
    assert error.message.startswith("'custom_filenames' belongs to the legacy 'prompts' form")


@pytest.mark.parametrize("key", ["prompt", "output_filename"])
def test_top_level_task_fields_are_refused_in_a_batch(key: str) -> None:
    error = batch_error({"model_name": "flux-dev", key: "x", "tasks": [{"prompt": "a"}]})
    assert (
        error.message
        == f"Invalid field '{key}': belongs in each task, not at the top level of a batch"
    )


@pytest.mark.parametrize("key", ["model_name", "external_semaphore_id", "credentials"])
def test_batch_level_fields_inside_a_task_are_refused(key: str) -> None:
    error = batch_error({"model_name": "flux-dev", "tasks": [{"prompt": "a", key: "x"}]})
    assert error.message == (
        f"Invalid field 'tasks[0].{key}': set once at the top level of the batch, not per task"
    )


def test_task_output_filename_is_checked() -> None:
    error = batch_error(
        {"model_name": "flux-dev", "tasks": [{"prompt": "a", "output_filename": 3}]}
    )
    assert error.message == "Invalid field 'tasks[0].output_filename': must be a string"


def test_batch_credentials_and_semaphore() -> None:
    body = {
        "model_name": "flux-dev",
        "tasks": [{"prompt": "a"}],
        "external_semaphore_id": "cross-service-limit",
        "credentials": {"replicate_api_token": TOKEN},
    }
    request = parse_batch(body, max_tasks=5)
    assert request.external_semaphore_id == "cross-service-limit"
    assert request.replicate_api_token is not None
    assert request.replicate_api_token.get_secret_value() == TOKEN
    assert TOKEN not in repr(request)
    body["tasks"] = [{"prompt": "a", "guidance": "high"}]
    assert TOKEN not in str(batch_error(body))
    body["credentials"] = {"replicate_api_token": TOKEN + " "}
    assert TOKEN not in str(batch_error(body))


# --- /generate-batch: legacy form ------------------------------------------------------------


def test_seed_legacy_example() -> None:
    request = parse_batch(
        {
            "model_name": "flux-dev",
            "prompts": ["A red car", "A blue house"],
            "custom_filenames": ["red_car", "blue_house"],
        },
        max_tasks=10,
    )
    assert request.legacy is True
    assert [(t.index, t.prompt, t.output_filename) for t in request.tasks] == [
        (0, "A red car", "red_car"),
        (1, "A blue house", "blue_house"),
    ]
    assert request.tasks[1].replicate_input == generate(prompt="A blue house")


def test_legacy_without_filenames_and_with_defaults() -> None:
    request = parse_batch(
        {"model_name": "qwen-image", "prompts": ["a", "b"], "aspect_ratio": "1:1"}, max_tasks=10
    )
    assert [t.output_filename for t in request.tasks] == [None, None]
    assert [t.replicate_input["aspect_ratio"] for t in request.tasks] == ["1:1", "1:1"]


def test_legacy_null_filename_entries() -> None:
    request = parse_batch(
        {"model_name": "flux-dev", "prompts": ["a", "b"], "custom_filenames": [None, "b"]},
        max_tasks=10,
    )
    assert [t.output_filename for t in request.tasks] == [None, "b"]


@pytest.mark.parametrize("names", [["a"], ["a", "b", "c"], []])
def test_legacy_filenames_must_match_prompts(names: list[str]) -> None:
    error = batch_error(
        {"model_name": "flux-dev", "prompts": ["a", "b"], "custom_filenames": names}
    )
    assert error.message == (
        f"Invalid field 'custom_filenames': has {len(names)} entries but 'prompts' has 2; "
        "they must have the same length"
    )


def test_legacy_filenames_must_be_a_list() -> None:
    error = batch_error({"model_name": "flux-dev", "prompts": ["a"], "custom_filenames": "a"})
    assert error.message == "Invalid field 'custom_filenames': must be a list of strings"


def test_legacy_filename_items_are_checked() -> None:
    error = batch_error({"model_name": "flux-dev", "prompts": ["a"], "custom_filenames": [1]})
    assert error.message == "Invalid field 'custom_filenames[0]': must be a string"


def test_legacy_missing_prompt_uses_the_seed_message() -> None:
    error = batch_error({"model_name": "flux-dev", "prompts": ["a", "", None]})
    assert error.message == "Task 1 missing required field: prompt"


def test_legacy_prompt_must_be_a_string() -> None:
    error = batch_error({"model_name": "flux-dev", "prompts": ["a", 5]})
    assert error.message == "Invalid field 'prompts[1]': must be a string"


def test_legacy_prompts_must_be_a_non_empty_list() -> None:
    assert batch_error({"model_name": "flux-dev", "prompts": "a"}).message == (
        "Invalid field 'prompts': must be a list of strings, got a string"
    )
    assert batch_error({"model_name": "flux-dev", "prompts": []}).message == (
        "Invalid field 'prompts': must not be empty"
    )


def test_legacy_errors_name_the_prompt_and_the_default() -> None:
    error = batch_error(
        {"model_name": "flux-dev", "prompts": ["a", "b" * 10_001], "num_outputs": 7}
    )
    assert error.fields["details"] == [
        {"field": "num_outputs", "rule": "Input should be less than or equal to 4"},
        {"field": "prompts[1]", "rule": "String should have at most 10000 characters"},
    ]


def test_empty_file_input_is_refused() -> None:
    error = param_error("flux-kontext-max", input_image="")
    assert error.message == (
        "Invalid parameter 'input_image': must not be empty (omit the parameter or send null "
        'for none) (got "")'
    )


def test_data_scheme_is_case_insensitive() -> None:
    assert generate(image="DATA:image/png;base64,AAAA")["image"] == "DATA:image/png;base64,AAAA"
