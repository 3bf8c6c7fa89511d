"""POST /v1/images/generations and GET /v1/models, driven by the official `openai` SDK against the
app served by uvicorn on a loopback port, with a real Redis and the simulator.

The limits are proven by what the simulator saw (each test pays with a Replicate token of its
own, so its numbers are its own), the size mapping by the inputs Replicate received and the
pixels of the images it drew.
"""

from __future__ import annotations

import base64
import io
import itertools
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from PIL import Image

from service.app import create_app
from tests.api.conftest import ADMIN, ADMIN_KEY, SERVER_TOKEN, mark_store_known, settings_for
from tests.fixtures.redis_server import RedisServer
from tests.fixtures.simulator import FAST_CONFIG, SimulatorHandle, start_simulator
from tests.fixtures.threaded_server import serve_in_thread

pytestmark = pytest.mark.redis

ACCOUNT_LIMIT = 2
USER_TOKENS = [f"r8_openai_user_{i:02d}_c41f7e" for i in range(64)]
REFUSED_TOKEN = "r8_not_known_to_replicate_0b1d"
_next_token = itertools.count()


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorHandle]:
    # Long enough that the tasks of one request overlap; only the known tokens are valid.
    config = FAST_CONFIG.replace(latency_s=0.5, tokens=frozenset({SERVER_TOKEN, *USER_TOKENS}))
    with start_simulator(config, wait_for_stop=False) as base_url:
        yield SimulatorHandle(base_url, config)


@pytest.fixture(scope="module")
def service_url(module_redis_server: RedisServer, sim: SimulatorHandle) -> Iterator[str]:
    mark_store_known(module_redis_server.url)
    settings = settings_for(
        module_redis_server.url, sim.base_url, replicate_concurrent_limit=ACCOUNT_LIMIT
    )
    with serve_in_thread(create_app(settings), name="openai-api", lifespan="on") as url:
        yield url


@pytest.fixture
def token() -> str:
    """A Replicate account of this test's own."""
    return USER_TOKENS[next(_next_token)]


def client(service_url: str, api_key: str) -> openai.OpenAI:
    return openai.OpenAI(api_key=api_key, base_url=service_url + "/v1", max_retries=0, timeout=60)


def inputs(sim: SimulatorHandle, token: str) -> list[dict[str, Any]]:
    """What Replicate received from this account, oldest first."""
    response = httpx.get(
        sim.base_url + "/v1/predictions", headers={"Authorization": f"Bearer {token}"}
    )
    response.raise_for_status()
    return [p["input"] for p in reversed(response.json()["results"])]


def create_semaphore(service_url: str, semaphore_id: str, limit: int) -> None:
    response = httpx.post(
        service_url + "/global-semaphores",
        json={"semaphore_id": semaphore_id, "limit": limit},
        headers=ADMIN,
    )
    assert response.status_code == 201, response.text


def semaphore_counters(service_url: str, semaphore_id: str) -> dict[str, int]:
    response = httpx.get(f"{service_url}/global-semaphores/{semaphore_id}")
    response.raise_for_status()
    return dict(response.json()["counters"])


# -- answers --------------------------------------------------------------------------------------


def test_url_answer_with_the_admin_key(service_url: str, sim: SimulatorHandle) -> None:
    result = client(service_url, ADMIN_KEY).images.generate(
        model="flux-dev", prompt="A red fox in the snow"
    )
    assert result.created > 0
    assert len(result.data) == 1
    image = result.data[0]
    assert image.b64_json is None and image.revised_prompt is None
    assert image.url is not None and image.url.startswith(sim.base_url + "/files/")
    assert httpx.get(image.url).status_code == 200


def test_b64_json_answer_carries_the_image_bytes(
    service_url: str, sim: SimulatorHandle, token: str
) -> None:
    result = client(service_url, token).images.generate(
        model="qwen-image",
        prompt="A lighthouse at dusk",
        size="1024x1792",
        response_format="b64_json",
    )
    assert len(result.data) == 1 and result.data[0].url is None
    raw = base64.b64decode(result.data[0].b64_json or "")
    with Image.open(io.BytesIO(raw)) as picture:
        assert picture.format == "WEBP"  # qwen-image's default output_format
        assert picture.size == (928, 1664)  # qwen-image draws 9:16 at this size
    assert inputs(sim, token)[0]["aspect_ratio"] == "9:16"


def test_n_images_run_as_tasks_under_the_account_limit(
    service_url: str, sim: SimulatorHandle, token: str
) -> None:
    result = client(service_url, token).images.generate(
        model="flux-dev", prompt="Three boats", n=3, response_format="b64_json"
    )
    assert len(result.data) == 3
    assert all(item.b64_json for item in result.data)
    stats = sim.token_stats(token)
    assert stats["created"] == 3
    assert stats["max_in_flight"] <= ACCOUNT_LIMIT  # REPLICATE_CONCURRENT_LIMIT held


@pytest.mark.parametrize(
    ("model", "size", "expected", "pixels"),
    [
        ("flux-dev", "1024x1024", {"aspect_ratio": "1:1", "megapixels": "1"}, (1024, 1024)),
        ("flux-dev", "1792x1024", {"aspect_ratio": "16:9", "megapixels": "1"}, (1344, 768)),
        ("flux-dev", "512x512", {"aspect_ratio": "1:1", "megapixels": "0.25"}, (512, 512)),
        ("flux-dev", "auto", {"aspect_ratio": "1:1", "megapixels": "1"}, (1024, 1024)),
        ("flux-kontext-max", "1024x1792", {"aspect_ratio": "9:16"}, (768, 1344)),
        ("flux-kontext-max", "2048x1024", {"aspect_ratio": "2:1"}, (1440, 720)),
        ("qwen-image", "1536x1024", {"aspect_ratio": "3:2"}, (1584, 1056)),
        ("qwen-image", None, {"aspect_ratio": "16:9"}, (1664, 928)),
    ],
)
def test_size_maps_to_each_models_aspect_ratio(
    service_url: str,
    sim: SimulatorHandle,
    token: str,
    model: str,
    size: str | None,
    expected: dict[str, str],
    pixels: tuple[int, int],
) -> None:
    extra: dict[str, Any] = {} if size is None else {"size": size}
    result = client(service_url, token).images.generate(
        model=model, prompt="A mountain lake", response_format="b64_json", **extra
    )
    sent = inputs(sim, token)[0]
    assert {key: sent.get(key) for key in expected} == expected
    with Image.open(io.BytesIO(base64.b64decode(result.data[0].b64_json or ""))) as picture:
        assert picture.size == pixels


def test_extra_body_reaches_the_model_and_aliases_resolve(
    service_url: str, sim: SimulatorHandle, token: str
) -> None:
    client(service_url, token).images.generate(
        model="qwen/qwen-image",
        prompt="A cat",
        output_format="png",
        quality="hd",
        style="vivid",
        user="someone",
        extra_body={"num_inference_steps": 12, "seed": 7, "negative_prompt": "blurry"},
    )
    sent = inputs(sim, token)[0]
    assert sent["num_inference_steps"] == 12 and sent["seed"] == 7
    assert sent["negative_prompt"] == "blurry" and sent["output_format"] == "png"
    assert not {"quality", "style", "user"} & set(sent)


def test_each_task_gives_its_models_outputs(service_url: str, token: str) -> None:
    result = client(service_url, token).images.generate(
        model="flux-dev", prompt="Pairs", n=2, extra_body={"num_outputs": 2}
    )
    assert len(result.data) == 4
    assert len({item.url for item in result.data}) == 4


def test_a_failed_prediction_is_502_and_the_sdk_does_not_pay_for_it_again(
    service_url: str, sim: SimulatorHandle, token: str
) -> None:
    sim.set_faults(fail_fraction=1.0, fail_message="NSFW content detected")
    try:
        with pytest.raises(openai.InternalServerError) as caught:
            # The SDK's default retries: x-should-retry: false stops them.
            openai.OpenAI(api_key=token, base_url=service_url + "/v1").images.generate(prompt="x")
    finally:
        sim.clear_faults()
    assert caught.value.status_code == 502 and caught.value.code == "prediction_failed"
    assert "NSFW content detected" in str(caught.value)
    assert sim.token_stats(token)["created"] == 1


# -- external semaphore -----------------------------------------------------------------------


@pytest.mark.parametrize("named_by", ["header", "extra_body"])
def test_an_external_semaphore_holds_its_limit(
    service_url: str, sim: SimulatorHandle, token: str, named_by: str
) -> None:
    semaphore_id = f"openai-{named_by}-{token[-12:]}"
    create_semaphore(service_url, semaphore_id, 1)
    named: dict[str, Any] = (
        {"extra_headers": {"X-External-Semaphore-Id": semaphore_id}}
        if named_by == "header"
        else {"extra_body": {"external_semaphore_id": semaphore_id}}
    )
    result = client(service_url, token).images.generate(
        model="flux-dev", prompt="A queue of ducks", n=3, **named
    )
    assert len(result.data) == 3
    stats = sim.token_stats(token)
    assert stats["created"] == 3
    assert stats["max_in_flight"] == 1  # the semaphore's limit, below the account's 2
    assert semaphore_counters(service_url, semaphore_id)["acquired"] == 3


def test_an_unknown_external_semaphore_is_404_naming_it(service_url: str, token: str) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client(service_url, token).images.generate(
            prompt="x", extra_headers={"X-External-Semaphore-Id": "no-such-semaphore"}
        )
    assert caught.value.param == "external_semaphore_id"
    assert caught.value.code == "semaphore_not_found"
    assert "no-such-semaphore" in str(caught.value)


# -- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "size", "says"),
    [
        ("flux-dev", "1024x2048", "matches none of flux-dev's aspect ratios"),
        ("qwen-image", "2048x1024", "matches none of qwen-image's aspect ratios"),
        ("flux-dev", "big", "must be 'auto' or 'WIDTHxHEIGHT'"),
        ("flux-dev", "10x10", "each be 64-4096 pixels"),
    ],
)
def test_an_unsupported_size_is_400_naming_the_field_and_rule(
    service_url: str, sim: SimulatorHandle, token: str, model: str, size: str, says: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client(service_url, token).images.generate(model=model, prompt="x", size=size)
    assert caught.value.param == "size" and caught.value.code == "invalid_size"
    assert "Invalid field 'size'" in str(caught.value) and says in str(caught.value)
    assert sim.token_stats(token)["created"] == 0


@pytest.mark.parametrize("n", [0, 11, -1])
def test_a_bad_n_is_400_naming_the_field(service_url: str, token: str, n: int) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client(service_url, token).images.generate(prompt="x", n=n)
    assert caught.value.param == "n"
    assert "Invalid field 'n': must be an integer from 1 to 10" in str(caught.value)


@pytest.mark.parametrize(
    ("extra", "param", "says"),
    [
        ({"guidance": 99}, "guidance", "Invalid parameter 'guidance'"),
        ({"guidanse": 3}, "guidanse", "did you mean 'guidance'?"),
        ({"response_format": "png"}, "response_format", "Invalid field 'response_format'"),
        ({"stream": True}, "stream", "streaming is not supported"),
        ({"aspect_ratio": "16:9", "size": "1024x1024"}, "aspect_ratio", "either 'size'"),
        ({"credentials": {"replicate_api_token": "r8_x"}}, "credentials", "Authorization"),
    ],
)
def test_bad_fields_are_400_naming_them(
    service_url: str, token: str, extra: dict[str, Any], param: str, says: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client(service_url, token).images.generate(model="flux-dev", prompt="x", extra_body=extra)
    assert caught.value.param == param
    assert says in str(caught.value)


def test_an_unknown_model_is_404_model_not_found(service_url: str, token: str) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client(service_url, token).images.generate(model="dall-e-3", prompt="x")
    assert caught.value.code == "model_not_found" and caught.value.param == "model"
    assert "dall-e-3" in str(caught.value) and "flux-dev" in str(caught.value)


@pytest.mark.parametrize(
    ("api_key", "says"),
    [
        ("sk-not-a-key-of-this-service", "expected the service's admin key"),
        (REFUSED_TOKEN, "Replicate refused this token"),
        (ADMIN_KEY + "x", "expected the service's admin key"),
    ],
)
def test_bad_keys_are_401(service_url: str, sim: SimulatorHandle, api_key: str, says: str) -> None:
    with pytest.raises(openai.AuthenticationError) as caught:
        # An invalid body too: an unauthenticated caller learns nothing about it.
        client(service_url, api_key).images.generate(model="dall-e-3", prompt="x", n=0)
    assert caught.value.code == "invalid_api_key"
    assert says in str(caught.value)
    assert api_key not in str(caught.value)


def test_errors_are_in_openais_envelope(service_url: str) -> None:
    url = service_url + "/v1/images/generations"
    missing = httpx.post(url, json={"prompt": "x"})
    assert missing.status_code == 401
    assert set(missing.json()) == {"error"}
    assert set(missing.json()["error"]) == {"message", "type", "param", "code"}
    auth = {"Authorization": f"Bearer {ADMIN_KEY}"}
    bad = httpx.post(url, content=b"{not json", headers=auth)
    assert bad.status_code == 400
    assert bad.json()["error"]["type"] == "invalid_request_error"
    assert "Malformed JSON" in bad.json()["error"]["message"]
    no_prompt = httpx.post(url, json={"model": "flux-dev"}, headers=auth)
    assert no_prompt.status_code == 400
    assert no_prompt.json()["error"]["param"] == "prompt"


# -- models --------------------------------------------------------------------------------------


def test_models_are_listed_and_retrieved(service_url: str) -> None:
    api = client(service_url, ADMIN_KEY)
    models = list(api.models.list())
    assert [m.id for m in models] == ["flux-dev", "flux-kontext-max", "qwen-image"]
    assert {m.owned_by for m in models} == {"black-forest-labs", "qwen"}
    assert api.models.retrieve("qwen-image").id == "qwen-image"
    with pytest.raises(openai.NotFoundError) as caught:
        api.models.retrieve("dall-e-3")
    assert caught.value.code == "model_not_found"


def test_an_unknown_path_under_v1_is_404_in_openais_envelope(service_url: str) -> None:
    """Any 404 under /v1/, even one no route matches (a model id with a line break), is in
    OpenAI's envelope: OpenAI's clients read nothing else."""
    for path in ("/v1/models/a%0Ab", "/v1/no-such-thing"):
        response = httpx.get(service_url + path, timeout=10)
        assert response.status_code == 404
        error = response.json()["error"]
        assert isinstance(error, dict) and "Not found" in error["message"], error
