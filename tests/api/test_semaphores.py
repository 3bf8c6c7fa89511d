"""/health and /global-semaphores: every field, every admin rule, every bad id and limit."""

from __future__ import annotations

from typing import Any

import pytest

from service import SERVICE_NAME, VERSION
from tests.api.conftest import ADMIN, Api, MakeApi

pytestmark = pytest.mark.redis


async def test_health_has_the_seed_fields_plus_redis_and_replica(api: Api) -> None:
    response = await api.get("/health")
    assert response.status_code == 200
    assert response.json() == {
        "status": "healthy",
        "service": SERVICE_NAME,
        "version": VERSION,
        "supported_models": ["flux-dev", "flux-kontext-max", "qwen-image"],
        "concurrency_status": {"concurrent_limit": 60, "requests_per_minute_limit": 600},
        "redis": {"reachable": True},
        "replica_id": "api-test",
    }


async def test_health_reports_configured_limits(make_api: MakeApi) -> None:
    async with make_api(replicate_concurrent_limit=7, replicate_requests_per_minute=42) as api:
        body = (await api.get("/health")).json()
    assert body["concurrency_status"] == {"concurrent_limit": 7, "requests_per_minute_limit": 42}


async def test_semaphore_lifecycle(api: Api) -> None:
    assert (await api.get("/global-semaphores")).json() == {"count": 0, "global_semaphores": []}

    created = await api.post(
        "/global-semaphores",
        json={"semaphore_id": "image-generation-global", "limit": 20},
        headers=ADMIN,
    )
    assert created.status_code == 201
    assert created.json() == {
        "success": True,
        "semaphore_id": "image-generation-global",
        "limit": 20,
    }
    await api.post(
        "/global-semaphores",
        json={"semaphore_id": "cross-service-limit", "limit": 5},
        headers=ADMIN,
    )
    listed = (await api.get("/global-semaphores")).json()
    assert listed == {
        "count": 2,
        "global_semaphores": ["cross-service-limit", "image-generation-global"],
    }

    detail = await api.get("/global-semaphores/cross-service-limit")
    assert detail.status_code == 200
    body = detail.json()
    assert body["semaphore_id"] == "cross-service-limit"
    assert body["limit"] == 5
    assert body["in_use"] == 0 and body["waiting"] == 0
    assert body["holders"] == [] and body["waiters"] == []
    assert isinstance(body["counters"], dict)

    patched = await api.patch(
        "/global-semaphores/cross-service-limit", json={"limit": 8}, headers=ADMIN
    )
    assert patched.status_code == 200
    assert patched.json() == {
        "semaphore_id": "cross-service-limit",
        "limit": 8,
        "previous_limit": 5,
    }
    assert (await api.get("/global-semaphores/cross-service-limit")).json()["limit"] == 8

    deleted = await api.delete("/global-semaphores/cross-service-limit", headers=ADMIN)
    assert deleted.status_code == 200
    assert deleted.json() == {"success": True, "semaphore_id": "cross-service-limit"}
    listed = (await api.get("/global-semaphores")).json()
    assert listed == {"count": 1, "global_semaphores": ["image-generation-global"]}


async def test_detail_shows_holders_and_waiters(api: Api) -> None:
    await api.post("/global-semaphores", json={"semaphore_id": "held", "limit": 1}, headers=ADMIN)
    coordinator = api.services.coordinator
    lease = await coordinator.acquire(
        "held", timeout_s=1, holder=coordinator.holder(purpose="test holder")
    )
    try:
        # Whole lease ids with the admin key (without it: a prefix, test_semaphore_hardening).
        body = (await api.get("/global-semaphores/held", headers=ADMIN)).json()
        assert body["in_use"] == 1
        [holder] = body["holders"]
        assert set(holder) == {
            "lease_id",
            "replica",
            "purpose",
            "prediction_id",
            "expires_in_s",
            "state",
            "adopted_by",
        }
        assert holder["state"] == "held" and holder["adopted_by"] is None
        assert holder["lease_id"] == lease.lease_id
        assert holder["replica"] == "api-test"
        assert holder["purpose"] == "test holder"
        assert holder["prediction_id"] is None
        assert 0 < holder["expires_in_s"] <= 3.0
    finally:
        await lease.release()
    assert (await api.get("/global-semaphores/held")).json()["in_use"] == 0


async def test_duplicate_id_is_409(api: Api) -> None:
    body = {"semaphore_id": "dup", "limit": 2}
    assert (await api.post("/global-semaphores", json=body, headers=ADMIN)).status_code == 201
    again = await api.post("/global-semaphores", json={**body, "limit": 3}, headers=ADMIN)
    assert again.status_code == 409
    assert again.json()["error"].startswith("Semaphore 'dup' already exists")
    assert (await api.get("/global-semaphores/dup")).json()["limit"] == 2


@pytest.mark.parametrize(
    ("method", "body"),
    [("GET", None), ("PATCH", {"limit": 3}), ("DELETE", None)],
)
async def test_unknown_id_is_404(api: Api, method: str, body: Any) -> None:
    response = await api.client.request(method, "/global-semaphores/nope", json=body, headers=ADMIN)
    assert response.status_code == 404
    assert response.json() == {"error": "Semaphore 'nope' not found"}


@pytest.mark.parametrize(
    "limit", [0, -1, -100, "5", True, False, 1.5, 5.0, None, [5], {"n": 5}, 10**7, 10**30]
)
async def test_bad_limit_is_400_naming_the_rule(api: Api, limit: Any) -> None:
    body: dict[str, Any] = {"semaphore_id": "s1", "limit": limit}
    response = await api.post("/global-semaphores", json=body, headers=ADMIN)
    assert response.status_code == 400
    message = response.json()["error"]
    assert "'limit'" in message or "limit" in message
    if limit is not None:
        assert "must be an integer" in message
    assert (await api.get("/global-semaphores")).json()["count"] == 0


async def test_bad_limit_on_patch(api: Api) -> None:
    await api.post("/global-semaphores", json={"semaphore_id": "p", "limit": 2}, headers=ADMIN)
    for limit in (0, -3, "4", True, 2.5):
        response = await api.patch("/global-semaphores/p", json={"limit": limit}, headers=ADMIN)
        assert response.status_code == 400, limit
        assert "Invalid field 'limit': must be an integer" in response.json()["error"]
    missing = await api.patch("/global-semaphores/p", json={}, headers=ADMIN)
    assert missing.json() == {"error": "Missing required field: limit"}


@pytest.mark.parametrize(
    "semaphore_id",
    [
        "",
        "-leading-dash",
        ".dot",
        "has space",
        "slash/inside",
        "a" * 129,
        "ünïcode",
        5,
        True,
        ["x"],
        "tab\tx",
        "new\nline",
    ],
)
async def test_bad_id_is_400_naming_the_rule(api: Api, semaphore_id: Any) -> None:
    response = await api.post(
        "/global-semaphores", json={"semaphore_id": semaphore_id, "limit": 1}, headers=ADMIN
    )
    assert response.status_code == 400
    message = response.json()["error"]
    assert message.startswith("Invalid field 'semaphore_id': must be 1-128 characters")
    assert "starting with a letter or digit" in message


async def test_id_edge_cases_accepted(api: Api) -> None:
    for semaphore_id in ("a", "A" * 128, "svc.images:global_limit-2", "9lives"):
        response = await api.post(
            "/global-semaphores", json={"semaphore_id": semaphore_id, "limit": 1}, headers=ADMIN
        )
        assert response.status_code == 201, semaphore_id
        assert (await api.get(f"/global-semaphores/{semaphore_id}")).status_code == 200


async def test_missing_and_unknown_fields(api: Api) -> None:
    missing_id = await api.post("/global-semaphores", json={"limit": 1}, headers=ADMIN)
    assert missing_id.json() == {"error": "Missing required field: semaphore_id"}
    missing_limit = await api.post("/global-semaphores", json={"semaphore_id": "x"}, headers=ADMIN)
    assert missing_limit.json() == {"error": "Missing required field: limit"}
    extra = await api.post(
        "/global-semaphores", json={"semaphore_id": "x", "limit": 1, "limt": 2}, headers=ADMIN
    )
    assert extra.status_code == 400
    assert extra.json()["error"].startswith("Unknown field 'limt'")
    not_object = await api.post("/global-semaphores", json=["x", 1], headers=ADMIN)
    assert not_object.status_code == 400
    assert "must be a JSON object" in not_object.json()["error"]


@pytest.mark.parametrize("path", ["/global-semaphores/bad%20id", "/global-semaphores/-x"])
async def test_bad_id_in_path_is_400(api: Api, path: str) -> None:
    for method in ("GET", "PATCH", "DELETE"):
        response = await api.client.request(method, path, json={"limit": 2}, headers=ADMIN)
        assert response.status_code == 400, method
        assert "semaphore_id" in response.json()["error"]


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/global-semaphores", {"semaphore_id": "x", "limit": 1}),
        ("PATCH", "/global-semaphores/x", {"limit": 2}),
        ("DELETE", "/global-semaphores/x", None),
    ],
)
async def test_admin_routes_need_the_admin_key(api: Api, method: str, path: str, body: Any) -> None:
    await api.post("/global-semaphores", json={"semaphore_id": "x", "limit": 1}, headers=ADMIN)
    missing = await api.client.request(method, path, json=body)
    assert missing.status_code == 401
    assert missing.json() == {"error": "Admin API key required: provide 'X-Admin-API-Key'"}
    empty = await api.client.request(method, path, json=body, headers={"X-Admin-API-Key": " "})
    assert empty.json() == {"error": "Admin API key required: provide 'X-Admin-API-Key'"}
    wrong = await api.client.request(
        method, path, json=body, headers={"X-Admin-API-Key": "not-the-key"}
    )
    assert wrong.status_code == 401
    assert wrong.json() == {"error": "Invalid admin API key"}
    assert (await api.get("/global-semaphores/x")).json()["limit"] == 1


async def test_no_admin_key_configured_refuses_every_key(make_api: MakeApi) -> None:
    async with make_api(concurrent_docker_admin_api_key=None) as api:
        for key in ("", "anything", "None"):
            response = await api.post(
                "/global-semaphores",
                json={"semaphore_id": "x", "limit": 1},
                headers={"X-Admin-API-Key": key},
            )
            assert response.status_code == 401
        assert (await api.get("/global-semaphores")).json()["count"] == 0


async def test_declared_semaphores_are_listed(make_api: MakeApi) -> None:
    async with make_api(global_semaphores="declared-a=3,declared-b=1") as api:
        listed = (await api.get("/global-semaphores")).json()
        assert listed == {"count": 2, "global_semaphores": ["declared-a", "declared-b"]}
        assert (await api.get("/global-semaphores/declared-a")).json()["limit"] == 3
