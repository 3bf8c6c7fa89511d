"""Pure pieces of the simulator: rate window, overlap sweep, Prefer parsing, config, timeline."""

from __future__ import annotations

import random
import re

import pytest

from service.simulator.__main__ import parse_args
from service.simulator.api import parse_prefer_wait
from service.simulator.catalog import FLUX_DEV, FLUX_KONTEXT_MAX, QWEN_IMAGE
from service.simulator.config import SimulatorConfig, parse_model_latency, parse_tokens
from service.simulator.ids import iso_z, new_prediction_id
from service.simulator.ratelimit import SlidingWindowLimiter
from service.simulator.stats import max_overlap
from service.simulator.store import PredictionStore


def test_sliding_window_timeline() -> None:
    limiter = SlidingWindowLimiter(window_s=60)

    first = limiter.hit("fp", "create", 2, now=0)
    second = limiter.hit("fp", "create", 2, now=10)
    refused = limiter.hit("fp", "create", 2, now=30)
    other_bucket = limiter.hit("fp", "other", 2, now=30)
    later = limiter.hit("fp", "create", 2, now=60)

    assert (first.allowed, first.remaining) == (True, 1)
    assert (second.allowed, second.remaining) == (True, 0)
    assert (refused.allowed, refused.reset_s) == (False, 30)
    assert other_bucket.allowed
    assert (later.allowed, later.remaining, later.reset_s) == (True, 0, 10)


def test_max_overlap_treats_intervals_as_half_open() -> None:
    assert max_overlap([]) == 0
    assert max_overlap([(0, 1), (1, 2), (2, 3)]) == 1
    assert max_overlap([(0, 10), (1, 2), (1.5, 3), (2.5, 4)]) == 3


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("", None),
        ("wait", 60),
        ("wait=5", 5),
        ("WAIT=5", 5),
        ("respond-async, wait=7", 7),
        ("wait=600", 60),
        ("wait=0", None),
        ("wait=abc", None),
        ("return=minimal", None),
    ],
)
def test_parse_prefer_wait(header: str | None, expected: int | None) -> None:
    assert parse_prefer_wait(header, 60) == expected


def test_ids_and_timestamps_look_like_replicate() -> None:
    ids = {new_prediction_id() for _ in range(200)}

    assert len(ids) == 200
    assert all(re.fullmatch(r"[a-z2-7]{26}", i) for i in ids)
    assert iso_z(0.5) == "1970-01-01T00:00:00.500000Z"


def test_config_from_env_then_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIM_PORT", "9000")
    monkeypatch.setenv("SIM_LATENCY_SECONDS", "1.5")
    monkeypatch.setenv("SIM_TOKENS", "r8_a, r8_b")
    monkeypatch.setenv("SIM_MODEL_LATENCY", "qwen/qwen-image=0.5")

    config, log_level = parse_args(["--latency", "0.2", "--create-limit", "7", "--jitter", "0"])

    assert config.port == 9000
    assert config.latency_s == 0.2
    assert config.jitter_fraction == 0
    assert config.create_limit == 7
    assert config.tokens == frozenset({"r8_a", "r8_b"})
    assert config.latency_for("qwen/qwen-image") == 0.5
    assert config.latency_for("black-forest-labs/flux-dev") == 0.2
    assert log_level == "warning"


def test_config_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="latency_s"):
        SimulatorConfig(latency_s=-1)
    with pytest.raises(ValueError):
        parse_model_latency("flux-dev=1")
    with pytest.raises(SystemExit):
        parse_args(["--model-latency", "nonsense"])
    assert parse_tokens("") is None


def test_token_validity() -> None:
    default = SimulatorConfig()
    listed = SimulatorConfig(tokens=frozenset({"r8_a"}))

    assert default.is_valid_token("r8_anything")
    assert not default.is_valid_token("r8_")
    assert not default.is_valid_token("sk_abc")
    assert listed.is_valid_token("r8_a")
    assert not listed.is_valid_token("r8_b")


def test_timeline_of_a_prediction() -> None:
    config = SimulatorConfig(latency_s=10, jitter_fraction=0, queue_fraction=0.2, output_ttl_s=100)
    store = PredictionStore(random.Random(1))
    prediction = store.create(
        config=config,
        model=FLUX_DEV,
        model_input={"prompt": "x", "seed": 42},
        token_fp="fp",
        base_url="http://sim",
        now=1000.0,
        fail_fraction=0.0,
        fail_message="",
        slow_start_s=3.0,
    )

    assert [prediction.status_at(t) for t in (1000, 1004.9, 1005, 1012.9, 1013)] == [
        "starting",
        "starting",
        "processing",
        "processing",
        "succeeded",
    ]
    assert prediction.seed == 42
    assert not prediction.is_expired(1112.9, config.output_ttl_s)
    assert prediction.is_expired(1113, config.output_ttl_s)
    assert prediction.to_json(1113, config.output_ttl_s)["output"] is None
    assert prediction.cancel(1020) is False  # already terminal


def test_render_plans() -> None:
    assert FLUX_DEV.plan({"prompt": "x", "num_outputs": 4, "megapixels": "0.25"}).count == 4
    kontext = FLUX_KONTEXT_MAX.plan({"prompt": "x", "aspect_ratio": "match_input_image"})
    assert (kontext.width, kontext.height, kontext.fmt) == (1024, 1024, "png")
    speed = QWEN_IMAGE.plan({"prompt": "x", "image_size": "optimize_for_speed"})
    assert (speed.width, speed.height) == (1344, 768)
