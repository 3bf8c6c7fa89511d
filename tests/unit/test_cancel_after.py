"""`Cancel-After`: the simulator honours it, and the upstream sends it on every create.

Simulator side: the app in process (httpx ASGITransport) with an injected clock, so deadlines
are reached by moving the clock, never by sleeping. Upstream side: the real replicate client
against the simulator over real HTTP, behind an ASGI recorder of what each request carried;
the run's clock is injected and moved by its own sleeps.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from starlette.types import Receive, Scope, Send

from service.errors import PredictionFailed, UpstreamError
from service.fingerprint import token_fingerprint
from service.simulator import SimulatorConfig, create_app
from service.simulator.api import parse_duration_s
from service.simulator.ids import iso_z
from service.simulator.runtime import SimulatorRuntime
from service.upstream import Upstream
from tests.fixtures.threaded_server import serve_in_thread

TOKEN = "r8_cancel_after_test"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
FLUX = "black-forest-labs/flux-dev"
FLUX_PATH = f"/v1/models/{FLUX}/predictions"
T0 = 1_000_000.0


class Clock:
    """An injected clock: T0 (or real time) plus whatever `advance` added."""

    def __init__(self, *, real_time: bool = False) -> None:
        self.real_time = real_time
        self.offset = 0.0

    def __call__(self) -> float:
        return (time.time() if self.real_time else T0) + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds

    def set(self, moment: float) -> None:
        self.offset = moment - T0


def config(**overrides: Any) -> SimulatorConfig:
    """10 s predictions (no jitter) that start after queue_fraction · 10 s."""
    base = SimulatorConfig(latency_s=10.0, jitter_fraction=0.0, queue_fraction=0.1, seed=7)
    return base.replace(**overrides)


# -- the simulator honours Cancel-After ------------------------------------------------------


@dataclass
class Sim:
    http: httpx.AsyncClient
    clock: Clock
    runtime: SimulatorRuntime

    async def create(self, cancel_after: str | None, path: str = FLUX_PATH) -> httpx.Response:
        headers = {"Cancel-After": cancel_after} if cancel_after is not None else {}
        body: dict[str, Any] = {"input": {"prompt": "a cat"}}
        if path == "/v1/predictions":
            body["version"] = FLUX
        return await self.http.post(path, json=body, headers=headers)

    async def at(self, moment: float, prediction_id: str) -> dict[str, Any]:
        """The prediction as GET answers it when the clock reads `moment`."""
        self.clock.set(moment)
        response = await self.http.get(f"/v1/predictions/{prediction_id}")
        assert response.status_code == 200, response.text
        return dict(response.json())

    async def stats(self) -> dict[str, Any]:
        fp = token_fingerprint(TOKEN)
        body = (await self.http.get("/_sim/stats", params={"token_fp": fp})).json()
        return dict(body["tokens"][fp])


@pytest.fixture
def sim_config() -> SimulatorConfig:
    return config()


@pytest.fixture
async def sim(sim_config: SimulatorConfig) -> AsyncIterator[Sim]:
    clock = Clock()
    app = create_app(sim_config, clock=clock)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://sim", headers=AUTH) as http:
        yield Sim(http, clock, app.state.runtime)


async def test_deadline_while_running_cancels_at_the_deadline(sim: Sim) -> None:
    created = await sim.create("5s")  # starts at +1 s, would finish at +10 s

    assert created.status_code == 201, created.text
    body = created.json()
    assert body["deadline"] == iso_z(T0 + 5)
    running = await sim.at(T0 + 4.9, body["id"])
    assert running["status"] == "processing"
    assert (await sim.stats())["intervals"] == [[T0, None]]
    ended = await sim.at(T0 + 5, body["id"])
    assert ended["status"] == "canceled"
    assert ended["completed_at"] == iso_z(T0 + 5)
    assert ended["started_at"] == iso_z(T0 + 1)
    assert ended["output"] is None
    assert ended["metrics"] == {"total_time": 5.0, "predict_time": 4.0}
    stats = await sim.stats()
    assert stats["intervals"] == [[T0, T0 + 5]]
    assert stats["deadlines"] == [T0 + 5]
    assert (stats["in_flight"], stats["max_in_flight"]) == (0, 1)
    assert stats["by_status"] == {"succeeded": 0, "failed": 0, "canceled": 1, "aborted": 0}
    later = await sim.at(T0 + 20, body["id"])
    assert (later["status"], later["completed_at"]) == ("canceled", iso_z(T0 + 5))


@pytest.mark.parametrize("sim_config", [config(queue_fraction=0.8)])
async def test_deadline_before_the_start_aborts_unbilled(sim: Sim) -> None:
    body = (await sim.create("5")).json()  # a bare number is seconds; starts only at +8 s

    assert (await sim.at(T0 + 4.9, body["id"]))["status"] == "starting"
    aborted = await sim.at(T0 + 5, body["id"])
    assert aborted["status"] == "aborted"
    assert aborted["started_at"] is None
    assert aborted["completed_at"] == iso_z(T0 + 5)
    assert aborted["metrics"] == {"total_time": 5.0}  # no predict_time: not billed
    assert (aborted["logs"], aborted["output"], aborted["error"]) == ("", None, None)
    stats = await sim.stats()
    assert stats["intervals"] == [[T0, T0 + 5]]
    assert stats["in_flight"] == 0
    assert stats["by_status"] == {"succeeded": 0, "failed": 0, "canceled": 0, "aborted": 1}
    cancel = await sim.http.post(f"/v1/predictions/{body['id']}/cancel")
    assert cancel.json()["status"] == "aborted"  # terminal: a late cancel changes nothing


@pytest.mark.parametrize("sim_config", [config(queue_fraction=0.0)])
async def test_slow_start_fault_can_abort_too(sim: Sim) -> None:
    sim.runtime.faults.slow_start_s = 30.0  # a cold boot: "starting" for 30 s
    body = (await sim.create("20s")).json()

    assert (await sim.at(T0 + 20, body["id"]))["status"] == "aborted"


async def test_deadline_after_completion_changes_nothing(sim: Sim) -> None:
    body = (await sim.create("1h30m")).json()

    assert body["deadline"] == iso_z(T0 + 5400)
    done = await sim.at(T0 + 10, body["id"])
    assert done["status"] == "succeeded"
    assert done["completed_at"] == iso_z(T0 + 10)
    assert (await sim.stats())["intervals"] == [[T0, T0 + 10]]


async def test_a_cancel_before_the_deadline_ends_it_first(sim: Sim) -> None:
    body = (await sim.create("5s")).json()

    sim.clock.set(T0 + 2)
    assert (await sim.http.post(f"/v1/predictions/{body['id']}/cancel")).status_code == 200
    later = await sim.at(T0 + 6, body["id"])
    assert (later["status"], later["completed_at"]) == ("canceled", iso_z(T0 + 2))
    assert (await sim.stats())["intervals"] == [[T0, T0 + 2]]


async def test_create_by_version_honours_it_and_no_header_means_no_deadline(sim: Sim) -> None:
    with_header = (await sim.create("30s", path="/v1/predictions")).json()
    without = (await sim.create(None)).json()

    assert with_header["deadline"] == iso_z(T0 + 30)
    assert without["deadline"] is None
    assert (await sim.at(T0 + 10, without["id"]))["status"] == "succeeded"
    assert (await sim.stats())["deadlines"] == [T0 + 30, None]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30),
        ("5m", 300),
        ("1h30m", 5400),
        ("2m30s", 150),
        ("1.5h", 5400),
        ("5500ms", 5.5),
        ("90", 90),
        ("7.5", 7.5),
        (" 10s ", 10),
        ("abc", None),
        ("", None),
        ("5x", None),
        ("-5s", None),
        ("1h 30m", None),
        ("s", None),
        ("5S", None),
    ],
)
def test_duration_forms(text: str, seconds: float | None) -> None:
    assert parse_duration_s(text) == seconds


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("4s", "number_gte"),
        ("4", "number_gte"),
        ("4999ms", "number_gte"),
        ("0", "number_gte"),
        ("abc", "format"),
        ("", "format"),
        ("-5s", "format"),
    ],
)
@pytest.mark.parametrize("path", [FLUX_PATH, "/v1/predictions"])
async def test_bad_values_are_422_and_create_nothing(
    sim: Sim, value: str, problem: str, path: str
) -> None:
    response = await sim.create(value, path=path)

    assert response.status_code == 422
    body = response.json()
    assert (body["title"], body["status"]) == ("Input validation failed", 422)
    assert body["detail"].startswith("- Cancel-After: ") and body["detail"].endswith("\n")
    ((field_problem,),) = (body["invalid_fields"],)
    assert (field_problem["type"], field_problem["field"]) == (problem, "Cancel-After")
    assert body["detail"] == f"- Cancel-After: {field_problem['description']}\n"
    stats = await sim.stats()
    assert (stats["created"], stats["create_errors"]) == (0, {"422": 1})


async def test_bad_value_is_listed_with_the_bodys_problems(sim: Sim) -> None:
    response = await sim.http.post(FLUX_PATH, json={}, headers={"Cancel-After": "2s"})

    assert response.status_code == 422
    fields = [(p["type"], p["field"]) for p in response.json()["invalid_fields"]]
    assert fields == [("required", "(root)"), ("number_gte", "Cancel-After")]


# -- the upstream sends it on every create, and only there -----------------------------------


@dataclass
class Recorder:
    """ASGI middleware in front of the simulator: each request's method, path, Cancel-After."""

    app: Any
    seen: list[tuple[str, str, str | None]] = field(default_factory=list)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
            self.seen.append((scope["method"], scope["path"], headers.get("cancel-after")))
        await self.app(scope, receive, send)

    def creates(self) -> list[str | None]:
        return [value for method, path, value in self.seen if (method, path) == ("POST", FLUX_PATH)]

    def others(self) -> list[tuple[str, str, str | None]]:
        return [s for s in self.seen if (s[0], s[1]) != ("POST", FLUX_PATH)]


@dataclass
class Served:
    base_url: str
    recorder: Recorder
    runtime: SimulatorRuntime
    clock: Clock  # the simulator's (real time unless a test moves it)


@pytest.fixture
def served_config() -> SimulatorConfig:
    return config(latency_s=300.0)


@pytest.fixture
def served(served_config: SimulatorConfig) -> Iterator[Served]:
    clock = Clock(real_time=True)  # real time, so a Prefer: wait hold ends by itself
    app = create_app(served_config, clock=clock)
    recorder = Recorder(app)
    with serve_in_thread(recorder, name="simulator-cancel-after") as base_url:
        yield Served(base_url, recorder, app.state.runtime, clock)


class RunTime:
    """The run's injected clock and sleep: every sleep moves the clock by the full delay."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.sleeps: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.clock.advance(seconds)
        await asyncio.sleep(0.005)


@pytest.fixture
def run_time() -> RunTime:
    return RunTime()


def upstream(served: Served, run_time: RunTime, timeout_s: float) -> Upstream:
    return Upstream(
        served.base_url,
        prefer_wait_s=1,
        poll_interval_s=1.0,
        max_poll_interval_s=3.0,
        prediction_timeout_s=timeout_s,
        sleep=run_time.sleep,
        clock=run_time.clock,
        rng=random.Random(3),
    )


async def test_every_create_carries_the_time_left_and_nothing_else_does(
    served: Served, run_time: RunTime
) -> None:
    served.runtime.faults.create_429 = 1
    served.runtime.faults.retry_after_s = 2  # the retry comes ~2.1 s later on the run's clock
    up = upstream(served, run_time, timeout_s=60)
    try:
        with pytest.raises(UpstreamError, match="timed out"):
            await up.run_prediction(TOKEN, FLUX, {"prompt": "a cat"})
    finally:
        await up.aclose()

    throttle_wait = run_time.sleeps[0]
    assert 2 < throttle_wait < 3
    assert served.recorder.creates() == ["60s", "58s"]  # 57.x s left, rounded up
    others = served.recorder.others()
    assert [m for m, _, _ in others].count("GET") >= 1
    assert [p for _, p, _ in others if p.endswith("/cancel")] != []
    assert all(value is None for _, _, value in others)
    (prediction,) = served.runtime.store.predictions.values()
    assert prediction.deadline_at is not None
    assert prediction.deadline_at - prediction.created_at == 58


async def test_less_than_5s_left_creates_nothing(served: Served, run_time: RunTime) -> None:
    before_create_calls: list[float] = []

    async def before_create() -> None:
        before_create_calls.append(run_time.clock())

    up = upstream(served, run_time, timeout_s=4.9)
    try:
        with pytest.raises(UpstreamError, match="Creating the prediction timed out"):
            await up.run_prediction(TOKEN, FLUX, {"prompt": "a cat"}, before_create=before_create)
    finally:
        await up.aclose()

    assert served.recorder.seen == []
    assert before_create_calls == []  # not even a rate-window token


async def test_time_spent_in_before_create_counts(served: Served, run_time: RunTime) -> None:
    async def before_create() -> None:
        run_time.clock.advance(5.5)  # waited for a rate-window token: 4.5 s left

    up = upstream(served, run_time, timeout_s=10)
    try:
        with pytest.raises(UpstreamError, match="Creating the prediction timed out"):
            await up.run_prediction(TOKEN, FLUX, {"prompt": "a cat"}, before_create=before_create)
    finally:
        await up.aclose()

    assert served.recorder.seen == []


@pytest.mark.parametrize(
    ("served_config", "status"),
    [
        (config(latency_s=300.0, queue_fraction=0.9), "aborted"),
        (config(latency_s=300.0), "canceled"),
    ],
)
async def test_replicates_deadline_ends_the_run_without_a_cancel(
    served: Served, run_time: RunTime, status: str
) -> None:
    async def before_poll() -> None:
        served.clock.advance(61)  # Replicate's clock passes the 60 s deadline first

    up = upstream(served, run_time, timeout_s=60)
    try:
        with pytest.raises(PredictionFailed) as info:
            await up.run_prediction(TOKEN, FLUX, {"prompt": "a cat"}, before_poll=before_poll)
    finally:
        await up.aclose()

    assert info.value.status == status
    assert served.recorder.creates() == ["60s"]
    assert not any(path.endswith("/cancel") for _, path, _ in served.recorder.seen)
