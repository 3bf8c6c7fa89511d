"""Rejecting a body costs a bounded amount of work per key (issue 11, item 1).

Work is counted, never timed: calls to difflib's suggestion, and the keys pydantic is given.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from service.errors import BadRequest
from service.schemas import MODELS, FluxDevInput, parse_batch, parse_generate, request_token
from service.schemas import requests as requests_module
from service.schemas.requests import MAX_DETAILS, MAX_LISTED_PROBLEMS, MAX_SUGGESTIONS

FLUX_PARAMETERS = len(MODELS["flux-dev"].parameter_names)


@pytest.fixture
def suggestions(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every key difflib is asked about."""
    asked: list[str] = []
    real = difflib.get_close_matches

    def counting(word: str, *args: Any, **kwargs: Any) -> list[str]:
        asked.append(word)
        return real(word, *args, **kwargs)

    monkeypatch.setattr(requests_module.difflib, "get_close_matches", counting)
    return asked


@pytest.fixture
def validated_keys(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many keys each call of FluxDevInput.model_validate was given."""
    sizes: list[int] = []
    real: Callable[..., Any] = FluxDevInput.model_validate

    def counting(obj: Any, *args: Any, **kwargs: Any) -> Any:
        sizes.append(len(obj))
        return real(obj, *args, **kwargs)

    monkeypatch.setattr(FluxDevInput, "model_validate", counting)
    return sizes


def unknown_keys(count: int) -> Iterator[tuple[str, int]]:
    return ((f"unknown_{i:05d}", i) for i in range(count))


def hostile_batch(unknown: int, tasks: int) -> dict[str, Any]:
    return {
        "model_name": "flux-dev",
        "tasks": [{"prompt": f"task {i}"} for i in range(tasks)],
        **dict(unknown_keys(unknown)),
    }


def batch_error(body: dict[str, Any], max_tasks: int = 100) -> BadRequest:
    with pytest.raises(BadRequest) as info:
        parse_batch(body, max_tasks=max_tasks)
    return info.value


def test_batch_with_many_unknown_defaults_asks_few_suggestions(
    suggestions: list[str], validated_keys: list[int]
) -> None:
    unknown, tasks = 2_000, 20
    error = batch_error(hostile_batch(unknown, tasks))
    # The old parser asked difflib once per unknown key per task (40,000 here).
    assert len(suggestions) <= MAX_SUGGESTIONS
    # pydantic sees each task's known parameters only, never the unknown keys: the defaults'
    # unknown keys are not re-validated once per task.
    assert len(validated_keys) == tasks
    assert all(size <= FLUX_PARAMETERS for size in validated_keys)
    # ... and every unknown key is still counted, once (not once per task).
    assert error.message.endswith(f"; and {unknown - MAX_LISTED_PROBLEMS} more problems")
    assert len(error.fields["details"]) == MAX_DETAILS
    assert error.fields["details"][0] == {
        "field": "unknown_00000",
        "rule": "not a parameter of flux-dev",
    }


@pytest.mark.parametrize("unknown", [100, 1_000, 10_000])
def test_work_per_unknown_key_does_not_grow_with_the_key_count(
    unknown: int, suggestions: list[str], validated_keys: list[int]
) -> None:
    error = batch_error(hostile_batch(unknown, tasks=10))
    assert len(suggestions) == MAX_SUGGESTIONS
    assert sum(validated_keys) <= 10 * FLUX_PARAMETERS
    assert error.message.count("Unknown parameter") == MAX_LISTED_PROBLEMS


def test_generate_with_many_unknown_keys(suggestions: list[str], validated_keys: list[int]) -> None:
    body = {"model_name": "flux-dev", "prompt": "x", "guidance": 11, **dict(unknown_keys(5_000))}
    with pytest.raises(BadRequest) as info:
        parse_generate(body)
    assert len(suggestions) <= MAX_SUGGESTIONS
    assert validated_keys == [2]  # prompt and guidance
    message = info.value.message
    assert message.startswith("Invalid parameter 'guidance': Input should be less than or equal")
    assert message.endswith(f"; and {5_001 - MAX_LISTED_PROBLEMS} more problems")


def test_suggestions_are_kept_for_the_listed_messages(suggestions: list[str]) -> None:
    error = batch_error(
        {"model_name": "flux-dev", "guidanse": 3, "tasks": [{"prompt": "a", "sead": 1}]}
    )
    assert error.message == (
        "Unknown parameter 'guidanse' (not a parameter of flux-dev; did you mean 'guidance'?); "
        "Unknown parameter 'tasks[0].sead' (not a parameter of flux-dev; did you mean 'seed'?)"
    )
    assert suggestions == ["guidanse", "sead"]


def test_unknown_keys_of_many_tasks_are_all_counted(suggestions: list[str]) -> None:
    tasks = [{"prompt": "a", **{f"x{j}": 1 for j in range(30)}} for _ in range(10)]
    error = batch_error({"model_name": "flux-dev", "tasks": tasks})
    assert error.message.endswith(f"; and {300 - MAX_LISTED_PROBLEMS} more problems")
    fields = [d["field"] for d in error.fields["details"]]
    assert fields[:31] == [f"tasks[0].x{j}" for j in range(30)] + ["tasks[1].x0"]
    assert len(suggestions) <= MAX_SUGGESTIONS


def test_request_token_reads_only_the_credentials(validated_keys: list[int]) -> None:
    body = {
        "model_name": "nope",
        "guidance": "high",
        "credentials": {"replicate_api_token": "r8_abcdefgh"},
        **dict(unknown_keys(1_000)),
    }
    token = request_token(body)
    assert token is not None and token.get_secret_value() == "r8_abcdefgh"
    assert request_token({"prompt": "x"}) is None
    assert validated_keys == []
    with pytest.raises(BadRequest, match="must be a JSON object"):
        request_token([1])
    with pytest.raises(BadRequest, match="Invalid field 'credentials'"):
        request_token({"credentials": "r8_abc"})


def test_batch_validation_pauses_between_tasks() -> None:
    """parse_batch_async runs these steps, letting the event loop run between tasks."""
    body = {"model_name": "flux-dev", "tasks": [{"prompt": f"t{i}"} for i in range(50)]}
    steps = requests_module._batch_steps(body, 100, list(MODELS))
    pauses = 0
    try:
        while True:
            next(steps)
            pauses += 1
    except StopIteration as done:
        assert len(done.value.tasks) == 50
    assert pauses >= 50


async def test_parse_batch_async_gives_the_same_answer() -> None:
    body = {"model_name": "qwen-image", "aspect_ratio": "1:1", "prompts": ["a", "b"]}
    sliced = await requests_module.parse_batch_async(body, max_tasks=5)
    assert sliced == parse_batch(body, max_tasks=5)
