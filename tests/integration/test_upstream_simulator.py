"""service.upstream against the Replicate simulator (real HTTP, real replicate client).

Proves behaviour by counting what the simulator saw (`/_sim/stats`), never by patching.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from service.errors import (
    PredictionFailed,
    Unauthorized,
    UpstreamError,
    UpstreamRejected,
    UpstreamThrottled,
)
from service.simulator import SimulatorConfig, create_app
from service.upstream import CreateOutcomeUnknown, Upstream
from tests.fixtures.simulator import SimulatorHandle
from tests.fixtures.threaded_server import serve_in_thread

TOKEN = "r8_upstream_simulator_test_token"
FLUX = "black-forest-labs/flux-dev"
KONTEXT = "black-forest-labs/flux-kontext-max"
QWEN = "qwen/qwen-image"


class Sleeps:
    """Injected sleep: records each delay, then really sleeps a capped amount."""

    def __init__(self, cap_s: float = 0.05) -> None:
        self.calls: list[float] = []
        self.cap_s = cap_s

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)
        await asyncio.sleep(min(seconds, self.cap_s))


class Counter:
    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self) -> None:
        self.calls += 1


class Created:
    def __init__(self) -> None:
        self.ids: list[str] = []
        self.event = asyncio.Event()

    async def __call__(self, prediction_id: str) -> None:
        self.ids.append(prediction_id)
        self.event.set()


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
async def upstream(simulator: SimulatorHandle, sleeps: Sleeps) -> AsyncIterator[Upstream]:
    up = Upstream(
        simulator.base_url,
        prefer_wait_s=1,
        poll_interval_s=0.1,
        max_poll_interval_s=0.3,
        create_retries=3,
        transient_retries=2,
        sleep=sleeps,
    )
    yield up
    await up.aclose()


def flux(prompt: str = "a cat", **extra: Any) -> dict[str, Any]:
    return {"prompt": prompt, **extra}


async def stats(simulator: SimulatorHandle) -> dict[str, Any]:
    return await simulator.atoken_stats(TOKEN)


async def test_quick_prediction_is_answered_within_the_wait(
    upstream: Upstream, simulator: SimulatorHandle
) -> None:
    before_create, before_poll, created = Counter(), Counter(), Created()
    result = await upstream.run_prediction(
        TOKEN,
        FLUX,
        flux(num_outputs=2),
        before_create=before_create,
        before_poll=before_poll,
        on_created=created,
    )
    assert result.status == "succeeded"
    assert result.prediction_id == created.ids[0]
    assert len(result.output_urls) == 2
    assert result.metrics.get("predict_time") is not None
    seen = await stats(simulator)
    assert (seen["created"], seen["get_requests"]) == (1, 0)
    assert (before_create.calls, before_poll.calls) == (1, 0)


@pytest.mark.parametrize("model", [KONTEXT, QWEN])
async def test_each_model_returns_a_list_of_urls(upstream: Upstream, model: str) -> None:
    result = await upstream.run_prediction(TOKEN, model, {"prompt": "a cat"})
    assert len(result.output_urls) == 1
    assert all(isinstance(u, str) and u for u in result.output_urls)


@pytest.mark.simulator(latency_s=1.6)
async def test_long_prediction_is_polled_to_success(
    upstream: Upstream, simulator: SimulatorHandle
) -> None:
    before_poll = Counter()
    result = await upstream.run_prediction(TOKEN, FLUX, flux(), before_poll=before_poll)
    assert result.status == "succeeded"
    seen = await stats(simulator)
    assert seen["get_requests"] == before_poll.calls >= 1
    assert seen["by_status"]["succeeded"] == 1


async def test_failed_prediction_carries_the_error_text(
    upstream: Upstream, simulator: SimulatorHandle
) -> None:
    await simulator.aset_faults(fail_fraction=1.0, fail_message="NSFW content detected")
    with pytest.raises(PredictionFailed) as info:
        await upstream.run_prediction(TOKEN, FLUX, flux())
    assert info.value.status == "failed"
    assert "NSFW content detected" in info.value.message


async def test_create_429_twice_then_success(
    upstream: Upstream, simulator: SimulatorHandle, sleeps: Sleeps
) -> None:
    await simulator.aset_faults(create_429=2, retry_after_s=1)
    before_create = Counter()
    result = await upstream.run_prediction(TOKEN, FLUX, flux(), before_create=before_create)
    assert result.status == "succeeded"
    assert before_create.calls == 3
    assert len(sleeps.calls) == 2 and all(1.0 <= s <= 1.1 for s in sleeps.calls)
    seen = await stats(simulator)
    assert seen["create_errors"] == {"429": 2}
    assert seen["created"] == 1


async def test_create_429_exhausted(upstream: Upstream, simulator: SimulatorHandle) -> None:
    await simulator.aset_faults(create_429=10, retry_after_s=2)
    with pytest.raises(UpstreamThrottled) as info:
        await upstream.run_prediction(TOKEN, FLUX, flux())
    assert info.value.fields["retry_after"] == 2
    seen = await stats(simulator)
    assert seen["create_errors"] == {"429": 4}
    assert seen["created"] == 0


@pytest.mark.parametrize("status", [500, 503])
async def test_create_5xx_then_success(
    upstream: Upstream, simulator: SimulatorHandle, status: int
) -> None:
    await simulator.aset_faults(create_5xx=1, status_5xx=status)
    result = await upstream.run_prediction(TOKEN, FLUX, flux())
    assert result.status == "succeeded"
    seen = await stats(simulator)
    assert (seen["create_errors"], seen["created"]) == ({"5xx": 1}, 1)


async def test_dropped_create_is_not_recreated(
    upstream: Upstream, simulator: SimulatorHandle
) -> None:
    await simulator.aset_faults(drop_connections=1)
    with pytest.raises(CreateOutcomeUnknown):
        await upstream.run_prediction(TOKEN, FLUX, flux())
    seen = await stats(simulator)
    assert seen["create_errors"] == {"dropped": 1}
    assert seen["created"] == 0


@pytest.mark.simulator(latency_s=1.0)
async def test_poll_5xx_is_retried(upstream: Upstream, simulator: SimulatorHandle) -> None:
    await simulator.aset_faults(get_5xx=1, status_5xx=500)
    result = await upstream.run_prediction(TOKEN, FLUX, flux())
    assert result.status == "succeeded"


async def test_bad_token_is_unauthorized(upstream: Upstream) -> None:
    with pytest.raises(Unauthorized, match="Invalid Replicate API token"):
        await upstream.run_prediction("not-a-token", FLUX, flux())


async def test_invalid_input_names_the_field(upstream: Upstream) -> None:
    with pytest.raises(UpstreamRejected, match="output_format") as info:
        await upstream.run_prediction(TOKEN, KONTEXT, {"prompt": "x", "output_format": "webp"})
    assert any(f.get("field") == "input.output_format" for f in info.value.fields["invalid_fields"])


async def test_unknown_model_is_rejected(upstream: Upstream) -> None:
    with pytest.raises(UpstreamRejected, match="not found"):
        await upstream.run_prediction(TOKEN, "acme/nope", {"prompt": "x"})


@pytest.mark.simulator(latency_s=30.0)
async def test_cancel_while_polling_cancels_upstream(
    upstream: Upstream, simulator: SimulatorHandle
) -> None:
    created, polled = Created(), asyncio.Event()

    async def before_poll() -> None:
        polled.set()

    task = asyncio.create_task(
        upstream.run_prediction(TOKEN, FLUX, flux(), on_created=created, before_poll=before_poll)
    )
    await asyncio.wait_for(polled.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    seen = await stats(simulator)
    assert seen["cancels"] == 1
    assert seen["by_status"]["canceled"] == 1
    assert seen["in_flight"] == 0


@pytest.mark.simulator(latency_s=30.0)
async def test_cancel_during_the_create_hold(
    upstream: Upstream, simulator: SimulatorHandle
) -> None:
    task = asyncio.create_task(upstream.run_prediction(TOKEN, FLUX, flux()))
    for _ in range(500):  # until the simulator holds our create
        if (await stats(simulator))["created"] == 1:
            break
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    seen = await stats(simulator)
    assert (seen["created"], seen["cancels"], seen["in_flight"]) == (1, 1, 0)
    assert seen["by_status"]["canceled"] == 1


@pytest.mark.simulator(latency_s=300.0)
async def test_deadline_cancels_upstream(simulator: SimulatorHandle) -> None:
    clock = [0.0]  # the run's clock: moved by its sleeps (a deadline needs >= 5 s: Cancel-After)

    async def sleep(seconds: float) -> None:
        clock[0] += seconds
        await asyncio.sleep(0.01)

    up = Upstream(
        simulator.base_url,
        prefer_wait_s=1,
        poll_interval_s=1.0,
        max_poll_interval_s=3.0,
        prediction_timeout_s=20,
        sleep=sleep,
        clock=lambda: clock[0],
    )
    try:
        with pytest.raises(UpstreamError, match="timed out"):
            await up.run_prediction(TOKEN, FLUX, flux())
    finally:
        await up.aclose()
    seen = await stats(simulator)
    assert (seen["cancels"], seen["in_flight"]) == (1, 0)
    # Created with Cancel-After: 20s, so Replicate would have ended it without our cancel.
    ((created_at,), (deadline,)) = (seen["created_at"], seen["deadlines"])
    assert deadline - created_at == pytest.approx(20)


@pytest.mark.simulator(latency_s=0.5)
async def test_many_concurrent_predictions_share_one_client(
    simulator: SimulatorHandle,
) -> None:
    up = Upstream(simulator.base_url, prefer_wait_s=5, pool_size=40)
    try:
        results = await asyncio.gather(
            *(up.run_prediction(TOKEN, FLUX, flux(f"cat {i}")) for i in range(40))
        )
    finally:
        await up.aclose()
    assert len({r.prediction_id for r in results}) == 40
    seen = await stats(simulator)
    assert seen["created"] == 40 and seen["max_in_flight"] == 40
    assert seen["get_requests"] == 0
    assert len(up.clients) == 0  # closed and forgotten by aclose


async def test_verify_token_hits_account_once(
    upstream: Upstream, simulator: SimulatorHandle
) -> None:
    assert all(await asyncio.gather(*(upstream.verify_token(TOKEN) for _ in range(5))))
    assert await upstream.verify_token(TOKEN)
    assert await upstream.verify_token("bad-token") is False
    assert await upstream.verify_token("bad-token") is False
    seen = await stats(simulator)
    assert seen["account_requests"] == 1


# -- find_predictions: an orphan's prediction, found through the list ------------------------


async def create_raw(
    simulator: SimulatorHandle, model_input: dict[str, Any], *, model: str = FLUX, count: int = 1
) -> list[str]:
    """Predictions created straight over HTTP (as a replica that died would have); their ids."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(base_url=simulator.base_url, headers=headers) as http:
        responses = await asyncio.gather(
            *(
                http.post(f"/v1/models/{model}/predictions", json={"input": model_input})
                for _ in range(count)
            )
        )
    assert all(r.status_code == 201 for r in responses), [r.text for r in responses]
    return [r.json()["id"] for r in responses]


def list_failures(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The `reason` of each "prediction list unreadable" warning."""
    return [
        str(getattr(record, "reason", ""))
        for record in caplog.records
        if record.getMessage() == "prediction list unreadable"
    ]


async def test_find_predictions_returns_the_matching_ones_newest_first(
    upstream: Upstream, simulator: SimulatorHandle
) -> None:
    (older,) = await create_raw(simulator, flux("lost", guidance=3))
    bound = time.time()  # after the answer: later than `older`'s created_at
    (first,) = await create_raw(simulator, flux("lost", guidance=3))
    await create_raw(simulator, flux("another prompt", guidance=3))
    await create_raw(simulator, flux("lost", guidance=3, seed=1))
    await create_raw(simulator, {"prompt": "lost", "guidance": 3}, model=QWEN)
    (second,) = await create_raw(simulator, flux("lost", guidance=3))

    # Same JSON value: other key order, 3.0 for 3.
    found = await upstream.find_predictions(
        TOKEN, FLUX, {"guidance": 3.0, "prompt": "lost"}, created_after_epoch_s=bound
    )

    assert found is not None
    assert [pid for pid, _ in found] == [second, first]
    assert older not in {pid for pid, _ in found}
    assert {status for _, status in found} <= {"starting", "processing", "succeeded"}
    seen = await stats(simulator)
    assert (seen["list_requests"], seen["get_requests"], seen["created"]) == (1, 0, 6)


async def test_find_predictions_pages_through_the_window(
    upstream: Upstream, simulator: SimulatorHandle
) -> None:
    bound = time.time()
    (target,) = await create_raw(simulator, flux("the oldest in the window"))
    await create_raw(simulator, flux("noise"), count=230)

    found = await upstream.find_predictions(
        TOKEN, FLUX, flux("the oldest in the window"), created_after_epoch_s=bound
    )

    assert found is not None and [pid for pid, _ in found] == [target]
    assert (await stats(simulator))["list_requests"] == 3  # 100 + 100 + 31


async def test_find_predictions_sees_only_the_tokens_own_predictions(
    upstream: Upstream, simulator: SimulatorHandle
) -> None:
    bound = time.time()
    await create_raw(simulator, flux("shared prompt"))

    found = await upstream.find_predictions(
        "r8_another_account", FLUX, flux("shared prompt"), created_after_epoch_s=bound
    )

    assert found == []


@pytest.mark.simulator(create_limit=2000)
async def test_find_predictions_reads_at_most_ten_pages(
    upstream: Upstream, simulator: SimulatorHandle
) -> None:
    bound = time.time()
    for _ in range(11):
        await create_raw(simulator, flux("noise"), count=100)

    found = await upstream.find_predictions(TOKEN, FLUX, flux("x"), created_after_epoch_s=bound)

    assert found is None  # an 11th page could hold it: nothing can be ruled out
    assert (await stats(simulator))["list_requests"] == 10


async def test_find_predictions_retries_a_500(
    upstream: Upstream, simulator: SimulatorHandle, sleeps: Sleeps
) -> None:
    bound = time.time()
    (target,) = await create_raw(simulator, flux("lost"))
    await simulator.aset_faults(list_5xx=1, status_5xx=500)

    found = await upstream.find_predictions(TOKEN, FLUX, flux("lost"), created_after_epoch_s=bound)

    assert found is not None and [pid for pid, _ in found] == [target]
    assert (await stats(simulator))["list_requests"] == 2
    assert len(sleeps.calls) == 1


async def test_find_predictions_is_none_when_the_list_keeps_failing(
    upstream: Upstream, simulator: SimulatorHandle, caplog: pytest.LogCaptureFixture
) -> None:
    bound = time.time()
    await create_raw(simulator, flux("lost"))
    await simulator.aset_faults(list_5xx=100, status_5xx=500)

    found = await upstream.find_predictions(TOKEN, FLUX, flux("lost"), created_after_epoch_s=bound)

    assert found is None
    assert (await stats(simulator))["list_requests"] == 3  # transient_retries=2, then give up
    assert list_failures(caplog) == ["HTTP 500"]
    assert all(TOKEN not in repr(vars(record)) for record in caplog.records)


async def test_find_predictions_is_none_for_a_refused_token(
    upstream: Upstream, simulator: SimulatorHandle, caplog: pytest.LogCaptureFixture
) -> None:
    found = await upstream.find_predictions(
        "not-a-token", FLUX, flux(), created_after_epoch_s=time.time()
    )

    assert found is None
    assert list_failures(caplog) == ["HTTP 401"]
    assert all("not-a-token" not in repr(vars(record)) for record in caplog.records)


async def test_find_predictions_reads_an_aborted_prediction() -> None:
    """`aborted` (Cancel-After passed before the start) is unknown to the client's model: the
    page is read from its raw body. The simulator's clock is injected and moved forward."""
    now = [1_000_000.0]
    config = SimulatorConfig(latency_s=60.0, jitter_fraction=0.0, queue_fraction=0.5, seed=5)
    app = create_app(config, clock=lambda: now[0])
    with serve_in_thread(app, name="list-aborted-simulator", wait_for_stop=False) as base_url:
        headers = {"Authorization": f"Bearer {TOKEN}", "Cancel-After": "5s"}
        async with httpx.AsyncClient(base_url=base_url, headers=headers) as http:
            created = await http.post(
                f"/v1/models/{FLUX}/predictions", json={"input": flux("cut short")}
            )
            assert created.status_code == 201, created.text
        now[0] += 10  # the deadline (+5 s) came before the start (+30 s)
        up = Upstream(base_url)
        try:
            found = await up.find_predictions(
                TOKEN, FLUX, flux("cut short"), created_after_epoch_s=now[0] - 60
            )
        finally:
            await up.aclose()

    assert found == [(created.json()["id"], "aborted")]
