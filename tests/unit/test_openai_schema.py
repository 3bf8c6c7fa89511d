"""service.schemas.openai: the OpenAI images request → the service's batch (no server needed)."""

from __future__ import annotations

import itertools
import math
from typing import Any

import pytest

from service.errors import BadRequest
from service.schemas import MODELS
from service.schemas.openai import (
    ASPECT_RATIOS,
    SIZE_RATIO_TOLERANCE,
    ModelNotFound,
    nearest_ratio,
    parse_images_request,
    size_params,
)


def parse(max_n: int = 10, header: str | None = None, **body: Any) -> Any:
    return parse_images_request(
        {"prompt": "A fox", **body}, max_n=max_n, header_semaphore_id=header
    )


def test_no_two_ratios_of_a_model_are_within_twice_the_tolerance() -> None:
    # So that "the nearest ratio within the tolerance" can never be a coin toss.
    for ratios in ASPECT_RATIOS.values():
        logs = sorted(math.log(int(a) / int(b)) for a, b in (r.split(":") for r in ratios))
        gaps = [b - a for a, b in itertools.pairwise(logs)]
        assert min(gaps) > 2 * math.log1p(SIZE_RATIO_TOLERANCE)


@pytest.mark.parametrize(
    ("model", "size", "expected"),
    [
        ("flux-dev", "1792x1024", {"aspect_ratio": "16:9", "megapixels": "1"}),
        ("flux-dev", "672x384", {"aspect_ratio": "16:9", "megapixels": "0.25"}),
        ("flux-dev", "1152x896", {"aspect_ratio": "4:3", "megapixels": "1"}),  # cog-flux's 4:3
        ("flux-kontext-max", "1024x2048", {"aspect_ratio": "1:2"}),
        ("qwen-image", "1472x1140", {"aspect_ratio": "4:3"}),  # Qwen-Image's native 4:3
        ("qwen-image", "1024x1792", {"aspect_ratio": "9:16"}),
    ],
)
def test_sizes_map_to_the_models_parameters(
    model: str, size: str, expected: dict[str, str]
) -> None:
    assert size_params(MODELS[model], size) == expected


def test_nearest_ratio_refuses_what_is_too_far() -> None:
    assert nearest_ratio(1000, 1000, ("16:9", "1:1")) == "1:1"
    assert nearest_ratio(1200, 1000, ("16:9", "1:1")) is None


def test_a_request_becomes_n_identical_tasks_of_one_batch() -> None:
    request = parse(
        model="black-forest-labs/flux-dev", n=3, size="512x512", output_format="jpeg",
        output_compression=70, quality="hd", style="natural", user="u", guidance=4.5,
    )  # fmt: skip
    assert request.n == 3 and request.response_format == "url"
    batch = request.batch
    assert batch.model_name == "flux-dev" and len(batch.tasks) == 3
    sent = batch.tasks[0].replicate_input
    assert sent["aspect_ratio"] == "1:1" and sent["megapixels"] == "0.25"
    assert sent["output_format"] == "jpg" and sent["output_quality"] == 70
    assert sent["guidance"] == 4.5
    assert not {"quality", "style", "user", "n", "size"} & set(sent)
    assert all(task.replicate_input == sent for task in batch.tasks)


def test_the_semaphore_comes_from_the_header_or_the_body_but_once() -> None:
    assert parse(header="sem-a").batch.external_semaphore_id == "sem-a"
    assert parse(external_semaphore_id="sem-b").batch.external_semaphore_id == "sem-b"
    assert parse(header="sem-a", external_semaphore_id="sem-a").batch.external_semaphore_id
    with pytest.raises(BadRequest) as caught:
        parse(header="sem-a", external_semaphore_id="sem-b")
    assert caught.value.fields["param"] == "external_semaphore_id"
    with pytest.raises(BadRequest) as caught:
        parse(header="bad id!")
    assert caught.value.fields["param"] == "X-External-Semaphore-Id"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"n": 0}, "n"),
        ({"n": 5, "max_n": 4}, "n"),
        ({"n": 2.0}, "n"),
        ({"n": True}, "n"),
        ({"size": "1024x2048"}, "size"),
        ({"response_format": "png"}, "response_format"),
        ({"background": "transparent"}, "background"),
        ({"prompt": "   "}, "prompt"),
        ({"prompt": 5}, "prompt"),
        ({"model": "flux-kontext-max", "output_compression": 50}, "output_compression"),
        ({"output_compression": 50, "output_quality": 60}, "output_compression"),
        ({"megapixels": "1", "size": "1024x1024"}, "megapixels"),
        ({"model_name": "flux-dev"}, "model_name"),
        ({"output_filename": "x.png"}, "output_filename"),
        ({"num_inference_steps": 99}, "num_inference_steps"),
        ({"nonsense": 1}, "nonsense"),
    ],
)
def test_bad_fields_name_themselves(body: dict[str, Any], param: str) -> None:
    max_n = body.pop("max_n", 10)
    with pytest.raises(BadRequest) as caught:
        parse(max_n, **body)
    fields = caught.value.fields
    named = fields.get("param") or fields["details"][0]["field"]
    assert named == param
    assert param in caught.value.message


def test_an_unknown_model_is_model_not_found() -> None:
    with pytest.raises(ModelNotFound) as caught:
        parse(model="dall-e-3")
    assert caught.value.status_code == 404
    assert caught.value.fields == {"param": "model", "code": "model_not_found"}
