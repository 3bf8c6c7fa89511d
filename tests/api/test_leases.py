"""The lease API over HTTP: two services share a semaphore through two replicas on one Redis.

"Replica A" and "replica B" are two app instances (as two processes would be); "services" X, Y
and Z are plain HTTP clients that know nothing but the API.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from service.coordination import SemaphoreView
from tests.api.test_observability import ADMIN, Running, running, serve, settings_for, value

pytestmark = pytest.mark.redis

TTL_S = 1.0


@dataclass
class Pair:
    a: Running
    b: Running


@pytest.fixture
async def pair(redis_url: str) -> AsyncIterator[Pair]:
    async with (
        running(settings_for(redis_url, replica_id="replica-a", lease_ttl_seconds=TTL_S)) as a,
        running(settings_for(redis_url, replica_id="replica-b", lease_ttl_seconds=TTL_S)) as b,
    ):
        await a.coordinator.registry.create("shared", 1)
        yield Pair(a, b)


def leases_url(semaphore_id: str = "shared") -> str:
    return f"/global-semaphores/{semaphore_id}/leases"


async def grant(
    replica: Running, timeout_s: float = 0, semaphore_id: str = "shared", **extra: Any
) -> httpx.Response:
    return await replica.client.post(
        leases_url(semaphore_id), json={"timeout_s": timeout_s, **extra}, headers=ADMIN
    )


async def renew(replica: Running, lease_id: str, semaphore_id: str = "shared") -> httpx.Response:
    return await replica.client.put(f"{leases_url(semaphore_id)}/{lease_id}", headers=ADMIN)


async def release(replica: Running, lease_id: str, semaphore_id: str = "shared") -> httpx.Response:
    return await replica.client.delete(f"{leases_url(semaphore_id)}/{lease_id}", headers=ADMIN)


async def view(replica: Running, semaphore_id: str = "shared") -> SemaphoreView:
    return await replica.coordinator.registry.view(semaphore_id, detail=True)


async def until_waiting(replica: Running, count: int) -> None:
    for _ in range(200):
        if (await view(replica)).waiting == count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never saw {count} waiter(s)")


def parse_iso(text: str) -> datetime:
    assert text.endswith("Z")
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


async def test_grant_answers_the_lease_and_detaches_it_from_the_replica(pair: Pair) -> None:
    before = datetime.now(UTC)
    response = await grant(pair.a, holder="billing-worker-7")
    assert response.status_code == 201
    body = response.json()
    assert set(body) == {"lease_id", "semaphore_id", "expires_at", "ttl_s"}
    assert body["semaphore_id"] == "shared"
    assert body["ttl_s"] == TTL_S
    expires = parse_iso(body["expires_at"])
    assert 0 < (expires - before).total_seconds() < TTL_S + 5
    assert response.headers["location"] == f"/global-semaphores/shared/leases/{body['lease_id']}"
    # Operators see who holds it; this replica's renewer does not hold (or renew) it.
    (holder,) = (await view(pair.a)).holders
    assert holder.lease_id == body["lease_id"]
    assert holder.replica == "remote via replica-a"
    assert holder.purpose == "billing-worker-7"
    assert body["lease_id"] not in pair.a.coordinator.book.held


async def test_waiters_are_served_first_come_first_served_across_replicas(pair: Pair) -> None:
    x = await grant(pair.a)  # service X holds the only slot
    assert x.status_code == 201
    y_task = asyncio.create_task(grant(pair.b, timeout_s=10, holder="service-y"))
    await until_waiting(pair.a, 1)
    z_task = asyncio.create_task(grant(pair.a, timeout_s=10, holder="service-z"))
    await until_waiting(pair.a, 2)

    assert (await release(pair.a, x.json()["lease_id"])).json() == {"released": True}
    y = await asyncio.wait_for(y_task, 5)
    assert y.status_code == 201
    assert not z_task.done()
    assert [h.purpose for h in (await view(pair.a)).holders] == ["service-y"]

    assert (await release(pair.b, y.json()["lease_id"])).json() == {"released": True}
    z = await asyncio.wait_for(z_task, 5)
    assert z.status_code == 201
    assert [h.purpose for h in (await view(pair.a)).holders] == ["service-z"]


async def test_renewing_keeps_a_lease_past_its_ttl(pair: Pair) -> None:
    lease_id = (await grant(pair.a)).json()["lease_id"]
    expiries = []
    for turn in range(6):  # 6 x 0.3 s = 1.8 s, well past the 1 s TTL
        await asyncio.sleep(TTL_S * 0.3)
        replica = pair.a if turn % 2 else pair.b  # any replica renews
        response = await renew(replica, lease_id)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["lease_id"] == lease_id
        assert body["ttl_s"] == TTL_S
        expiries.append(parse_iso(body["expires_at"]))
    assert expiries == sorted(expiries)
    assert (await view(pair.a)).in_use == 1
    assert (await grant(pair.b)).status_code == 429  # still ours: nobody else gets it
    assert (await release(pair.b, lease_id)).json() == {"released": True}
    assert (await release(pair.b, lease_id)).json() == {"released": False}  # idempotent
    assert (await release(pair.a, lease_id)).json() == {"released": False}
    assert (await renew(pair.a, lease_id)).status_code == 404


async def test_a_lease_nobody_renews_expires_and_then_renew_answers_404(pair: Pair) -> None:
    lease_id = (await grant(pair.a)).json()["lease_id"]
    # The granting replica's renewer runs every TTL/3; it must leave a remote lease alone.
    await asyncio.sleep(TTL_S * 1.5)
    waiting = await grant(pair.b, timeout_s=2)
    assert waiting.status_code == 201  # the slot came back
    response = await renew(pair.a, lease_id)
    assert response.status_code == 404
    assert "expired" in response.json()["error"]
    assert (await release(pair.a, lease_id)).json() == {"released": False}


async def test_another_replica_renews_and_releases_a_lease(pair: Pair) -> None:
    lease_id = (await grant(pair.a)).json()["lease_id"]
    assert (await renew(pair.b, lease_id)).status_code == 200
    assert (await release(pair.b, lease_id)).json() == {"released": True}
    assert (await renew(pair.a, lease_id)).status_code == 404
    assert (await view(pair.a)).in_use == 0


async def test_a_lease_outlives_the_replica_that_granted_it(redis_url: str) -> None:
    async with running(settings_for(redis_url, replica_id="replica-b")) as b:
        await b.coordinator.registry.create("shared", 1)
        async with running(settings_for(redis_url, replica_id="replica-a")) as a:
            lease_id = (await grant(a)).json()["lease_id"]
        # Replica A shut down (its Coordinator released every lease *it* held): not this one.
        assert (await view(b)).in_use == 1
        assert (await renew(b, lease_id)).status_code == 200
        assert (await release(b, lease_id)).json() == {"released": True}


async def test_a_wait_that_runs_out_answers_429_with_retry_after(pair: Pair) -> None:
    assert (await grant(pair.a)).status_code == 201
    response = await grant(pair.b, timeout_s=0.3)
    assert response.status_code == 429
    assert int(response.headers["retry-after"]) >= 1
    assert response.headers["x-limit-scope"] == "semaphore"
    body = response.json()
    assert body["limit_scope"] == "semaphore"
    assert body["limit_id"] == "shared"
    assert "shared" in body["error"]
    assert (await view(pair.a)).waiting == 0  # the timed-out waiter left the queue
    immediate = await grant(pair.b, timeout_s=0)  # 0: try once, never queue
    assert immediate.status_code == 429


async def test_a_caller_that_goes_away_leaves_the_queue(pair: Pair) -> None:
    assert (await grant(pair.a)).status_code == 201
    waiter = asyncio.create_task(grant(pair.b, timeout_s=10))
    await until_waiting(pair.a, 1)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await until_waiting(pair.a, 0)
    assert (await view(pair.a)).in_use == 1
    text = (await pair.b.client.get("/metrics")).text
    route = "/global-semaphores/{semaphore_id}/leases"
    assert value(text, "http_requests_total", route=route, method="POST", status="499") == 1


async def test_unknown_semaphores_and_leases(pair: Pair) -> None:
    missing = await grant(pair.a, semaphore_id="no-such-sem")
    assert missing.status_code == 404
    assert missing.json() == {"error": "Semaphore 'no-such-sem' not found"}
    assert (await renew(pair.a, "0" * 24, semaphore_id="no-such-sem")).status_code == 404
    assert (await renew(pair.a, "0" * 24)).status_code == 404
    assert (await renew(pair.a, "not%20an%20id")).status_code == 404
    assert (await release(pair.a, "0" * 24)).json() == {"released": False}
    assert (await release(pair.a, "0" * 24, semaphore_id="no-such-sem")).json() == {
        "released": False
    }


async def test_a_replicas_own_leases_are_not_reachable_through_the_api(pair: Pair) -> None:
    local = await pair.a.coordinator.acquire("shared", timeout_s=1)
    assert (await renew(pair.b, local.lease_id)).status_code == 404
    assert (await release(pair.b, local.lease_id)).json() == {"released": False}
    assert local.is_valid()
    assert (await view(pair.a)).in_use == 1
    await local.release()


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({}, "Admin API key required: provide 'X-Admin-API-Key'"),
        ({"X-Admin-API-Key": "   "}, "Admin API key required: provide 'X-Admin-API-Key'"),
        ({"X-Admin-API-Key": "wrong-key"}, "Invalid admin API key"),
    ],
)
async def test_every_lease_call_needs_the_admin_key(
    pair: Pair, headers: dict[str, str], message: str
) -> None:
    lease_id = (await grant(pair.a)).json()["lease_id"]
    calls = [
        pair.b.client.post(leases_url(), json={"timeout_s": 0}, headers=headers),
        pair.b.client.put(f"{leases_url()}/{lease_id}", headers=headers),
        pair.b.client.delete(f"{leases_url()}/{lease_id}", headers=headers),
    ]
    for call in calls:
        response = await call
        assert response.status_code == 401
        assert response.json() == {"error": message}
    assert (await view(pair.a)).in_use == 1  # nothing was released


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({}, "Missing required field: timeout_s"),
        ({"timeout_s": -1}, "Invalid field 'timeout_s'"),
        ({"timeout_s": 10.5}, "from 0 to 10 (QUEUE_TIMEOUT_SECONDS)"),
        ({"timeout_s": "5"}, "got a string"),
        ({"timeout_s": True}, "got a boolean"),
        ({"timeout_s": 1, "ttl_s": 60}, "Field 'ttl_s' is not accepted"),
        ({"timeout_s": 1, "priority": 1}, "Unknown field 'priority'"),
        ({"timeout_s": 1, "holder": "x" * 201}, "at most 200 characters"),
        ({"timeout_s": 1, "holder": 7}, "must be a string"),
        ({"timeout_s": 1, "holder": "two\nlines"}, "control characters"),
    ],
)
async def test_bad_requests_name_the_field_and_the_rule(
    pair: Pair, body: dict[str, Any], fragment: str
) -> None:
    response = await pair.a.client.post(leases_url(), json=body, headers=ADMIN)
    assert response.status_code == 400
    assert fragment in response.json()["error"]
    assert (await view(pair.a)).in_use == 0


async def test_an_invalid_semaphore_id_is_a_400(pair: Pair) -> None:
    response = await pair.a.client.post(
        "/global-semaphores/-bad-/leases", json={"timeout_s": 0}, headers=ADMIN
    )
    assert response.status_code == 400
    assert "Invalid semaphore id" in response.json()["error"]


async def test_over_a_real_socket_a_hung_up_waiter_leaves_the_queue(redis_url: str) -> None:
    settings = settings_for(redis_url, replica_id="replica-s", lease_ttl_seconds=30.0)
    async with running(settings_for(redis_url, replica_id="observer")) as observer:
        await observer.coordinator.registry.create("shared", 1)
        with serve(settings) as base_url:
            async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
                held = await client.post(leases_url(), json={"timeout_s": 0}, headers=ADMIN)
                assert held.status_code == 201
                waiter = asyncio.create_task(
                    client.post(leases_url(), json={"timeout_s": 8}, headers=ADMIN)
                )
                await until_waiting(observer, 1)
                waiter.cancel()  # closes the connection: uvicorn tells the route
                with pytest.raises(asyncio.CancelledError):
                    await waiter
            await until_waiting(observer, 0)
            assert (await view(observer)).in_use == 1
