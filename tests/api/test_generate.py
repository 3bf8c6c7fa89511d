"""POST /generate and /generate-batch through the real limits (Redis) and the simulator.

Behaviour is proven by counting what the simulator saw, never by patching.
"""

from __future__ import annotations

import asyncio
import re
import time

import httpx
import pytest

from service.fingerprint import ACCOUNT, token_fingerprint
from service.limits import AccountLimits
from tests.api.conftest import (
    ADMIN,
    BAD_TOKEN,
    SERVER_TOKEN,
    USER_TOKEN,
    Api,
    MakeApi,
    flux,
    mark_store_known,
    running_api,
    settings_for,
)
from tests.fixtures.redis_server import RedisServer
from tests.fixtures.simulator import SimulatorHandle

pytestmark = pytest.mark.redis

SEED_AUTH_FAILED = (
    "Authentication failed. Provide 'X-Admin-API-Key' in headers or complete credentials in "
    "payload."
)
ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


async def create_semaphore(api: Api, semaphore_id: str, limit: int) -> None:
    response = await api.post(
        "/global-semaphores", json={"semaphore_id": semaphore_id, "limit": limit}, headers=ADMIN
    )
    assert response.status_code == 201, response.text


# -- /generate ----------------------------------------------------------------------------------


async def test_generate_answers_in_the_seed_shape(api: Api, simulator: SimulatorHandle) -> None:
    response = await api.post(
        "/generate",
        json=flux(
            "A serene mountain landscape", output_filename="mountain_sunset", aspect_ratio="16:9"
        ),
        headers=ADMIN,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {
        "success",
        "model_name",
        "prompt",
        "output_filename",
        "generated_files",
        "count",
        "external_semaphore_used",
        "semaphore_id",
        "prediction_id",
    }
    assert body["success"] is True
    assert body["model_name"] == "flux-dev"
    assert body["prompt"] == "A serene mountain landscape"
    assert body["output_filename"] == "mountain_sunset"
    assert body["count"] == 1
    assert body["external_semaphore_used"] is False
    assert body["semaphore_id"] is None
    [file] = body["generated_files"]
    assert set(file) == {"url", "filename", "expires_at"}
    assert file["url"].startswith(simulator.base_url + "/files/")
    assert file["filename"] == "mountain_sunset.webp"
    assert ISO_Z.match(file["expires_at"])
    assert body["prediction_id"] in file["url"]
    stats = simulator.token_stats(SERVER_TOKEN)
    assert stats["created"] == 1 and stats["by_status"]["succeeded"] == 1
    # Download works (URL-direct-return: the service stores nothing).
    async with httpx.AsyncClient() as client:
        assert (await client.get(file["url"])).status_code == 200


async def test_generate_several_outputs_are_numbered(api: Api) -> None:
    response = await api.post(
        "/generate", json=flux(output_filename="variations.jpg", num_outputs=3), headers=ADMIN
    )
    body = response.json()
    assert body["count"] == 3
    names = [f["filename"] for f in body["generated_files"]]
    assert names == ["variations_1.jpg", "variations_2.jpg", "variations_3.jpg"]


@pytest.mark.parametrize(
    "name", ["../../etc/passwd", "/abs/path/evil.png", "..\\..\\win.ini", "CON", "a/../../b"]
)
async def test_path_like_filenames_come_back_safe(api: Api, name: str) -> None:
    response = await api.post("/generate", json=flux(output_filename=name), headers=ADMIN)
    assert response.status_code == 200
    body = response.json()
    assert body["output_filename"] == name  # echoed as sent, like the seed
    filename = body["generated_files"][0]["filename"]
    assert "/" not in filename and "\\" not in filename and ".." not in filename
    assert not filename.startswith((".", "-"))


async def test_other_models(api: Api, simulator: SimulatorHandle) -> None:
    kontext = await api.post(
        "/generate",
        json={
            "model_name": "flux-kontext-max",
            "prompt": "make it snow",
            "input_image": "https://example.com/in.png",
        },
        headers=ADMIN,
    )
    assert kontext.status_code == 200, kontext.text
    assert kontext.json()["generated_files"][0]["filename"].endswith(".png")
    qwen = await api.post(
        "/generate", json={"model_name": "qwen-image", "prompt": "山水画"}, headers=ADMIN
    )
    assert qwen.status_code == 200, qwen.text
    assert qwen.json()["prompt"] == "山水画"


async def test_generate_with_external_semaphore(api: Api) -> None:
    await create_semaphore(api, "my-global-semaphore", 2)
    response = await api.post(
        "/generate", json=flux(external_semaphore_id="my-global-semaphore"), headers=ADMIN
    )
    body = response.json()
    assert body["external_semaphore_used"] is True
    assert body["semaphore_id"] == "my-global-semaphore"
    detail = (await api.get("/global-semaphores/my-global-semaphore")).json()
    assert detail["in_use"] == 0
    assert detail["counters"].get("acquired") == 1


async def test_unknown_external_semaphore_is_the_seed_404(api: Api) -> None:
    response = await api.post(
        "/generate", json=flux(external_semaphore_id="nonexistent-semaphore"), headers=ADMIN
    )
    assert response.status_code == 404
    assert response.json() == {"error": "External semaphore 'nonexistent-semaphore' not found"}
    batch = await api.post(
        "/generate-batch",
        json={
            "model_name": "flux-dev",
            "tasks": [{"prompt": "x"}],
            "external_semaphore_id": "nonexistent-semaphore",
        },
        headers=ADMIN,
    )
    assert batch.status_code == 404
    assert batch.json() == {"error": "External semaphore 'nonexistent-semaphore' not found"}


# -- authentication tiers -----------------------------------------------------------------------


async def test_tier_admin_uses_the_server_token(api: Api, simulator: SimulatorHandle) -> None:
    response = await api.post(
        "/generate", json=flux(credentials={"replicate_api_token": USER_TOKEN}), headers=ADMIN
    )
    assert response.status_code == 200
    assert simulator.token_stats(SERVER_TOKEN)["created"] == 1
    assert simulator.token_stats(USER_TOKEN)["created"] == 0


async def test_tier_credentials_uses_the_callers_token(
    api: Api, simulator: SimulatorHandle
) -> None:
    response = await api.post(
        "/generate", json=flux(credentials={"replicate_api_token": USER_TOKEN})
    )
    assert response.status_code == 200, response.text
    user = simulator.token_stats(USER_TOKEN)
    assert user["created"] == 1
    assert user["account_requests"] == 1  # verified once...
    await api.post("/generate", json=flux(credentials={"replicate_api_token": USER_TOKEN}))
    user = simulator.token_stats(USER_TOKEN)
    assert user["created"] == 2 and user["account_requests"] == 1  # ...and cached
    assert simulator.token_stats(SERVER_TOKEN)["created"] == 0


async def test_tier_credentials_invalid_token_is_401(api: Api, simulator: SimulatorHandle) -> None:
    response = await api.post(
        "/generate", json=flux(credentials={"replicate_api_token": BAD_TOKEN})
    )
    assert response.status_code == 401
    assert response.json() == {"error": "Invalid Replicate API token in credentials"}
    batch = await api.post(
        "/generate-batch",
        json={
            "model_name": "flux-dev",
            "tasks": [{"prompt": "x"}],
            "credentials": {"replicate_api_token": BAD_TOKEN},
        },
    )
    assert batch.status_code == 401
    assert simulator.stats()["totals"]["created"] == 0


async def test_wrong_admin_key_never_falls_through(make_api: MakeApi) -> None:
    async with make_api(allow_env_fallback=True) as api:
        response = await api.post(
            "/generate",
            json=flux(credentials={"replicate_api_token": USER_TOKEN}),
            headers={"X-Admin-API-Key": "wrong"},
        )
    assert response.status_code == 401
    assert response.json() == {"error": "Invalid admin API key"}


async def test_admin_key_but_no_server_token_is_503(make_api: MakeApi) -> None:
    async with make_api(replicate_api_token=None) as api:
        response = await api.post("/generate", json=flux(), headers=ADMIN)
    assert response.status_code == 503
    assert response.json() == {"error": "Server has no REPLICATE_API_TOKEN configured"}


async def test_admin_header_set_but_server_has_no_admin_key(make_api: MakeApi) -> None:
    async with make_api(concurrent_docker_admin_api_key=None, allow_env_fallback=True) as api:
        response = await api.post("/generate", json=flux(), headers={"X-Admin-API-Key": "x"})
    assert response.status_code == 401
    assert response.json() == {"error": "Invalid admin API key"}


async def test_no_auth_without_fallback_is_the_seed_401(api: Api) -> None:
    response = await api.post("/generate", json=flux())
    assert response.status_code == 401
    assert response.json() == {"error": SEED_AUTH_FAILED}
    empty_header = await api.post("/generate", json=flux(), headers={"X-Admin-API-Key": ""})
    assert empty_header.json() == {"error": SEED_AUTH_FAILED}
    null_token = await api.post("/generate", json=flux(credentials={"replicate_api_token": None}))
    assert null_token.json() == {"error": SEED_AUTH_FAILED}


async def test_env_fallback_when_enabled(make_api: MakeApi, simulator: SimulatorHandle) -> None:
    async with make_api(allow_env_fallback=True) as api:
        response = await api.post("/generate", json=flux())
    assert response.status_code == 200
    assert simulator.token_stats(SERVER_TOKEN)["created"] == 1


async def test_env_fallback_enabled_but_no_server_token(make_api: MakeApi) -> None:
    async with make_api(allow_env_fallback=True, replicate_api_token=None) as api:
        response = await api.post("/generate", json=flux())
    assert response.status_code == 401
    assert response.json() == {"error": SEED_AUTH_FAILED}


# -- upstream faults ----------------------------------------------------------------------------


async def test_upstream_429_is_retried_then_succeeds(api: Api, simulator: SimulatorHandle) -> None:
    simulator.set_faults(create_429=2, retry_after_s=0)
    response = await api.post("/generate", json=flux(), headers=ADMIN)
    assert response.status_code == 200
    assert simulator.stats()["faults"]["served"]["create_429"] == 2
    # Every create attempt took one window entry: the first with the account slot, the two
    # retries on their own.
    window = api.services.coordinator.window
    account = AccountLimits.window(token_fingerprint(SERVER_TOKEN))
    assert await window.count(account, window_s=61) == 3


async def test_upstream_429_persisting_is_429_with_retry_after(
    api: Api, simulator: SimulatorHandle
) -> None:
    simulator.set_faults(create_429=50, retry_after_s=0)
    response = await api.post("/generate", json=flux(), headers=ADMIN)
    assert response.status_code == 429
    body = response.json()
    assert body["limit_scope"] == "upstream"
    assert "throttling" in body["error"]
    assert int(response.headers["Retry-After"]) >= 1
    assert response.headers["X-Limit-Scope"] == "upstream"


async def test_upstream_5xx_is_retried_then_succeeds(api: Api, simulator: SimulatorHandle) -> None:
    simulator.set_faults(create_5xx=2, status_5xx=503)
    response = await api.post("/generate", json=flux(), headers=ADMIN)
    assert response.status_code == 200
    assert simulator.token_stats(SERVER_TOKEN)["created"] == 1


async def test_upstream_5xx_persisting_is_502(api: Api, simulator: SimulatorHandle) -> None:
    simulator.set_faults(create_5xx=50)
    response = await api.post("/generate", json=flux(), headers=ADMIN)
    assert response.status_code == 502
    assert response.json()["error"].startswith("Replicate is unavailable")
    assert simulator.token_stats(SERVER_TOKEN)["created"] == 0


async def test_failed_prediction_is_502_with_replicates_text(
    api: Api, simulator: SimulatorHandle
) -> None:
    simulator.set_faults(fail_fraction=1.0, fail_message="NSFW content detected")
    response = await api.post("/generate", json=flux(), headers=ADMIN)
    assert response.status_code == 502
    body = response.json()
    assert body["error"] == "NSFW content detected"
    assert body["status"] == "failed"
    assert isinstance(body["prediction_id"], str) and body["prediction_id"]


@pytest.mark.simulator(latency_s=3.0)
async def test_prediction_canceled_upstream_is_502(api: Api, simulator: SimulatorHandle) -> None:
    await create_semaphore(api, "watch", 1)
    request = asyncio.create_task(
        api.post("/generate", json=flux(external_semaphore_id="watch"), headers=ADMIN)
    )
    prediction_id = None
    deadline = time.monotonic() + 10
    while prediction_id is None and time.monotonic() < deadline:
        watch = await api.get("/global-semaphores/watch", headers=ADMIN)  # whole ids
        holders = watch.json()["holders"]
        if holders and holders[0]["prediction_id"]:
            prediction_id = holders[0]["prediction_id"]
        else:
            await asyncio.sleep(0.05)
    assert prediction_id is not None
    async with httpx.AsyncClient(base_url=simulator.base_url) as client:
        cancel = await client.post(
            f"/v1/predictions/{prediction_id}/cancel",
            headers={"Authorization": f"Bearer {SERVER_TOKEN}"},
        )
        assert cancel.status_code == 200
    response = await request
    assert response.status_code == 502
    body = response.json()
    assert body["status"] == "canceled"
    assert body["prediction_id"] == prediction_id
    assert (await api.get("/global-semaphores/watch")).json()["in_use"] == 0


# -- batches ------------------------------------------------------------------------------------


async def test_batch_answers_in_the_seed_shape(api: Api) -> None:
    tasks = [
        {"prompt": "A red sports car", "output_filename": "red_car.jpg", "aspect_ratio": "16:9"},
        {"prompt": "A blue ocean wave", "output_filename": "blue_wave", "num_outputs": 2},
        {"prompt": "A green forest path", "output_filename": "forest_path.png", "guidance": 5.0},
    ]
    response = await api.post(
        "/generate-batch", json={"model_name": "flux-dev", "tasks": tasks}, headers=ADMIN
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {
        "success",
        "model_name",
        "total_tasks",
        "successful_count",
        "failed_count",
        "successful_results",
        "failed_results",
        "results",
        "external_semaphore_used",
        "semaphore_id",
    }
    assert body["success"] is True
    assert (body["total_tasks"], body["successful_count"], body["failed_count"]) == (3, 3, 0)
    assert body["failed_results"] == []
    assert body["results"] == body["successful_results"]
    for index, (task, result) in enumerate(zip(tasks, body["results"], strict=True)):
        assert set(result) == {
            "task_index",
            "prompt",
            "output_filename",
            "generated_files",
            "count",
            "prediction_id",
            "status",
        }
        assert result["task_index"] == index
        assert result["prompt"] == task["prompt"]
        assert result["output_filename"] == task["output_filename"]
        assert result["status"] == "succeeded"
        assert result["count"] == len(result["generated_files"])
    names = [[f["filename"] for f in r["generated_files"]] for r in body["results"]]
    assert names == [["red_car.jpg"], ["blue_wave_1.webp", "blue_wave_2.webp"], ["forest_path.png"]]


async def test_batch_legacy_prompts_form(api: Api) -> None:
    response = await api.post(
        "/generate-batch",
        json={
            "model_name": "flux-dev",
            "prompts": ["A red car", "A blue house"],
            "custom_filenames": ["red_car", "blue_house"],
        },
        headers=ADMIN,
    )
    assert response.status_code == 200
    body = response.json()
    assert body["successful_count"] == 2
    assert [r["prompt"] for r in body["results"]] == ["A red car", "A blue house"]
    assert [r["output_filename"] for r in body["results"]] == ["red_car", "blue_house"]
    assert [r["generated_files"][0]["filename"] for r in body["results"]] == [
        "red_car.webp",
        "blue_house.webp",
    ]


@pytest.mark.simulator(seed=7)
async def test_batch_partial_failures_keep_correspondence(
    api: Api, simulator: SimulatorHandle
) -> None:
    simulator.set_faults(fail_fraction=0.5, fail_message="simulated failure")
    prompts = [f"prompt number {i}" for i in range(10)]
    response = await api.post(
        "/generate-batch",
        json={
            "model_name": "flux-dev",
            "tasks": [{"prompt": p, "output_filename": f"img{i}"} for i, p in enumerate(prompts)],
        },
        headers=ADMIN,
    )
    assert response.status_code == 200
    body = response.json()
    assert body["total_tasks"] == 10
    assert body["successful_count"] + body["failed_count"] == 10
    assert 0 < body["failed_count"] < 10  # fixed seed: a mix
    assert body["success"] is False
    results = body["results"]
    assert [r["task_index"] for r in results] == list(range(10))
    assert [r["prompt"] for r in results] == prompts
    assert [r["output_filename"] for r in results] == [f"img{i}" for i in range(10)]
    assert body["successful_results"] == [r for r in results if r["status"] == "succeeded"]
    assert body["failed_results"] == [r for r in results if r["status"] == "failed"]
    for failed in body["failed_results"]:
        assert failed["error"] == "simulated failure"
        assert failed["error_status"] == 502
        assert failed["prediction_status"] == "failed"
        assert failed["prediction_id"]
        assert "generated_files" not in failed
    stats = simulator.token_stats(SERVER_TOKEN)
    assert stats["by_status"]["failed"] == body["failed_count"]
    assert stats["by_status"]["succeeded"] == body["successful_count"]


@pytest.mark.simulator(latency_s=0.2)
async def test_batch_under_external_semaphore_never_exceeds_its_limit(
    api: Api, simulator: SimulatorHandle
) -> None:
    await create_semaphore(api, "limit-two", 2)
    response = await api.post(
        "/generate-batch",
        json={
            "model_name": "flux-dev",
            "tasks": [{"prompt": f"p{i}"} for i in range(8)],
            "external_semaphore_id": "limit-two",
        },
        headers=ADMIN,
    )
    body = response.json()
    assert body["successful_count"] == 8, body
    assert body["external_semaphore_used"] is True and body["semaphore_id"] == "limit-two"
    stats = simulator.token_stats(SERVER_TOKEN)
    assert stats["created"] == 8
    assert stats["max_in_flight"] == 2  # the limit holds, and is used
    detail = (await api.get("/global-semaphores/limit-two")).json()
    assert detail["in_use"] == 0 and detail["counters"]["acquired"] == 8


@pytest.mark.simulator(latency_s=0.2)
async def test_account_concurrency_limit_holds(
    make_api: MakeApi, simulator: SimulatorHandle
) -> None:
    async with make_api(replicate_concurrent_limit=3) as api:
        response = await api.post(
            "/generate-batch",
            json={"model_name": "flux-dev", "tasks": [{"prompt": f"p{i}"} for i in range(7)]},
            headers=ADMIN,
        )
        assert response.json()["successful_count"] == 7
        view = await api.services.coordinator.registry.view(
            token_fingerprint(SERVER_TOKEN), kind=ACCOUNT
        )
        assert view.in_use == 0
    assert simulator.token_stats(SERVER_TOKEN)["max_in_flight"] == 3


async def test_rate_window_timeout_is_429_account_rate(
    make_api: MakeApi, simulator: SimulatorHandle
) -> None:
    async with make_api(replicate_requests_per_minute=3, queue_timeout_seconds=0.5) as api:
        for _ in range(3):
            assert (await api.post("/generate", json=flux(), headers=ADMIN)).status_code == 200
        response = await api.post("/generate", json=flux(), headers=ADMIN)
    assert response.status_code == 429
    body = response.json()
    assert body["limit_scope"] == "account_rate"
    assert "REPLICATE_REQUESTS_PER_MINUTE" in body["error"]
    retry_after = int(response.headers["Retry-After"])
    assert 1 <= retry_after <= 62
    assert body["retry_after"] == retry_after
    assert response.headers["X-Limit-Scope"] == "account_rate"
    assert simulator.token_stats(SERVER_TOKEN)["created"] == 3


async def test_rate_window_in_a_batch_fails_only_the_excess(make_api: MakeApi) -> None:
    async with make_api(replicate_requests_per_minute=2, queue_timeout_seconds=0.5) as api:
        response = await api.post(
            "/generate-batch",
            json={"model_name": "flux-dev", "tasks": [{"prompt": f"p{i}"} for i in range(4)]},
            headers=ADMIN,
        )
    body = response.json()
    assert body["successful_count"] == 2 and body["failed_count"] == 2
    for failed in body["failed_results"]:
        assert failed["error_status"] == 429
        assert failed["limit_scope"] == "account_rate"
        assert failed["retry_after"] >= 1


# -- Redis down ---------------------------------------------------------------------------------


async def test_redis_down_fails_closed_fast_and_recovers(
    own_redis_server: RedisServer, simulator: SimulatorHandle
) -> None:
    mark_store_known(own_redis_server.url)
    # The shortest lease TTL: the recovery below waits out one TTL of grace.
    settings = settings_for(own_redis_server.url, simulator.base_url, lease_ttl_seconds=1.0)
    async with running_api(settings) as api:
        assert (await api.post("/generate", json=flux(), headers=ADMIN)).status_code == 200
        own_redis_server.stop()

        started = time.monotonic()
        response = await api.post("/generate", json=flux(), headers=ADMIN)
        assert time.monotonic() - started < 10
        assert response.status_code == 503
        assert "Redis" in response.json()["error"]
        assert response.headers["Retry-After"]

        batch = await api.post(
            "/generate-batch",
            json={"model_name": "flux-dev", "tasks": [{"prompt": "x"}]},
            headers=ADMIN,
        )
        assert batch.status_code == 503
        health = await api.get("/health")
        assert health.status_code == 503
        assert health.json()["status"] == "degraded"
        assert health.json()["redis"] == {"reachable": False}
        semaphores = await api.get("/global-semaphores")
        assert semaphores.status_code == 503
        # A job naming a semaphore: whether it exists cannot be told now (it was a 500).
        job = await api.post(
            "/jobs", json=flux(external_semaphore_id="image-generation-global"), headers=ADMIN
        )
        assert job.status_code == 503, job.text
        assert "Redis" in job.json()["error"]
        assert simulator.token_stats(SERVER_TOKEN)["created"] == 1  # nothing bypassed a limit

        # Back, empty (like a crash): the coordinator sees the data loss and holds new
        # acquisitions for up to one lease TTL, well within the queue timeout.
        own_redis_server.start()
        deadline = time.monotonic() + 15
        while (await api.get("/health")).status_code != 200:
            assert time.monotonic() < deadline, "did not recover"
            await asyncio.sleep(0.1)
        assert (await api.post("/generate", json=flux(), headers=ADMIN)).status_code == 200
