"""Bad input never gets a 500 or a traceback: every case is a 4xx `{"error": ...}` naming the
problem. Also: unknown routes and methods, X-Request-ID, and the catch-all 500 handler."""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.api.conftest import ADMIN, Api, MakeApi, flux

# One app per set of settings for the whole module (the tests only send requests and read the
# answers), on the module's event loop.
pytestmark = [pytest.mark.redis, pytest.mark.asyncio(loop_scope="module")]


@pytest.fixture
def api(shared_api: Api) -> Api:
    return shared_api


@pytest.fixture
def make_api(shared_make_api: MakeApi) -> MakeApi:
    return shared_make_api


JSON = {"Content-Type": "application/json"}
ENDPOINTS = ["/generate", "/generate-batch"]


def assert_error(response: Any, status: int, *fragments: str) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert isinstance(body, dict) and isinstance(body.get("error"), str), body
    assert "Traceback" not in response.text
    for fragment in fragments:
        assert fragment in body["error"], (fragment, body["error"])
    return str(body["error"])


# -- the body as bytes -----------------------------------------------------------------------


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize("raw", [b"", b"   ", b"\n\t"])
async def test_empty_body(api: Api, path: str, raw: bytes) -> None:
    response = await api.post(path, content=raw, headers={**JSON, **ADMIN})
    assert_error(response, 400)
    assert response.json() == {"error": "Request body is empty; expected a JSON object"}


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize(
    "raw",
    [b'{"model_name": ', b"{'model_name': 'flux-dev'}", b'{"a": 1,}', b"not json", b'{"a": 1} x'],
)
async def test_malformed_json_names_the_position(api: Api, path: str, raw: bytes) -> None:
    response = await api.post(path, content=raw, headers={**JSON, **ADMIN})
    assert_error(response, 400, "Malformed JSON in request body", "line 1 column")


@pytest.mark.parametrize("path", [*ENDPOINTS, "/global-semaphores"])
@pytest.mark.parametrize(
    ("raw", "kind"),
    [
        (b"[]", "a list"),
        (b'"text"', "a string"),
        (b"null", "null"),
        (b"42", "a number"),
        (b"true", "a boolean"),
    ],
)
async def test_non_object_body(api: Api, path: str, raw: bytes, kind: str) -> None:
    response = await api.post(path, content=raw, headers={**JSON, **ADMIN})
    assert_error(response, 400, "must be a JSON object", kind)


@pytest.mark.parametrize("path", [*ENDPOINTS, "/global-semaphores"])
@pytest.mark.parametrize("depth", [40, 5_000, 200_000])
async def test_deep_nesting_is_400(make_api: MakeApi, path: str, depth: int) -> None:
    async with make_api(max_body_bytes=1024 * 1024) as api:
        raw = b'{"model_name": "flux-dev", "prompt": "x", "seed": ' + b"[" * depth + b"]" * depth
        response = await api.post(path, content=raw + b"}", headers={**JSON, **ADMIN})
        assert_error(response, 400, "nested too deeply")
        bare = await api.post(path, content=b"[" * depth + b"]" * depth, headers=ADMIN)
        assert_error(bare, 400, "nested too deeply")


@pytest.mark.parametrize("constant", [b"NaN", b"Infinity", b"-Infinity"])
async def test_non_standard_json_constants(api: Api, constant: bytes) -> None:
    raw = b'{"model_name": "flux-dev", "prompt": "x", "guidance": ' + constant + b"}"
    response = await api.post("/generate", content=raw, headers={**JSON, **ADMIN})
    assert_error(response, 400, "Invalid JSON in request body", "not valid JSON")


async def test_huge_integer(api: Api) -> None:
    raw = b'{"model_name": "flux-dev", "prompt": "x", "seed": ' + b"9" * 10_000 + b"}"
    response = await api.post("/generate", content=raw, headers={**JSON, **ADMIN})
    assert_error(response, 400, "Invalid JSON in request body")


async def test_invalid_utf8(api: Api) -> None:
    raw = b'{"model_name": "flux-dev", "prompt": "\xff\xfe"}'
    response = await api.post("/generate", content=raw, headers={**JSON, **ADMIN})
    assert_error(response, 400, "not valid UTF-8")


async def test_utf8_bom_is_accepted(api: Api) -> None:
    raw = b"\xef\xbb\xbf" + json.dumps(flux()).encode()
    response = await api.post("/generate", content=raw, headers={**JSON, **ADMIN})
    assert response.status_code == 200


@pytest.mark.parametrize("path", [*ENDPOINTS, "/global-semaphores"])
async def test_body_over_the_cap_by_content_length(make_api: MakeApi, path: str) -> None:
    async with make_api(max_body_bytes=2048) as api:
        body = json.dumps(flux("x" * 4000)).encode()
        response = await api.post(path, content=body, headers={**JSON, **ADMIN})
    assert_error(response, 413)
    assert response.json() == {
        "error": "Request body too large: limit is 2048 bytes (MAX_BODY_BYTES)"
    }


async def test_body_over_the_cap_without_content_length(make_api: MakeApi) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"model_name": "flux-dev", "prompt": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}'

    async with make_api(max_body_bytes=4096) as api:
        response = await api.post("/generate", content=chunks(), headers={**JSON, **ADMIN})
    assert_error(response, 413, "limit is 4096 bytes (MAX_BODY_BYTES)")


async def test_body_just_under_the_cap_is_read(make_api: MakeApi) -> None:
    async with make_api(max_body_bytes=2048) as api:
        body = json.dumps(flux("y" * 1900)).encode()
        assert len(body) <= 2048
        response = await api.post("/generate", content=body, headers={**JSON, **ADMIN})
    assert response.status_code == 200


# -- content types ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [None, "application/json; charset=utf-8", "text/plain", "application/x-www-form-urlencoded"],
)
async def test_json_is_accepted_whatever_the_declared_type(
    api: Api, content_type: str | None
) -> None:
    headers = dict(ADMIN)
    if content_type:
        headers["Content-Type"] = content_type
    response = await api.post("/generate", content=json.dumps(flux()).encode(), headers=headers)
    assert response.status_code == 200, response.text


async def test_form_body_is_rejected_clearly(api: Api) -> None:
    response = await api.post(
        "/generate", data={"model_name": "flux-dev", "prompt": "x"}, headers=ADMIN
    )
    assert_error(response, 400, "Malformed JSON", "application/x-www-form-urlencoded")
    multipart = await api.post(
        "/generate", files={"f": ("a.png", b"\x89PNG")}, data={"prompt": "x"}, headers=ADMIN
    )
    assert_error(multipart, 415, "Unsupported Content-Type 'multipart/form-data'")


# -- fields ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "fragments"),
    [
        ({"prompt": "x"}, ["model_name is required"]),
        ({"model_name": "invalid-model", "prompt": "x"}, ["Model 'invalid-model' not supported"]),
        ({"model_name": 5, "prompt": "x"}, ["Invalid field 'model_name'"]),
        ({"model_name": "flux-dev"}, ["Missing required field: prompt"]),
        ({"model_name": "flux-dev", "prompt": "   "}, ["Missing required field: prompt"]),
        ({"model_name": "flux-dev", "prompt": 5}, ["prompt"]),
        (flux(num_outputs="2"), ["num_outputs"]),
        (flux(num_outputs=9), ["num_outputs"]),
        (flux(guidance=True), ["guidance"]),
        (flux(seed=1.5), ["seed"]),
        (flux(aspect_ratio="7:3"), ["aspect_ratio"]),
        (flux(output_format="bmp"), ["output_format"]),
        (flux(bogus=1), ["Unknown parameter 'bogus'"]),
        (flux(guidanse=3), ["Unknown parameter 'guidanse'", "did you mean 'guidance'"]),
        (flux(output_filename=5), ["Invalid field 'output_filename'"]),
        (flux(output_filename="x" * 300), ["Invalid field 'output_filename'"]),
        (flux(external_semaphore_id="bad id"), ["Invalid field 'external_semaphore_id'"]),
        (flux(external_semaphore_id=7), ["Invalid field 'external_semaphore_id'"]),
        (flux(credentials="r8_abc"), ["Invalid field 'credentials'"]),
        (flux(credentials={"token": "r8_abc"}), ["Unknown field 'credentials.token'"]),
        (flux(credentials={"replicate_api_token": "has space"}), ["replicate_api_token"]),
        (flux(credentials={"replicate_api_token": 5}), ["replicate_api_token"]),
        (
            {"model_name": "flux-kontext-max", "prompt": "x", "input_image": "/etc/passwd"},
            ["input_image", "https:// URL or a data: URI"],
        ),
        (
            {"model_name": "flux-kontext-max", "prompt": "x", "input_image": "file:///etc/hosts"},
            ["input_image"],
        ),
        (
            {"model_name": "flux-kontext-max", "prompt": "x", "input_image": "C:\\img\\a.png"},
            ["input_image"],
        ),
        (
            {"model_name": "flux-kontext-max", "prompt": "x", "input_image": "http://x/a.png"},
            ["input_image"],
        ),
        (flux(image="../../secret.png"), ["image"]),
    ],
)
async def test_generate_field_errors(api: Api, body: dict[str, Any], fragments: list[str]) -> None:
    response = await api.post("/generate", json=body, headers=ADMIN)
    assert_error(response, 400, *fragments)


async def test_model_not_supported_lists_models(api: Api) -> None:
    response = await api.post("/generate", json=flux(model_name="invalid-model"), headers=ADMIN)
    assert response.json() == {
        "error": "Model 'invalid-model' not supported",
        "supported_models": ["flux-dev", "flux-kontext-max", "qwen-image"],
    }


async def test_token_in_a_bad_credentials_field_is_not_echoed(api: Api) -> None:
    secret = "r8_secret value with spaces"
    response = await api.post("/generate", json=flux(credentials={"replicate_api_token": secret}))
    assert_error(response, 400)
    assert "secret" not in response.text


@pytest.mark.parametrize(
    ("body", "fragments"),
    [
        ({"model_name": "flux-dev"}, ["Missing required field: tasks"]),
        ({"model_name": "flux-dev", "tasks": []}, ["'tasks'", "must not be empty"]),
        ({"model_name": "flux-dev", "tasks": "x"}, ["'tasks'"]),
        ({"model_name": "flux-dev", "tasks": [{"prompt": "a"}, {}]}, ["Task 1 missing"]),
        (
            {"model_name": "flux-dev", "tasks": [{"output_filename": "a"}]},
            ["Task 0 missing required field: prompt"],
        ),
        ({"model_name": "flux-dev", "tasks": [5]}, ["tasks[0]"]),
        ({"model_name": "flux-dev", "tasks": [{"prompt": "a", "guidance": "x"}]}, ["guidance"]),
        ({"model_name": "flux-dev", "tasks": [{"prompt": "a", "bogus": 1}]}, ["bogus"]),
        ({"model_name": "flux-dev", "tasks": [{"prompt": "a"}] * 21}, ["MAX_BATCH_TASKS=20"]),
        ({"model_name": "flux-dev", "prompts": ["a"], "tasks": [{"prompt": "a"}]}, ["not both"]),
        (
            {"model_name": "flux-dev", "prompts": ["a", "b"], "custom_filenames": ["x"]},
            ["custom_filenames"],
        ),
        ({"model_name": "flux-dev", "prompts": [1]}, ["prompts[0]"]),
        ({"model_name": "nope", "tasks": [{"prompt": "a"}]}, ["Model 'nope' not supported"]),
    ],
)
async def test_batch_field_errors(api: Api, body: dict[str, Any], fragments: list[str]) -> None:
    response = await api.post("/generate-batch", json=body, headers=ADMIN)
    assert_error(response, 400, *fragments)


async def test_validation_comes_before_any_generation(api: Api) -> None:
    response = await api.post(
        "/generate-batch",
        json={
            "model_name": "flux-dev",
            "tasks": [{"prompt": "fine"}, {"prompt": "x", "seed": "s"}],
        },
        headers=ADMIN,
    )
    assert_error(response, 400, "tasks[1].seed")
    stats = (await api.get("/health")).json()
    assert stats["status"] == "healthy"


# -- routing ---------------------------------------------------------------------------------


async def test_unknown_route_is_json_404(api: Api) -> None:
    response = await api.get("/nope")
    assert_error(response, 404, "Not found: GET /nope")


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/generate"), ("DELETE", "/health"), ("PUT", "/global-semaphores")],
)
async def test_wrong_method_is_json_405(api: Api, method: str, path: str) -> None:
    response = await api.client.request(method, path)
    assert_error(response, 405, "Method not allowed")
    assert response.headers.get("allow")


async def test_a_405_allows_every_method_of_every_route_on_its_path(api: Api) -> None:
    """GET and POST /global-semaphores are two routes: the Allow header names both (Starlette
    named only the first route's)."""
    response = await api.client.request("PUT", "/global-semaphores")
    assert response.status_code == 405
    assert set(response.headers["allow"].split(", ")) >= {"GET", "POST"}
    assert "GET" in response.json()["error"] and "POST" in response.json()["error"]


async def test_request_id_is_echoed_or_created(api: Api) -> None:
    given = await api.get("/health", headers={"X-Request-ID": "abc-123"})
    assert given.headers["X-Request-ID"] == "abc-123"
    created = await api.get("/health")
    assert len(created.headers["X-Request-ID"]) == 32
    bad = await api.get("/health", headers={"X-Request-ID": "x" * 500})
    assert bad.headers["X-Request-ID"] != "x" * 500
    on_error = await api.post("/generate", content=b"", headers={"X-Request-ID": "err-1"})
    assert on_error.headers["X-Request-ID"] == "err-1"


async def test_unexpected_exception_is_a_logged_500_without_traceback(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    async def boom() -> None:
        raise RuntimeError("secret internals")

    api.app.add_api_route("/boom", boom)
    response = await api.get("/boom", headers={"X-Request-ID": "req-500"})
    assert response.status_code == 500
    assert response.json() == {"error": "Internal error", "request_id": "req-500"}
    assert "secret internals" not in response.text
    assert any("secret internals" in (r.exc_text or "") or r.exc_info for r in caplog.records)


# -- no input makes a 500 ----------------------------------------------------------------------


def _random_value(rng: random.Random, depth: int = 0) -> Any:
    choices = [
        lambda: None,
        lambda: rng.choice([True, False]),
        lambda: rng.randint(-(2**70), 2**70),
        lambda: rng.uniform(-1e6, 1e6),
        lambda: rng.choice(["", " ", "flux-dev", "x" * 300, "../a", "r8_x", "ü", "\x00", "16:9"]),
        lambda: "".join(chr(rng.randint(0, 0x2FFF)) for _ in range(rng.randint(0, 12))),
    ]
    if depth < 4:
        choices += [
            lambda: [_random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))],
            lambda: _random_object(rng, depth + 1),
        ]
    return rng.choice(choices)()


KEYS = [
    "model_name",
    "prompt",
    "tasks",
    "prompts",
    "custom_filenames",
    "output_filename",
    "external_semaphore_id",
    "credentials",
    "num_outputs",
    "guidance",
    "seed",
    "aspect_ratio",
    "input_image",
    "image",
    "semaphore_id",
    "limit",
    "replicate_api_token",
    "lora_weights",
    "extra_lora",
    "megapixels",
    "go_fast",
]


def _random_object(rng: random.Random, depth: int) -> dict[str, Any]:
    data = {rng.choice(KEYS): _random_value(rng, depth) for _ in range(rng.randint(0, 6))}
    if rng.random() < 0.5:
        data["model_name"] = rng.choice(["flux-dev", "flux-kontext-max", "qwen-image"])
    return data


async def test_random_bodies_never_make_a_500(make_api: MakeApi) -> None:
    rng = random.Random(20240601)
    async with make_api(queue_timeout_seconds=1.0) as api:
        for _ in range(150):
            body = _random_object(rng, 0) if rng.random() < 0.9 else _random_value(rng)
            for path in ("/generate-batch", "/generate", "/global-semaphores"):
                response = await api.post(path, json=body)  # no auth: never reaches Replicate
                assert 400 <= response.status_code < 500, (path, body, response.text)
                assert isinstance(response.json()["error"], str)
