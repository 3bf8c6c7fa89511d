"""Hostile input against a live replica (the soak with random replica kills: test_soak.py)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.fixtures.cluster import ADMIN_KEY, TOKEN, Cluster

pytestmark = [pytest.mark.system, pytest.mark.redis]


@pytest.fixture
def cluster(shared_cluster: Cluster) -> Cluster:
    """The cluster the system tests share (tests/system/conftest.py)."""
    return shared_cluster


ADMIN = {"X-Admin-API-Key": ADMIN_KEY}
JSON = {"Content-Type": "application/json"}
deep = "[" * 100_000 + "]" * 100_000

# (method, path, raw body or JSON, headers)
BARRAGE: list[tuple[str, str, Any, dict[str, str]]] = [
    ("POST", "/generate", b"", ADMIN),
    ("POST", "/generate", b"{not json", {**ADMIN, **JSON}),
    ("POST", "/generate", b"[1, 2, 3]", {**ADMIN, **JSON}),
    ("POST", "/generate", b'"just a string"', {**ADMIN, **JSON}),
    ("POST", "/generate", deep.encode(), {**ADMIN, **JSON}),
    ("POST", "/generate", b"x" * (17 * 1024 * 1024), {**ADMIN, **JSON}),
    ("POST", "/generate", {"prompt": "no model"}, ADMIN),
    ("POST", "/generate", {"model_name": "dall-e", "prompt": "x"}, ADMIN),
    ("POST", "/generate", {"model_name": "flux-dev"}, ADMIN),
    ("POST", "/generate", {"model_name": "flux-dev", "prompt": 42}, ADMIN),
    ("POST", "/generate", {"model_name": "flux-dev", "prompt": "x", "guidance": "high"}, ADMIN),
    ("POST", "/generate", {"model_name": "flux-dev", "prompt": "x", "guidance": 11}, ADMIN),
    ("POST", "/generate", {"model_name": "flux-dev", "prompt": "x", "num_outputs": 0}, ADMIN),
    ("POST", "/generate", {"model_name": "flux-dev", "prompt": "x", "num_outputs": 2.5}, ADMIN),
    ("POST", "/generate", {"model_name": "flux-dev", "prompt": "x", "aspect_ratio": "7:3"}, ADMIN),
    ("POST", "/generate", {"model_name": "flux-dev", "prompt": "x", "evil": True}, ADMIN),
    ("POST", "/generate", {"model_name": "flux-dev", "prompt": "x", "megapixels": 1}, ADMIN),
    ("POST", "/generate", {"model_name": "flux-dev", "prompt": "x", "output_filename": 7}, ADMIN),
    (
        "POST",
        "/generate",
        {"model_name": "flux-kontext-max", "prompt": "x", "input_image": "/etc/passwd"},
        ADMIN,
    ),
    (
        "POST",
        "/generate",
        {"model_name": "flux-kontext-max", "prompt": "x", "input_image": "file:///etc/passwd"},
        ADMIN,
    ),
    (
        "POST",
        "/generate",
        {"model_name": "flux-kontext-max", "prompt": "x", "output_format": "webp"},
        ADMIN,
    ),
    (
        "POST",
        "/generate",
        {"model_name": "qwen-image", "prompt": "x", "num_inference_steps": 80},
        ADMIN,
    ),
    (
        "POST",
        "/generate",
        {"model_name": "flux-dev", "prompt": "x", "external_semaphore_id": "../../etc"},
        ADMIN,
    ),
    (
        "POST",
        "/generate",
        {"model_name": "flux-dev", "prompt": "x", "external_semaphore_id": "missing-one"},
        ADMIN,
    ),
    ("POST", "/generate", {"model_name": "flux-dev", "prompt": "x", "credentials": "r8_x"}, {}),
    ("POST", "/generate", {"model_name": "flux-dev", "prompt": "x"}, {}),
    ("POST", "/generate", {"model_name": "flux-dev", "prompt": "x"}, {"X-Admin-API-Key": "wrong"}),
    (
        "POST",
        "/generate",
        {"model_name": "flux-dev", "prompt": "x", "credentials": {"replicate_api_token": "bad"}},
        {},
    ),
    ("POST", "/generate-batch", {"model_name": "flux-dev", "tasks": []}, ADMIN),
    ("POST", "/generate-batch", {"model_name": "flux-dev", "tasks": [{"seed": 1}]}, ADMIN),
    ("POST", "/generate-batch", {"model_name": "flux-dev", "tasks": "all of them"}, ADMIN),
    (
        "POST",
        "/generate-batch",
        {"model_name": "flux-dev", "tasks": [{"prompt": "x"}] * 101},
        ADMIN,
    ),
    ("POST", "/generate-batch", {"model_name": "flux-dev", "prompts": ["a", 3]}, ADMIN),
    ("POST", "/global-semaphores", {"semaphore_id": "neg", "limit": -1}, ADMIN),
    ("POST", "/global-semaphores", {"semaphore_id": "zero", "limit": 0}, ADMIN),
    ("POST", "/global-semaphores", {"semaphore_id": "str", "limit": "5"}, ADMIN),
    ("POST", "/global-semaphores", {"semaphore_id": "bad id!", "limit": 5}, ADMIN),
    ("POST", "/global-semaphores", {"semaphore_id": "x" * 500, "limit": 5}, ADMIN),
    ("POST", "/global-semaphores", {"semaphore_id": "nokey", "limit": 5}, {}),
    (
        "POST",
        "/global-semaphores",
        {"semaphore_id": "wrongkey", "limit": 5},
        {"X-Admin-API-Key": "no"},
    ),
    ("PATCH", "/global-semaphores/missing", {"limit": 3}, ADMIN),
    ("DELETE", "/global-semaphores/missing", None, ADMIN),
    ("GET", "/global-semaphores/%2e%2e%2fetc", None, {}),
    ("GET", "/no-such-route", None, {}),
    ("PUT", "/generate", {"model_name": "flux-dev", "prompt": "x"}, ADMIN),
]


def test_every_hostile_request_gets_a_4xx_json_error_and_the_replica_stays_healthy(
    cluster: Cluster,
) -> None:
    assert len(BARRAGE) >= 30
    with httpx.Client(base_url=cluster.url(0), timeout=30) as client:
        for method, path, payload, headers in BARRAGE:
            if isinstance(payload, bytes):
                response = client.request(method, path, content=payload, headers=headers)
            else:
                response = client.request(method, path, json=payload, headers=headers)
            case = f"{method} {path} {str(payload)[:80]!r}"
            assert 400 <= response.status_code < 500, f"{case} → {response.status_code}"
            data = response.json()
            assert isinstance(data.get("error"), str) and data["error"], case
            assert "Traceback" not in response.text, case
            for secret in (ADMIN_KEY, TOKEN):
                assert secret not in response.text, case
        assert client.get("/health").status_code == 200
    assert ADMIN_KEY not in cluster.logs() and TOKEN not in cluster.logs()
