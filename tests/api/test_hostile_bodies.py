"""Hostile bodies through the HTTP service (issue 11, items 1, 2 and 7).

- Authentication comes before model validation: an anonymous body is a 401, however broken
  its model input (the user-tier token is in the body, so only the JSON is decoded first).
- Bodies with very many values are refused at decode time, with a 400 naming the limit.
- A lone surrogate is a 400 naming the field, and no prediction is started (it used to be a
  500 after the prediction had run: the answer could not be encoded).
- /metrics exports the event-loop lag.

Behaviour is proven by statuses, messages and what the simulator saw; nothing is timed.
"""

from __future__ import annotations

from typing import Any

import pytest

from service.api.body import MAX_JSON_VALUES
from tests.api.conftest import ADMIN, BAD_TOKEN, USER_TOKEN, Api, MakeApi, flux
from tests.fixtures.simulator import SimulatorHandle

pytestmark = pytest.mark.redis

JSON = {"Content-Type": "application/json"}
AUTH_FAILED = (
    "Authentication failed. Provide 'X-Admin-API-Key' in headers or complete credentials in "
    "payload."
)


def hostile_batch(unknown: int, tasks: int) -> dict[str, Any]:
    body: dict[str, Any] = {"model_name": "flux-dev"}
    body["tasks"] = [{"prompt": f"task {i}"} for i in range(tasks)]
    body.update({f"unknown_parameter_{i:05d}": i for i in range(unknown)})
    return body


# -- authenticate before validating ------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/generate", flux(guidance=99, bogus=1, num_outputs="x")),
        ("/generate", {"model_name": "nope"}),
        ("/generate-batch", {"model_name": "flux-dev", "tasks": [{"prompt": "a", "seed": "s"}]}),
        ("/generate-batch", hostile_batch(unknown=2_000, tasks=20)),
    ],
)
async def test_anonymous_body_is_refused_before_it_is_validated(
    api: Api, path: str, body: dict[str, Any]
) -> None:
    response = await api.post(path, json=body)
    assert response.status_code == 401, response.text
    assert response.json() == {"error": AUTH_FAILED}


async def test_a_bad_user_token_is_refused_before_validation(
    api: Api, simulator: SimulatorHandle
) -> None:
    body = flux(bogus=1, credentials={"replicate_api_token": BAD_TOKEN})
    response = await api.post("/generate", json=body)
    assert response.status_code == 401, response.text
    assert response.json() == {"error": "Invalid Replicate API token in credentials"}


async def test_a_valid_user_token_then_gets_the_validation_errors(
    api: Api, simulator: SimulatorHandle
) -> None:
    body = flux(guidanse=3, credentials={"replicate_api_token": USER_TOKEN})
    response = await api.post("/generate", json=body)
    assert response.status_code == 400, response.text
    assert "did you mean 'guidance'" in response.json()["error"]
    assert simulator.token_stats(USER_TOKEN)["created"] == 0


async def test_malformed_credentials_are_still_a_400(api: Api) -> None:
    response = await api.post("/generate", json=flux(credentials="r8_abc"))
    assert response.status_code == 400
    assert response.json()["error"].startswith("Invalid field 'credentials'")


# -- bounded work ------------------------------------------------------------------------------


async def test_hostile_batch_is_summarised(make_api: MakeApi) -> None:
    async with make_api(max_body_bytes=1024 * 1024, max_batch_tasks=100) as api:
        body = hostile_batch(unknown=10_000, tasks=100)
        response = await api.post("/generate-batch", json=body, headers=ADMIN)
    assert response.status_code == 400, response.text
    answer = response.json()
    assert answer["error"].endswith("; and 9990 more problems")
    assert len(answer["details"]) == 50


@pytest.mark.parametrize("path", ["/generate", "/generate-batch", "/global-semaphores"])
async def test_too_many_values_is_a_400(make_api: MakeApi, path: str) -> None:
    keys = {f"k{i}": 1 for i in range(MAX_JSON_VALUES)}
    async with make_api(max_body_bytes=4 * 1024 * 1024) as api:
        response = await api.post(path, json={"model_name": "flux-dev", **keys}, headers=ADMIN)
    assert response.status_code == 400, response.text
    assert response.json()["error"].startswith(
        f"Request body has more than {MAX_JSON_VALUES} JSON values"
    )


# -- lone surrogates ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "raw", "where"),
    [
        ("/generate", b'{"model_name": "flux-dev", "prompt": "cat \\ud800"}', "field 'prompt'"),
        (
            "/generate",
            b'{"model_name": "flux-dev", "prompt": "cat", "output_filename": "\\udfff.png"}',
            "field 'output_filename'",
        ),
        (
            "/generate-batch",
            b'{"model_name": "flux-dev", "tasks": [{"prompt": "a"}, {"prompt": "b"}, '
            b'{"prompt": "c \\uDBFF"}]}',
            "field 'tasks[2].prompt'",
        ),
        ("/generate", b'{"model_name": "flux-dev", "prompt": "x", "\\ud800": 1}', "key '\\ud800'"),
        ("/global-semaphores", b'{"semaphore_id": "s", "limit": 1, "x\\ud800": 1}', "key 'x"),
        ("/global-semaphores/s/leases", b'{"timeout_s": 1, "holder": "\\ud800"}', "field 'holder'"),
    ],
)
async def test_lone_surrogate_is_a_400_naming_the_field_and_nothing_runs(
    api: Api, simulator: SimulatorHandle, path: str, raw: bytes, where: str
) -> None:
    response = await api.post(path, content=raw, headers={**JSON, **ADMIN})
    assert response.status_code == 400, response.text
    message = response.json()["error"]
    assert message.startswith(f"Invalid {where}"), message
    assert "lone UTF-16 surrogate" in message
    assert simulator.stats()["totals"]["created"] == 0


async def test_surrogate_pair_is_accepted_and_echoed(api: Api, simulator: SimulatorHandle) -> None:
    raw = b'{"model_name": "flux-dev", "prompt": "a cat \\ud83d\\ude00"}'
    response = await api.post("/generate", content=raw, headers={**JSON, **ADMIN})
    assert response.status_code == 200, response.text
    assert response.json()["prompt"] == "a cat \U0001f600"
    assert simulator.stats()["totals"]["created"] == 1


# -- the lag metric ----------------------------------------------------------------------------


async def test_metrics_export_the_event_loop_lag(api: Api) -> None:
    text = (await api.get("/metrics")).text
    assert "# TYPE event_loop_lag_seconds histogram" in text
    assert 'event_loop_lag_seconds_bucket{le="1.0"}' in text
    assert "event_loop_lag_max_seconds " in text
