"""The simulator's `GET /v1/predictions`: Replicate's list of the caller's own predictions.

Replicate's reference (predictions.list): the token's own predictions, newest first, 100 a
page, `{"next", "previous", "results"}` with cursor URLs, filters `created_after` (at or after)
and `created_before` (before). The app runs in process (httpx ASGITransport) with an injected
clock, so creation times are set by moving the clock, never by sleeping.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from replicate.client import Client

from service.fingerprint import token_fingerprint
from service.simulator import SimulatorConfig, create_app
from service.simulator.ids import iso_z
from service.simulator.runtime import SimulatorRuntime

TOKEN = "r8_list_test"
OTHER_TOKEN = "r8_list_test_other"
BASE = "http://sim"
FLUX = "black-forest-labs/flux-dev"
QWEN = "qwen/qwen-image"
T0 = 1_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@dataclass
class Sim:
    http: httpx.AsyncClient
    transport: httpx.ASGITransport
    clock: Clock
    runtime: SimulatorRuntime

    async def create(
        self, prompt: str, *, model: str = FLUX, token: str = TOKEN, **headers: str
    ) -> dict[str, Any]:
        response = await self.http.post(
            f"/v1/models/{model}/predictions",
            json={"input": {"prompt": prompt}},
            headers={"Authorization": f"Bearer {token}", **headers},
        )
        assert response.status_code == 201, response.text
        return dict(response.json())

    async def create_many(self, count: int, *, step_s: float = 1.0) -> list[str]:
        """`count` predictions one `step_s` apart; their ids, oldest first."""
        ids = []
        for i in range(count):
            ids.append((await self.create(f"p{i}"))["id"])
            self.clock.now += step_s
        return ids

    async def list(self, url: str = "/v1/predictions", **params: str) -> dict[str, Any]:
        response = await self.http.get(url, params=params or None)
        assert response.status_code == 200, response.text
        assert set(response.json()) == {"previous", "next", "results"}
        return dict(response.json())

    async def list_all(self, **params: str) -> tuple[list[str], int]:
        """Every id (following `next`) and the number of pages."""
        ids: list[str] = []
        pages = 0
        url: str | None = "/v1/predictions"
        while url is not None:
            body = await self.list(url, **(params if pages == 0 else {}))
            ids += [r["id"] for r in body["results"]]
            pages += 1
            url = body["next"]
        return ids, pages

    async def stats(self, token: str = TOKEN) -> dict[str, Any]:
        fp = token_fingerprint(token)
        body = (await self.http.get("/_sim/stats", params={"token_fp": fp})).json()
        return dict(body["tokens"][fp])


@pytest.fixture
def sim_config() -> SimulatorConfig:
    return SimulatorConfig(latency_s=10.0, jitter_fraction=0.0, queue_fraction=0.1, seed=3)


@pytest.fixture
async def sim(sim_config: SimulatorConfig) -> AsyncIterator[Sim]:
    clock = Clock()
    app = create_app(sim_config, clock=clock)
    transport = httpx.ASGITransport(app=app)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(transport=transport, base_url=BASE, headers=headers) as http:
        yield Sim(http, transport, clock, app.state.runtime)


def cursor_of(url: str) -> str:
    (cursor,) = parse_qs(urlsplit(url).query)["cursor"]
    return cursor


# -- authentication and shape ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "detail"),
    [
        ({}, "You did not pass an authentication token"),
        ({"Authorization": "Bearer nope"}, "You did not pass a valid authentication token"),
    ],
)
async def test_without_a_valid_token_answers_401(
    sim: Sim, headers: dict[str, str], detail: str
) -> None:
    await sim.create("a cat")
    async with httpx.AsyncClient(transport=sim.transport, base_url=BASE) as anonymous:
        response = await anonymous.get("/v1/predictions", headers=headers)

    assert response.status_code == 401
    assert response.json() == {"title": "Unauthenticated", "detail": detail, "status": 401}
    assert (await sim.stats())["list_requests"] == 0


async def test_a_result_is_the_prediction_object_without_logs(sim: Sim) -> None:
    created = await sim.create("a cat")
    sim.clock.now += 20  # succeeded, with output and metrics

    body = await sim.list()

    assert (body["previous"], body["next"]) == (None, None)
    (listed,) = body["results"]
    got = (await sim.http.get(f"/v1/predictions/{created['id']}")).json()
    assert listed["status"] == "succeeded" and listed["output"]
    # Replicate's documented list result is the GET object minus `logs`.
    assert "logs" in got and "logs" not in listed
    assert listed == {k: v for k, v in got.items() if k != "logs"}
    assert listed["input"] == {"prompt": "a cat"}
    assert (listed["model"], listed["version"], listed["source"]) == (FLUX, "hidden", "api")
    assert listed["created_at"] == iso_z(T0)
    assert listed["urls"]["get"] == f"{BASE}/v1/predictions/{created['id']}"


async def test_an_empty_account_lists_nothing(sim: Sim) -> None:
    assert await sim.list() == {"previous": None, "next": None, "results": []}


@pytest.mark.parametrize(
    "sim_config",
    [SimulatorConfig(latency_s=60.0, jitter_fraction=0.0, queue_fraction=0.5, seed=3)],
)
async def test_statuses_as_of_now_including_aborted(sim: Sim) -> None:
    aborted = await sim.create("never starts", **{"Cancel-After": "5s"})  # starts at +30 s
    running = await sim.create("still queued")
    sim.clock.now += 10

    statuses = {r["id"]: r["status"] for r in (await sim.list())["results"]}

    assert statuses == {aborted["id"]: "aborted", running["id"]: "starting"}


# -- order, ownership, pagination ------------------------------------------------------------


async def test_newest_first_and_ties_in_reverse_creation_order(sim: Sim) -> None:
    first = (await sim.create("first"))["id"]
    sim.clock.now += 1
    second = (await sim.create("second"))["id"]
    third = (await sim.create("third"))["id"]  # same created_at as `second`
    sim.clock.now -= 5  # a clock that went back: order follows created_at, not arrival
    earliest = (await sim.create("earliest"))["id"]

    ids = [r["id"] for r in (await sim.list())["results"]]

    assert ids == [third, second, first, earliest]


async def test_only_the_callers_own_predictions(sim: Sim) -> None:
    mine = (await sim.create("mine"))["id"]
    theirs = (await sim.create("theirs", token=OTHER_TOKEN))["id"]

    other = await sim.http.get(
        "/v1/predictions", headers={"Authorization": f"Bearer {OTHER_TOKEN}"}
    )

    assert [r["id"] for r in (await sim.list())["results"]] == [mine]
    assert [r["id"] for r in other.json()["results"]] == [theirs]


async def test_pages_of_100_with_cursor_links_both_ways(sim: Sim) -> None:
    created = await sim.create_many(250)
    newest_first = created[::-1]

    page1 = await sim.list()
    page2 = await sim.list(page1["next"])
    page3 = await sim.list(page2["next"])
    back = await sim.list(page3["previous"])

    assert [len(p["results"]) for p in (page1, page2, page3)] == [100, 100, 50]
    ids = [r["id"] for p in (page1, page2, page3) for r in p["results"]]
    assert ids == newest_first
    assert page1["previous"] is None and page3["next"] is None
    assert page1["next"].startswith(f"{BASE}/v1/predictions?cursor=")
    assert [r["id"] for r in back["results"]] == newest_first[100:200]
    assert [r["id"] for r in (await sim.list(page2["previous"]))["results"]] == newest_first[:100]
    stats = await sim.stats()
    assert (stats["list_requests"], stats["get_requests"]) == (5, 0)


async def test_predictions_created_while_paging_do_not_shift_the_pages(sim: Sim) -> None:
    created = await sim.create_many(150)

    page1 = await sim.list()
    await sim.create_many(30)  # newer than everything listed so far
    page2 = await sim.list(page1["next"])

    ids = [r["id"] for p in (page1, page2) for r in p["results"]]
    assert ids == created[::-1]
    assert page2["next"] is None


@pytest.mark.parametrize("cursor", ["not-base64!", "bm90IGEgY3Vyc29y", "cj0wJnA9eCZzPTE="])
async def test_a_cursor_it_did_not_issue_answers_404(sim: Sim, cursor: str) -> None:
    response = await sim.http.get("/v1/predictions", params={"cursor": cursor})

    assert response.status_code == 404
    assert response.json() == {"detail": "Invalid cursor", "status": 404}


async def test_the_official_client_pages_through_the_list(sim: Sim) -> None:
    created = await sim.create_many(120)
    client = Client(api_token=TOKEN, base_url=BASE, transport=sim.transport)

    first = await client.predictions.async_list()
    assert first.next is not None
    second = await client.predictions.async_list(cursor=first.next)

    assert [p.id for p in [*first, *second]] == created[::-1]
    assert second.previous is not None and second.next is None
    assert first.results[0].input == {"prompt": "p119"}


# -- filters ---------------------------------------------------------------------------------


async def test_created_after_is_inclusive_and_created_before_exclusive(sim: Sim) -> None:
    created = await sim.create_many(10)  # at T0, T0 + 1, ..., T0 + 9

    after = await sim.list(created_after=iso_z(T0 + 3))
    before = await sim.list(created_before=iso_z(T0 + 3))
    window = await sim.list(
        created_after="1970-01-12T13:46:44+00:00", created_before=iso_z(T0 + 6)
    )  # T0 + 4 written with an offset

    assert [r["id"] for r in after["results"]] == created[3:][::-1]
    assert [r["id"] for r in before["results"]] == created[:3][::-1]
    assert [r["id"] for r in window["results"]] == created[4:6][::-1]


async def test_filters_are_kept_in_the_page_links(sim: Sim) -> None:
    created = await sim.create_many(260)
    bound = iso_z(T0 + 40)

    ids, pages = await sim.list_all(created_after=bound)
    first = await sim.list(created_after=bound)

    assert ids == created[40:][::-1]
    assert pages == 3
    assert parse_qs(urlsplit(first["next"]).query)["created_after"] == [bound]


async def test_source_web_lists_only_website_predictions(sim: Sim) -> None:
    await sim.create("made through the API")

    assert (await sim.list(source="web"))["results"] == []


async def test_a_malformed_date_answers_400(sim: Sim) -> None:
    response = await sim.http.get("/v1/predictions", params={"created_after": "yesterday"})

    assert response.status_code == 400
    assert "created_after" in response.json()["detail"]


# -- counters, faults, rate limit ------------------------------------------------------------


async def test_list_faults_answer_before_the_list_and_are_counted(sim: Sim) -> None:
    await sim.create("a cat")
    sim.runtime.faults.list_5xx = 1
    sim.runtime.faults.status_5xx = 503

    failed = await sim.http.get("/v1/predictions")
    ok = await sim.http.get("/v1/predictions")

    assert failed.status_code == 503
    assert ok.status_code == 200 and len(ok.json()["results"]) == 1
    assert sim.runtime.faults.served == {"list_5xx": 1}
    assert (await sim.stats())["list_requests"] == 2


@pytest.mark.parametrize(
    "sim_config",
    [SimulatorConfig(latency_s=10.0, jitter_fraction=0.0, other_limit=2, seed=3)],
)
async def test_lists_share_the_3000_a_minute_bucket_of_non_create_calls(sim: Sim) -> None:
    created = await sim.create("a cat")
    await sim.http.get(f"/v1/predictions/{created['id']}")

    listed = await sim.http.get("/v1/predictions")
    throttled = await sim.http.get("/v1/predictions")

    assert listed.status_code == 200
    assert listed.headers["ratelimit-remaining"] == "0"
    assert throttled.status_code == 429
    assert throttled.json()["retry_after"] >= 1
    assert (await sim.stats())["list_requests"] == 2
