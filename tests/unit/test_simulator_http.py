"""Exact HTTP details of the simulator (status codes, bodies, headers), with raw httpx."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import httpx
import pytest

from service.fingerprint import token_fingerprint
from tests.fixtures.simulator import SimulatorHandle

TOKEN = "r8_test"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
FLUX_DEV_PATH = "/v1/models/black-forest-labs/flux-dev/predictions"
KONTEXT_PATH = "/v1/models/black-forest-labs/flux-kontext-max/predictions"
QWEN_PATH = "/v1/models/qwen/qwen-image/predictions"
NOT_FOUND = {"detail": "The requested resource could not be found.", "status": 404}
REQUIRED_FIELDS = {
    "id", "model", "version", "input", "output", "error", "logs", "status", "created_at",
    "started_at", "completed_at", "metrics", "urls", "data_removed", "source",
}  # fmt: skip


@pytest.fixture
async def http(simulator: SimulatorHandle) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=simulator.base_url, headers=AUTH, timeout=10) as client:
        yield client


async def create(http: httpx.AsyncClient, model_input: dict[str, Any], **headers: str) -> Any:
    response = await http.post(FLUX_DEV_PATH, json={"input": model_input}, headers=headers)
    assert response.status_code == 201, response.text
    return response.json()


async def poll_until_terminal(http: httpx.AsyncClient, prediction_id: str) -> list[str]:
    """Every status seen (deduplicated, in order) until a terminal one."""
    seen: list[str] = []
    for _ in range(400):
        status = (await http.get(f"/v1/predictions/{prediction_id}")).json()["status"]
        if not seen or seen[-1] != status:
            seen.append(status)
        if status in ("succeeded", "failed", "canceled"):
            return seen
        await asyncio.sleep(0.02)
    raise AssertionError(f"still running: {seen}")


def parse_iso_z(text: str) -> datetime:
    assert text.endswith("Z"), text
    return datetime.fromisoformat(text)


# -- prediction object and Prefer: wait -------------------------------------------------------


@pytest.mark.simulator(latency_s=30.0)
async def test_create_without_prefer_answers_at_once_with_starting(
    http: httpx.AsyncClient, simulator: SimulatorHandle
) -> None:
    response = await http.post(FLUX_DEV_PATH, json={"input": {"prompt": "a cat"}})

    assert response.status_code == 201
    assert "preference-applied" not in response.headers
    assert response.headers["ratelimit-remaining"] == "599"
    assert int(response.headers["ratelimit-reset"]) >= 1
    body = response.json()
    assert set(body) >= REQUIRED_FIELDS
    assert re.fullmatch(r"[a-z2-7]{26}", body["id"])
    assert body["model"] == "black-forest-labs/flux-dev"
    assert body["version"] == "hidden"
    assert body["input"] == {"prompt": "a cat"}
    assert body["status"] == "starting"
    assert body["output"] is None
    assert body["error"] is None
    assert body["data_removed"] is False
    assert body["source"] == "api"
    assert body["started_at"] is None and body["completed_at"] is None
    parse_iso_z(body["created_at"])
    base = simulator.base_url
    assert body["urls"]["get"] == f"{base}/v1/predictions/{body['id']}"
    assert body["urls"]["cancel"] == f"{base}/v1/predictions/{body['id']}/cancel"
    assert body["urls"]["web"] == f"https://replicate.com/p/{body['id']}"


@pytest.mark.simulator(latency_s=0.3)
async def test_prefer_wait_returns_the_finished_prediction(http: httpx.AsyncClient) -> None:
    response = await http.post(
        FLUX_DEV_PATH,
        json={"input": {"prompt": "a cat", "num_outputs": 3}},
        headers={"Prefer": "wait=10"},
    )

    assert response.status_code == 201
    assert response.headers["preference-applied"] == "wait=10"
    body = response.json()
    assert body["status"] == "succeeded"
    assert [url.rsplit("/", 1)[1] for url in body["output"]] == [
        "out-0.webp",
        "out-1.webp",
        "out-2.webp",
    ]
    created = parse_iso_z(body["created_at"])
    started = parse_iso_z(body["started_at"])
    completed = parse_iso_z(body["completed_at"])
    assert created <= started <= completed
    assert set(body["metrics"]) >= {"predict_time", "total_time"}
    assert body["metrics"]["total_time"] >= body["metrics"]["predict_time"] > 0


@pytest.mark.simulator(latency_s=30.0)
@pytest.mark.parametrize("prefer", ["wait=1", "respond-async, wait=1"])
async def test_prefer_wait_expiring_answers_starting_in_time(
    http: httpx.AsyncClient, prefer: str
) -> None:
    began = time.monotonic()
    response = await http.post(
        FLUX_DEV_PATH, json={"input": {"prompt": "x"}}, headers={"Prefer": prefer}
    )
    elapsed = time.monotonic() - began

    assert 0.5 < elapsed < 1.5  # held, and answered before the client's N + 0.5 s timeout
    assert response.headers["preference-applied"] == "wait=1"
    body = response.json()
    assert body["status"] == "starting"  # never "processing" without output
    assert body["output"] is None


@pytest.mark.simulator(latency_s=1.0, queue_fraction=0.3)
async def test_get_walks_through_the_statuses(http: httpx.AsyncClient) -> None:
    body = await create(http, {"prompt": "x"})

    seen = await poll_until_terminal(http, body["id"])

    assert seen == ["starting", "processing", "succeeded"]


async def test_bare_prefer_wait_waits(http: httpx.AsyncClient) -> None:
    response = await http.post(
        FLUX_DEV_PATH, json={"input": {"prompt": "x"}}, headers={"Prefer": "wait"}
    )

    assert response.headers["preference-applied"] == "wait=60"
    assert response.json()["status"] == "succeeded"


async def test_failed_prediction_under_wait(
    http: httpx.AsyncClient, simulator: SimulatorHandle
) -> None:
    simulator.set_faults(fail_fraction=1.0, fail_message="boom")

    body = await create(http, {"prompt": "x"}, Prefer="wait=5")

    assert body["status"] == "failed"
    assert body["error"] == "boom"
    assert body["output"] is None
    assert "predict_time" in body["metrics"]


async def test_create_by_version_accepts_official_model_names(http: httpx.AsyncClient) -> None:
    response = await http.post(
        "/v1/predictions",
        json={"version": "qwen/qwen-image", "input": {"prompt": "x"}},
        headers={"Prefer": "wait=5"},
    )

    assert response.status_code == 201
    assert response.json()["model"] == "qwen/qwen-image"
    assert response.json()["status"] == "succeeded"


async def test_create_by_unknown_version_is_422(http: httpx.AsyncClient) -> None:
    response = await http.post("/v1/predictions", json={"version": "ab" * 32, "input": {}})

    assert response.status_code == 422
    assert response.json()["title"] == "Invalid version or not permitted"


async def test_create_by_version_requires_version(http: httpx.AsyncClient) -> None:
    response = await http.post("/v1/predictions", json={"input": {"prompt": "x"}})

    assert response.status_code == 422
    assert response.json()["detail"] == "- version is required\n"


# -- 404s and auth ----------------------------------------------------------------------------


async def test_unknown_model_is_404(http: httpx.AsyncClient) -> None:
    response = await http.post("/v1/models/acme/nope/predictions", json={"input": {}})

    assert response.status_code == 404
    assert response.json() == NOT_FOUND


async def test_unknown_prediction_and_path_are_404(http: httpx.AsyncClient) -> None:
    assert (await http.get("/v1/predictions/" + "a" * 26)).json() == NOT_FOUND
    assert (await http.post("/v1/predictions/" + "a" * 26 + "/cancel")).status_code == 404
    assert (await http.get("/v2/whatever")).json() == NOT_FOUND


async def test_prediction_of_another_account_is_404(http: httpx.AsyncClient) -> None:
    body = await create(http, {"prompt": "x"})

    other = {"Authorization": "Bearer r8_someone_else"}
    response = await http.get(f"/v1/predictions/{body['id']}", headers=other)

    assert response.status_code == 404


@pytest.mark.parametrize(
    ("headers", "detail"),
    [
        ({}, "You did not pass an authentication token"),
        ({"Authorization": "Bearer"}, "You did not pass an authentication token"),
        ({"Authorization": "Bearer sk-x"}, "You did not pass a valid authentication token"),
        ({"Authorization": "Basic r8_abc"}, "You did not pass an authentication token"),
    ],
)
async def test_missing_or_bad_token_is_401(
    simulator: SimulatorHandle, headers: dict[str, str], detail: str
) -> None:
    async with httpx.AsyncClient(base_url=simulator.base_url) as client:
        response = await client.get("/v1/account", headers=headers)

    assert response.status_code == 401
    assert response.json() == {"title": "Unauthenticated", "detail": detail, "status": 401}


async def test_token_scheme_is_accepted(simulator: SimulatorHandle) -> None:
    async with httpx.AsyncClient(base_url=simulator.base_url) as client:
        response = await client.get("/v1/account", headers={"Authorization": "Token r8_abc"})

    assert response.status_code == 200
    assert response.json()["username"] == f"sim-{token_fingerprint('r8_abc')[:8]}"


@pytest.mark.simulator(tokens=frozenset({"r8_a"}))
async def test_configured_tokens_are_the_only_valid_ones(simulator: SimulatorHandle) -> None:
    async with httpx.AsyncClient(base_url=simulator.base_url) as client:
        ok = await client.get("/v1/account", headers={"Authorization": "Bearer r8_a"})
        refused = await client.get("/v1/account", headers={"Authorization": "Bearer r8_b"})

    assert ok.status_code == 200
    assert refused.status_code == 401


# -- input validation -------------------------------------------------------------------------

ENUM_DETAIL = 'output_format must be one of the following: "jpg", "png"'
FLUX_RATIOS = ("1:1", "16:9", "21:9", "3:2", "2:3", "4:5", "5:4", "3:4", "4:3", "9:16", "9:21")
QWEN_RATIOS = ("1:1", "16:9", "9:16", "4:3", "3:4", "3:2", "2:3")
IMAGE_URL = "https://example.com/a.png"


def one_of(name: str, allowed: tuple[str, ...]) -> str:
    return f"{name} must be one of the following: " + ", ".join(f'"{a}"' for a in allowed)


def lte(limit: int) -> str:
    return f"Must be less than or equal to {limit}"


def wrong_type(expected: str, given: str) -> str:
    return f"Invalid type. Expected: {expected}, given: {given}"


def extra(name: str) -> tuple[str, str, str]:
    return (
        "additional_property_not_allowed",
        "input",
        f"Additional property {name} is not allowed",
    )


async def test_validation_body_matches_replicate(http: httpx.AsyncClient) -> None:
    response = await http.post(
        KONTEXT_PATH, json={"input": {"prompt": "x", "output_format": "webp"}}
    )

    assert response.status_code == 422
    assert response.json() == {
        "title": "Input validation failed",
        "status": 422,
        "detail": f"- input.output_format: {ENUM_DETAIL}\n",
        "invalid_fields": [
            {"type": "enum", "field": "input.output_format", "description": ENUM_DETAIL}
        ],
    }


@pytest.mark.parametrize(
    ("path", "model_input", "expected"),
    [
        (FLUX_DEV_PATH, {}, ("required", "input", "prompt is required")),
        (
            FLUX_DEV_PATH,
            {"prompt": 3},
            ("invalid_type", "input.prompt", wrong_type("string", "integer")),
        ),
        (
            FLUX_DEV_PATH,
            {"prompt": "x", "num_outputs": 5},
            ("number_lte", "input.num_outputs", lte(4)),
        ),
        (
            FLUX_DEV_PATH,
            {"prompt": "x", "num_outputs": 0},
            ("number_gte", "input.num_outputs", "Must be greater than or equal to 1"),
        ),
        (
            FLUX_DEV_PATH,
            {"prompt": "x", "num_outputs": True},
            ("invalid_type", "input.num_outputs", wrong_type("integer", "boolean")),
        ),
        (
            FLUX_DEV_PATH,
            {"prompt": "x", "guidance": 10.5},
            ("number_lte", "input.guidance", lte(10)),
        ),
        (
            FLUX_DEV_PATH,
            {"prompt": "x", "megapixels": 1},
            ("invalid_type", "input.megapixels", wrong_type("string", "integer")),
        ),
        (
            FLUX_DEV_PATH,
            {"prompt": "x", "aspect_ratio": "2:1"},
            ("enum", "input.aspect_ratio", one_of("aspect_ratio", FLUX_RATIOS)),
        ),
        (FLUX_DEV_PATH, {"prompt": "x", "steps": 4}, extra("steps")),
        (
            FLUX_DEV_PATH,
            {"prompt": "x", "image": "not a uri"},
            ("format", "input.image", "Does not match format 'uri'"),
        ),
        (
            KONTEXT_PATH,
            {"prompt": "x", "safety_tolerance": 7},
            ("number_lte", "input.safety_tolerance", lte(6)),
        ),
        (
            KONTEXT_PATH,
            {"prompt": "x", "input_image": IMAGE_URL, "safety_tolerance": 3},
            (
                "number_lte",
                "input.safety_tolerance",
                "safety_tolerance must be less than or equal to 2 when input_image is provided",
            ),
        ),
        (KONTEXT_PATH, {"prompt": "x", "num_outputs": 1}, extra("num_outputs")),
        (
            QWEN_PATH,
            {"prompt": "x", "num_inference_steps": 51},
            ("number_lte", "input.num_inference_steps", lte(50)),
        ),
        (
            QWEN_PATH,
            {"prompt": "x", "aspect_ratio": "21:9"},
            ("enum", "input.aspect_ratio", one_of("aspect_ratio", QWEN_RATIOS)),
        ),
        (QWEN_PATH, {"prompt": "x", "num_outputs": 2}, extra("num_outputs")),
    ],
)
async def test_input_validation(
    http: httpx.AsyncClient, path: str, model_input: dict[str, Any], expected: tuple[str, ...]
) -> None:
    response = await http.post(path, json={"input": model_input})

    assert response.status_code == 422, response.text
    body = response.json()
    kind, field, description = expected
    assert body["invalid_fields"] == [{"type": kind, "field": field, "description": description}]
    assert body["detail"] == f"- {field}: {description}\n"


FLUX_DEV_FULL = {
    "prompt": "x",
    "aspect_ratio": "21:9",
    "num_outputs": 4,
    "num_inference_steps": 50,
    "guidance": 0,
    "seed": None,
    "output_format": "png",
    "output_quality": 100,
    "disable_safety_checker": True,
    "go_fast": False,
    "megapixels": "0.25",
    "image": "data:image/png;base64,AAAA",
    "prompt_strength": 0.5,
}
KONTEXT_FULL = {
    "prompt": "x",
    "input_image": IMAGE_URL,
    "aspect_ratio": "match_input_image",
    "seed": 3,
    "output_format": "jpg",
    "safety_tolerance": 2,
    "prompt_upsampling": True,
}
QWEN_FULL = {
    "prompt": "x",
    "enhance_prompt": True,
    "lora_weights": "https://h/x.safetensors",
    "replicate_weights": None,
    "lora_scale": 2.5,
    "extra_lora_weights": ["https://h/y.safetensors"],
    "extra_lora_scale": [0.5],
    "image": IMAGE_URL,
    "strength": 0.9,
    "negative_prompt": " ",
    "aspect_ratio": "3:2",
    "image_size": "optimize_for_speed",
    "go_fast": True,
    "num_inference_steps": 1,
    "guidance": 3.5,
    "seed": 1,
    "output_format": "jpg",
    "output_quality": 0,
    "disable_safety_checker": False,
}


@pytest.mark.parametrize(
    ("path", "model_input"),
    [
        (FLUX_DEV_PATH, FLUX_DEV_FULL),
        (KONTEXT_PATH, KONTEXT_FULL),
        (KONTEXT_PATH, {"prompt": "x", "input_image": None, "safety_tolerance": 6}),
        (KONTEXT_PATH, {"prompt": "x", "aspect_ratio": "2:1"}),
        (QWEN_PATH, QWEN_FULL),
    ],
)
async def test_every_documented_input_is_accepted(
    http: httpx.AsyncClient, path: str, model_input: dict[str, Any]
) -> None:
    response = await http.post(path, json={"input": model_input})

    assert response.status_code == 201, response.text
    assert response.json()["input"] == model_input


async def test_body_level_problems(http: httpx.AsyncClient) -> None:
    response = await http.post(FLUX_DEV_PATH, json={"input": {"prompt": "x"}, "model": "m"})
    assert response.status_code == 422
    assert response.json()["detail"] == "- Additional property model is not allowed\n"

    response = await http.post(FLUX_DEV_PATH, content=b"{not json")
    assert response.status_code == 400


# -- rate limits ------------------------------------------------------------------------------


@pytest.mark.simulator(create_limit=2)
async def test_create_limit_429_body_and_header(
    http: httpx.AsyncClient, simulator: SimulatorHandle
) -> None:
    for remaining in ("1", "0"):
        response = await http.post(FLUX_DEV_PATH, json={"input": {"prompt": "x"}})
        assert response.headers["ratelimit-remaining"] == remaining

    response = await http.post(FLUX_DEV_PATH, json={"input": {"prompt": "x"}})

    assert response.status_code == 429
    retry_after = int(response.headers["retry-after"])
    assert 55 <= retry_after <= 60
    assert response.json() == {
        "detail": f"Request was throttled. Your rate limit resets in ~{retry_after}s.",
        "status": 429,
        "retry_after": retry_after,
    }
    # Limits are per token, and GETs use the other bucket.
    other = await http.post(
        FLUX_DEV_PATH, json={"input": {"prompt": "x"}}, headers={"Authorization": "Bearer r8_b"}
    )
    assert other.status_code == 201
    assert (await http.get("/v1/account")).status_code == 200
    assert simulator.token_stats(TOKEN)["create_errors"] == {"429": 1}


@pytest.mark.simulator(other_limit=3)
async def test_other_limit_counts_gets_cancels_and_account(http: httpx.AsyncClient) -> None:
    body = await create(http, {"prompt": "x"})

    statuses = [
        (await http.get(f"/v1/predictions/{body['id']}")).status_code,
        (await http.post(f"/v1/predictions/{body['id']}/cancel")).status_code,
        (await http.get("/v1/account")).status_code,
        (await http.get(f"/v1/predictions/{body['id']}")).status_code,
    ]

    assert statuses == [200, 200, 200, 429]


@pytest.mark.simulator(create_limit=1, rate_window_s=0.3)
async def test_sliding_window_frees_up(http: httpx.AsyncClient) -> None:
    assert (await http.post(FLUX_DEV_PATH, json={"input": {"prompt": "x"}})).status_code == 201
    assert (await http.post(FLUX_DEV_PATH, json={"input": {"prompt": "x"}})).status_code == 429

    await asyncio.sleep(0.4)

    assert (await http.post(FLUX_DEV_PATH, json={"input": {"prompt": "x"}})).status_code == 201


# -- cancel, faults, files, stats -------------------------------------------------------------


@pytest.mark.simulator(latency_s=30.0)
async def test_cancel_with_empty_body(http: httpx.AsyncClient) -> None:
    body = await create(http, {"prompt": "x"})

    response = await http.post(
        f"/v1/predictions/{body['id']}/cancel", headers={"Content-Length": "0"}
    )

    assert response.status_code == 200
    canceled = response.json()
    assert canceled["status"] == "canceled"
    assert canceled["completed_at"] is not None
    assert "total_time" in canceled["metrics"]


@pytest.mark.simulator(latency_s=30.0)
async def test_cancel_wakes_a_held_create(
    http: httpx.AsyncClient, simulator: SimulatorHandle
) -> None:
    held = asyncio.create_task(
        http.post(FLUX_DEV_PATH, json={"input": {"prompt": "x"}}, headers={"Prefer": "wait=20"})
    )
    for _ in range(200):
        ids = (await simulator.atoken_stats(TOKEN))["prediction_ids"]
        if ids:
            break
        await asyncio.sleep(0.02)

    canceled = await http.post(f"/v1/predictions/{ids[0]}/cancel")
    response = await asyncio.wait_for(held, timeout=5)

    assert canceled.json()["status"] == "canceled"
    assert response.status_code == 201
    assert response.json()["status"] == "canceled"


@pytest.mark.simulator(latency_s=0.1)
async def test_slow_start_keeps_predictions_starting(
    http: httpx.AsyncClient, simulator: SimulatorHandle
) -> None:
    simulator.set_faults(slow_start_s=0.6)
    body = await create(http, {"prompt": "x"})

    await asyncio.sleep(0.2)  # past the normal latency, still inside the extra start time
    assert (await http.get(f"/v1/predictions/{body['id']}")).json()["status"] == "starting"
    assert (await poll_until_terminal(http, body["id"]))[-1] == "succeeded"


async def test_get_5xx_and_faults_endpoint(
    http: httpx.AsyncClient, simulator: SimulatorHandle
) -> None:
    body = await create(http, {"prompt": "x"})
    simulator.set_faults(get_5xx=1, status_5xx=500)

    first = await http.get(f"/v1/predictions/{body['id']}")
    second = await http.get(f"/v1/predictions/{body['id']}")

    assert (first.status_code, second.status_code) == (500, 200)
    assert first.json()["status"] == 500
    assert simulator.clear_faults()["get_5xx"] == 0
    bad = await http.post("/_sim/faults", json={"create_429": -1, "nonsense": 1})
    assert bad.status_code == 422
    assert "nonsense" in bad.json()["detail"]


async def test_injected_429_carries_retry_after(
    http: httpx.AsyncClient, simulator: SimulatorHandle
) -> None:
    simulator.set_faults(create_429=1, retry_after_s=7)

    response = await http.post(FLUX_DEV_PATH, json={"input": {"prompt": "x"}})

    assert response.status_code == 429
    assert response.headers["retry-after"] == "7"
    assert response.json()["retry_after"] == 7


@pytest.mark.simulator(latency_s=30.0)
async def test_files_exist_only_for_succeeded_predictions(
    http: httpx.AsyncClient, simulator: SimulatorHandle
) -> None:
    running = await create(http, {"prompt": "x"})
    simulator.configure(latency_s=0.0)
    done = await create(http, {"prompt": "y", "output_format": "png"}, Prefer="wait=5")

    base = simulator.base_url
    async with httpx.AsyncClient(base_url=base) as anonymous:
        ok = await anonymous.get(done["output"][0].removeprefix(base))
        assert ok.status_code == 200
        assert ok.headers["content-type"] == "image/png"
        assert ok.content.startswith(b"\x89PNG")
        assert (await anonymous.get(f"/files/{running['id']}/out-0.webp")).status_code == 404
        assert (await anonymous.get(f"/files/{done['id']}/out-1.png")).status_code == 404
        assert (await anonymous.get(f"/files/{done['id']}/out-0.webp")).status_code == 404


async def test_stats_shape_filter_and_reset(
    http: httpx.AsyncClient, simulator: SimulatorHandle
) -> None:
    body = await create(http, {"prompt": "x"}, Prefer="wait=5")
    await http.get(f"/v1/predictions/{body['id']}")
    await http.get(
        "/v1/account", headers={"Authorization": "Bearer r8_other"}
    )  # a second token, no predictions

    stats = simulator.stats()
    fp = token_fingerprint(TOKEN)
    assert set(stats) == {"now", "totals", "tokens", "faults", "webhooks"}
    assert set(stats["tokens"]) == {fp, token_fingerprint("r8_other")}
    mine = stats["tokens"][fp]
    assert mine["created"] == 1
    assert mine["get_requests"] == 1
    assert mine["by_status"] == {"succeeded": 1, "failed": 0, "canceled": 0, "aborted": 0}
    ((start, end),) = mine["intervals"]
    assert mine["created_at"] == [start]
    assert start < end <= stats["now"]
    assert stats["totals"]["account_requests"] == 1

    only = simulator.stats(fp)
    assert set(only["tokens"]) == {fp}

    simulator.reset()
    after = simulator.stats()
    assert after["tokens"] == {}
    assert after["totals"]["created"] == 0
    assert (await http.get(f"/v1/predictions/{body['id']}")).status_code == 404


async def test_unknown_token_fingerprint_reads_as_zeros(simulator: SimulatorHandle) -> None:
    stats = simulator.token_stats("r8_never_seen")

    assert stats["created"] == 0
    assert stats["max_in_flight"] == 0
    assert stats["intervals"] == []


async def test_config_endpoint(simulator: SimulatorHandle) -> None:
    changed = simulator.configure(latency_s=0.5, tokens=["r8_only"])

    assert changed["latency_s"] == 0.5
    assert changed["tokens"] == ["r8_only"]
    async with httpx.AsyncClient(base_url=simulator.base_url) as client:
        refused = await client.patch("/_sim/config", json={"port": 1})
        assert refused.status_code == 422
        refused = await client.patch("/_sim/config", json={"latency_s": -1})
        assert refused.status_code == 422
