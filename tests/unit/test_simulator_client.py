"""The simulator through the OFFICIAL replicate 1.0.7 client: it must not tell it from Replicate."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from PIL import Image
from replicate.client import Client
from replicate.exceptions import ModelError, ReplicateError

from service.simulator.config import DEFAULT_FAIL_MESSAGE
from tests.fixtures.simulator import SimulatorHandle

TOKEN = "r8_test"
FLUX_DEV = "black-forest-labs/flux-dev"
KONTEXT = "black-forest-labs/flux-kontext-max"
QWEN = "qwen/qwen-image"


@pytest.fixture
async def client(simulator: SimulatorHandle) -> AsyncIterator[Client]:
    replicate_client = Client(api_token=TOKEN, base_url=simulator.base_url)
    replicate_client.poll_interval = 0.05
    yield replicate_client
    await replicate_client._async_client.aclose()


async def fetch_image(url: str) -> Image.Image:
    async with httpx.AsyncClient() as http:
        response = await http.get(url)
    assert response.status_code == 200, response.text
    return Image.open(io.BytesIO(response.content))


async def test_async_run_flux_dev_returns_list_of_urls(
    client: Client, simulator: SimulatorHandle
) -> None:
    output = await client.async_run(FLUX_DEV, input={"prompt": "a red fox", "num_outputs": 2})

    assert isinstance(output, list) and len(output) == 2
    for index, url in enumerate(output):
        # http:// URLs come back as plain str (FileOutput only wraps https: and data:).
        assert isinstance(url, str)
        assert url.startswith(f"{simulator.base_url}/files/")
        assert url.endswith(f"/out-{index}.webp")


async def test_kontext_returns_a_single_url(client: Client) -> None:
    output = await client.async_run(
        KONTEXT, input={"prompt": "a lighthouse", "aspect_ratio": "1:1"}
    )

    assert isinstance(output, str)
    assert output.endswith(".png")


async def test_qwen_returns_a_list_with_one_url(client: Client) -> None:
    output = await client.async_run(QWEN, input={"prompt": "a teapot"})

    assert isinstance(output, list) and len(output) == 1
    assert output[0].endswith(".webp")


@pytest.mark.simulator(latency_s=3.0)
async def test_wait_expiring_returns_starting_then_async_wait_finishes(client: Client) -> None:
    began = time.monotonic()
    prediction = await client.models.predictions.async_create(
        model=FLUX_DEV, input={"prompt": "slow"}, wait=1
    )

    assert time.monotonic() - began < 1.5  # the client's own read timeout would be 1.5 s
    assert prediction.status == "starting"
    assert prediction.output is None

    await prediction.async_wait()

    assert prediction.status == "succeeded"
    assert isinstance(prediction.output, list) and len(prediction.output) == 1
    assert prediction.metrics is not None and prediction.metrics["predict_time"] > 0


@pytest.mark.simulator(latency_s=0.2)
async def test_wait_finishing_in_time_returns_succeeded_with_output(client: Client) -> None:
    prediction = await client.models.predictions.async_create(
        model=FLUX_DEV, input={"prompt": "fast"}, wait=5
    )

    assert prediction.status == "succeeded"
    assert prediction.output and prediction.output[0].endswith("out-0.webp")
    assert prediction.completed_at is not None and prediction.completed_at.endswith("Z")


@pytest.mark.simulator(latency_s=30.0)
async def test_cancel_takes_prediction_out_of_flight(
    client: Client, simulator: SimulatorHandle
) -> None:
    prediction = await client.models.predictions.async_create(model=FLUX_DEV, input={"prompt": "x"})
    assert simulator.token_stats(TOKEN)["in_flight"] == 1

    canceled = await client.predictions.async_cancel(prediction.id)

    assert canceled.status == "canceled"
    assert canceled.output is None
    stats = simulator.token_stats(TOKEN)
    assert stats["in_flight"] == 0
    assert stats["by_status"]["canceled"] == 1
    assert stats["cancels"] == 1
    again = await client.predictions.async_get(prediction.id)
    assert again.status == "canceled"


async def test_cancel_of_finished_prediction_returns_it_unchanged(client: Client) -> None:
    prediction = await client.models.predictions.async_create(
        model=FLUX_DEV, input={"prompt": "x"}, wait=5
    )
    assert prediction.status == "succeeded"

    after = await client.predictions.async_cancel(prediction.id)

    assert after.status == "succeeded"
    assert after.output == prediction.output


async def test_account(client: Client) -> None:
    account = await client.accounts.async_current()

    assert account.type == "user"
    assert account.username.startswith("sim-")
    assert account.name


async def test_invalid_input_raises_replicate_error_422(client: Client) -> None:
    with pytest.raises(ReplicateError) as caught:
        await client.async_run(KONTEXT, input={"prompt": "x", "output_format": "webp"})

    assert caught.value.status == 422
    assert caught.value.title == "Input validation failed"
    assert caught.value.detail == (
        '- input.output_format: output_format must be one of the following: "jpg", "png"\n'
    )


async def test_bad_token_raises_401(simulator: SimulatorHandle) -> None:
    bad = Client(api_token="not-a-replicate-token", base_url=simulator.base_url)
    try:
        with pytest.raises(ReplicateError) as caught:
            await bad.async_run(FLUX_DEV, input={"prompt": "x"})
    finally:
        await bad._async_client.aclose()

    assert caught.value.status == 401
    assert caught.value.detail == "You did not pass a valid authentication token"


@pytest.mark.simulator(create_limit=2)
async def test_create_rate_limit_surfaces_as_429(client: Client) -> None:
    for _ in range(2):
        await client.models.predictions.async_create(model=FLUX_DEV, input={"prompt": "x"})

    with pytest.raises(ReplicateError) as caught:
        await client.models.predictions.async_create(model=FLUX_DEV, input={"prompt": "x"})

    assert caught.value.status == 429
    assert caught.value.detail is not None
    assert caught.value.detail.startswith("Request was throttled. Your rate limit resets in ~")


async def test_injected_create_429_then_recovers(
    client: Client, simulator: SimulatorHandle
) -> None:
    simulator.set_faults(create_429=1, retry_after_s=3)

    with pytest.raises(ReplicateError) as caught:
        await client.async_run(FLUX_DEV, input={"prompt": "x"})
    assert caught.value.status == 429
    assert caught.value.detail == "Request was throttled. Your rate limit resets in ~3s."

    assert await client.async_run(FLUX_DEV, input={"prompt": "x"})
    stats = simulator.stats()
    assert stats["faults"]["served"] == {"create_429": 1}
    assert stats["totals"]["create_errors"] == {"429": 1}
    assert stats["totals"]["created"] == 1


@pytest.mark.parametrize("status", [500, 503])
async def test_injected_create_5xx(client: Client, simulator: SimulatorHandle, status: int) -> None:
    simulator.set_faults(create_5xx=1, status_5xx=status)

    with pytest.raises(ReplicateError) as caught:
        await client.models.predictions.async_create(model=FLUX_DEV, input={"prompt": "x"})

    assert caught.value.status == status
    assert simulator.stats()["totals"]["created"] == 0


async def test_fail_fraction_one_raises_model_error_with_text(
    client: Client, simulator: SimulatorHandle
) -> None:
    simulator.set_faults(fail_fraction=1.0)

    with pytest.raises(ModelError) as caught:
        await client.async_run(FLUX_DEV, input={"prompt": "x"})

    assert str(caught.value) == DEFAULT_FAIL_MESSAGE
    assert caught.value.prediction.status == "failed"
    assert simulator.token_stats(TOKEN)["by_status"]["failed"] == 1


async def test_fail_message_is_configurable(client: Client, simulator: SimulatorHandle) -> None:
    message = "Prediction interrupted; please retry (code: PA)"
    simulator.set_faults(fail_fraction=1.0, fail_message=message)

    with pytest.raises(ModelError, match=r"code: PA"):
        await client.async_run(QWEN, input={"prompt": "x"})


async def test_dropped_connection_is_a_transport_error(
    client: Client, simulator: SimulatorHandle
) -> None:
    simulator.set_faults(drop_connections=1)

    with pytest.raises(httpx.TransportError):
        await client.models.predictions.async_create(model=FLUX_DEV, input={"prompt": "x"})

    # The next create goes through on a fresh connection.
    prediction = await client.models.predictions.async_create(model=FLUX_DEV, input={"prompt": "x"})
    assert prediction.status == "starting"
    stats = simulator.stats()
    assert stats["totals"]["created"] == 1
    assert stats["totals"]["create_errors"] == {"dropped": 1}


async def test_get_429_is_retried_by_the_client(client: Client, simulator: SimulatorHandle) -> None:
    prediction = await client.models.predictions.async_create(model=FLUX_DEV, input={"prompt": "x"})
    simulator.set_faults(get_429=2, retry_after_s=0)

    await prediction.async_wait()

    assert prediction.status == "succeeded"
    assert simulator.stats()["faults"]["served"] == {"get_429": 2}


@pytest.mark.parametrize(
    ("model", "extra", "size", "pil_format"),
    [
        (FLUX_DEV, {"aspect_ratio": "16:9"}, (1344, 768), "WEBP"),
        (FLUX_DEV, {"aspect_ratio": "16:9", "megapixels": "0.25", "output_format": "jpg"}, (672, 384), "JPEG"),  # noqa: E501
        (FLUX_DEV, {"aspect_ratio": "9:21", "output_format": "png"}, (640, 1536), "PNG"),
        (KONTEXT, {"aspect_ratio": "4:3", "output_format": "jpg"}, (1152, 896), "JPEG"),
        (KONTEXT, {}, (1024, 1024), "PNG"),
        (QWEN, {}, (1664, 928), "WEBP"),
        (QWEN, {"aspect_ratio": "1:1", "output_format": "png"}, (1328, 1328), "PNG"),
    ],
)  # fmt: skip
async def test_output_image_has_requested_size_and_format(
    client: Client, model: str, extra: dict[str, str], size: tuple[int, int], pil_format: str
) -> None:
    output = await client.async_run(model, input={"prompt": "a painted bird", **extra})
    url = output if isinstance(output, str) else output[0]

    image = await fetch_image(url)

    assert image.size == size
    assert image.format == pil_format


async def test_outputs_expire(client: Client, simulator: SimulatorHandle) -> None:
    prediction = await client.models.predictions.async_create(
        model=FLUX_DEV, input={"prompt": "ephemeral"}, wait=5
    )
    url = prediction.output[0]
    assert (await fetch_image(url)).size == (1024, 1024)

    simulator.configure(output_ttl_s=0)  # everything finished is now past its retention
    expired = await client.predictions.async_get(prediction.id)

    assert expired.status == "succeeded"
    assert expired.output is None
    async with httpx.AsyncClient() as http:
        assert (await http.get(url)).status_code == 404
        raw = await http.get(
            f"{simulator.base_url}/v1/predictions/{prediction.id}",
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
    assert raw.json()["data_removed"] is True
    assert raw.json()["output"] is None


@pytest.mark.simulator(output_ttl_s=0.3)
async def test_outputs_expire_after_the_configured_ttl(client: Client) -> None:
    output = await client.async_run(FLUX_DEV, input={"prompt": "ephemeral"})

    await asyncio.sleep(0.5)

    async with httpx.AsyncClient() as http:
        assert (await http.get(output[0])).status_code == 404


@pytest.mark.simulator(latency_s=1.0)
async def test_stats_count_concurrent_predictions(
    client: Client, simulator: SimulatorHandle
) -> None:
    count = 6
    outputs = await asyncio.gather(
        *(client.async_run(FLUX_DEV, input={"prompt": f"p{i}"}) for i in range(count))
    )

    assert all(len(output) == 1 for output in outputs)
    stats = simulator.token_stats(TOKEN)
    assert stats["created"] == count
    assert stats["max_in_flight"] == count
    assert stats["in_flight"] == 0
    assert stats["by_status"] == {"succeeded": count, "failed": 0, "canceled": 0, "aborted": 0}
    assert len(stats["created_at"]) == count
    assert all(end is not None and end > start for start, end in stats["intervals"])
    totals = simulator.stats()["totals"]
    assert totals["max_in_flight"] == count
