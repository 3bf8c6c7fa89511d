"""Issue 11 (hardening), items 9, 12 and 13, over HTTP against a real Redis.

- Declared semaphores (GLOBAL_SEMAPHORES) belong to the configuration: POST, PATCH and DELETE
  of one answer 409 naming it, and change nothing.
- Without the admin key, GET /global-semaphores/{id} and the dashboard's data show lease and
  prediction ids cut to a prefix only.
- What docs/redis-keys.md says about a DELETE with live holders and about `force_released`
  is what the library does.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from service.api.semaphores import SHORT_ID_CHARS
from service.coordination import SemaphoreNotFound
from tests.api.conftest import ADMIN, Api, MakeApi
from tests.fixtures.redis_server import queued_ids

pytestmark = pytest.mark.redis

DOCS = Path(__file__).resolve().parents[2] / "docs" / "redis-keys.md"
PREDICTION_ID = "gm3qorzdhgbfurvjtvhg6dckhu"


async def wait_lost(lease_lost: asyncio.Event) -> None:
    """The background renewer (every TTL/3, 1 s here) reports the lease lost."""
    await asyncio.wait_for(lease_lost.wait(), 10)


# -- item 9: declared semaphores --------------------------------------------------------------


async def test_patch_of_a_declared_semaphore_is_409_naming_the_configuration(
    make_api: MakeApi,
) -> None:
    async with make_api(global_semaphores="declared-a=3") as api:
        response = await api.patch(
            "/global-semaphores/declared-a", json={"limit": 7}, headers=ADMIN
        )
        assert response.status_code == 409
        body = response.json()
        assert "GLOBAL_SEMAPHORES" in body["error"]
        assert body["semaphore_id"] == "declared-a"
        assert body["declared_limit"] == 3
        assert (await api.get("/global-semaphores/declared-a")).json()["limit"] == 3
        # The limit an acquire sees is the configured one, as the answer said.
        lease = await api.services.coordinator.acquire("declared-a", timeout_s=1)
        try:
            assert lease.limit == 3
        finally:
            await lease.release()


async def test_delete_of_a_declared_semaphore_is_409_and_its_holders_keep_their_leases(
    make_api: MakeApi,
) -> None:
    async with make_api(global_semaphores="declared-a=3,declared-b=1") as api:
        coordinator = api.services.coordinator
        lease = await coordinator.acquire("declared-a", timeout_s=1)
        try:
            response = await api.delete("/global-semaphores/declared-a", headers=ADMIN)
            assert response.status_code == 409
            assert "GLOBAL_SEMAPHORES" in response.json()["error"]
            await coordinator.renewer.renew_all()
            assert not lease.lost.is_set()
            detail = (await api.get("/global-semaphores/declared-a", headers=ADMIN)).json()
            assert detail["in_use"] == 1
            listed = (await api.get("/global-semaphores")).json()
            assert listed["global_semaphores"] == ["declared-a", "declared-b"]
        finally:
            await lease.release()


async def test_post_of_a_declared_id_is_409_naming_the_configuration(make_api: MakeApi) -> None:
    async with make_api(global_semaphores="declared-a=3") as api:
        response = await api.post(
            "/global-semaphores", json={"semaphore_id": "declared-a", "limit": 9}, headers=ADMIN
        )
        assert response.status_code == 409
        assert "GLOBAL_SEMAPHORES" in response.json()["error"]
        assert (await api.get("/global-semaphores/declared-a")).json()["limit"] == 3


async def test_semaphores_not_declared_are_still_changed_and_deleted(make_api: MakeApi) -> None:
    async with make_api(global_semaphores="declared-a=3") as api:
        body = {"semaphore_id": "mine", "limit": 2}
        assert (await api.post("/global-semaphores", json=body, headers=ADMIN)).status_code == 201
        patched = await api.patch("/global-semaphores/mine", json={"limit": 4}, headers=ADMIN)
        assert patched.json() == {"semaphore_id": "mine", "limit": 4, "previous_limit": 2}
        assert (await api.delete("/global-semaphores/mine", headers=ADMIN)).status_code == 200


# -- item 12: what anyone may read ------------------------------------------------------------


async def test_detail_without_the_admin_key_shows_shortened_ids_only(api: Api) -> None:
    await api.post("/global-semaphores", json={"semaphore_id": "held", "limit": 2}, headers=ADMIN)
    coordinator = api.services.coordinator
    lease = await coordinator.acquire(
        "held", timeout_s=1, holder=coordinator.holder(purpose="generate flux-dev")
    )
    await lease.set_prediction_id(PREDICTION_ID)
    try:
        public = await api.get("/global-semaphores/held")
        admin = await api.get("/global-semaphores/held", headers=ADMIN)
        wrong = await api.get("/global-semaphores/held", headers={"X-Admin-API-Key": "nope"})
        listed = await api.get("/global-semaphores")
    finally:
        await lease.release()

    assert public.status_code == 200
    body = public.json()
    assert set(body) == {
        "semaphore_id",
        "limit",
        "in_use",
        "waiting",
        "orphans",
        "holders",
        "waiters",
        "counters",
    }
    assert (body["limit"], body["in_use"], body["waiting"]) == (2, 1, 0)
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
    assert holder["lease_id"] == lease.lease_id[:SHORT_ID_CHARS]
    assert holder["prediction_id"] == PREDICTION_ID[:SHORT_ID_CHARS]
    assert lease.lease_id not in public.text and PREDICTION_ID not in public.text

    [full] = admin.json()["holders"]
    assert full["lease_id"] == lease.lease_id
    assert full["prediction_id"] == PREDICTION_ID

    assert wrong.status_code == 401
    assert wrong.json() == {"error": "Invalid admin API key"}

    assert listed.json() == {"count": 1, "global_semaphores": ["held"]}


async def test_dashboard_data_shows_shortened_prediction_ids(api: Api) -> None:
    await api.post("/global-semaphores", json={"semaphore_id": "gpu", "limit": 1}, headers=ADMIN)
    coordinator = api.services.coordinator
    lease = await coordinator.acquire("gpu", timeout_s=1)
    await lease.set_prediction_id(PREDICTION_ID)
    try:
        response = await api.get("/dashboard/data")
    finally:
        await lease.release()
    [gpu] = response.json()["semaphores"]
    [holder] = gpu["holders"]
    assert holder["lease"] == lease.lease_id[:SHORT_ID_CHARS]
    assert holder["prediction_id"] == PREDICTION_ID[:SHORT_ID_CHARS]
    assert PREDICTION_ID not in response.text and lease.lease_id not in response.text


# -- item 13: the documented DELETE and force-release ---------------------------------------


async def test_delete_with_live_holders_sticks_and_ends_their_leases(api: Api) -> None:
    await api.post("/global-semaphores", json={"semaphore_id": "doomed", "limit": 1}, headers=ADMIN)
    coordinator = api.services.coordinator
    keys = coordinator.keyspace.semaphore("doomed")
    lease = await coordinator.acquire("doomed", timeout_s=1)
    waiter = asyncio.create_task(coordinator.acquire("doomed", timeout_s=10))
    try:
        await queued_ids(coordinator.redis, keys.queue, 1)
        deleted = await api.delete("/global-semaphores/doomed", headers=ADMIN)
        assert deleted.status_code == 200
        with pytest.raises(SemaphoreNotFound):
            await asyncio.wait_for(waiter, 10)
        await wait_lost(lease.lost)
    finally:
        waiter.cancel()
        await lease.release()
    # Renewals did not re-create it: gone from Redis, from the list and from GET.
    assert await coordinator.redis.exists(*keys.all) == 0
    assert (await api.get("/global-semaphores")).json()["count"] == 0
    assert (await api.get("/global-semaphores/doomed")).status_code == 404


async def test_delete_ends_a_remote_lease(api: Api) -> None:
    await api.post("/global-semaphores", json={"semaphore_id": "doomed", "limit": 1}, headers=ADMIN)
    granted = await api.post(
        "/global-semaphores/doomed/leases", json={"timeout_s": 0}, headers=ADMIN
    )
    lease_id = granted.json()["lease_id"]
    assert (await api.delete("/global-semaphores/doomed", headers=ADMIN)).status_code == 200
    renewed = await api.client.put(f"/global-semaphores/doomed/leases/{lease_id}", headers=ADMIN)
    assert renewed.status_code == 404
    assert (await api.get("/global-semaphores/doomed")).status_code == 404


async def test_force_release_of_a_holder_counts_force_released_then_lost(api: Api) -> None:
    await api.post("/global-semaphores", json={"semaphore_id": "stuck", "limit": 1}, headers=ADMIN)
    coordinator = api.services.coordinator
    lease = await coordinator.acquire("stuck", timeout_s=1)
    assert await coordinator.registry.force_release("stuck", lease.lease_id) is True
    counters = (await api.get("/global-semaphores/stuck")).json()["counters"]
    assert counters.get("force_released") == 1
    assert "lost" not in counters
    await wait_lost(lease.lost)
    counters = (await api.get("/global-semaphores/stuck")).json()["counters"]
    assert (counters.get("force_released"), counters.get("lost")) == (1, 1)


def test_the_docs_no_longer_say_what_is_false() -> None:
    text = " ".join(DOCS.read_text(encoding="utf-8").split())
    assert "does not stick" not in text
    assert "never counted for a holder" not in text
    assert "only counts it when the id removed was a queue entry" not in text
    assert "**A delete sticks, and ends its holders' leases.**" in text
    assert "**A force-release counts `force_released`.**" in text
    assert "declared in `GLOBAL_SEMAPHORES` belongs to the configuration" in text
