"""All predictions and request counters, in memory, owned by the event loop (no locks needed)."""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field
from typing import Any

from service.simulator.catalog import ModelSpec
from service.simulator.config import SimulatorConfig
from service.simulator.ids import new_prediction_id
from service.simulator.prediction import SimPrediction


@dataclass
class TokenCounters:
    """Requests of one token that did not create a prediction."""

    get_requests: int = 0
    list_requests: int = 0  # GET /v1/predictions (every page is one)
    cancels: int = 0
    account_requests: int = 0
    # Create requests that ended in an error, by cause: "404", "422", "429", "5xx", "dropped", ...
    create_errors: dict[str, int] = field(default_factory=dict)

    def count_create_error(self, cause: str) -> None:
        self.create_errors[cause] = self.create_errors.get(cause, 0) + 1


class PredictionStore:
    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self.predictions: dict[str, SimPrediction] = {}
        self.counters: dict[str, TokenCounters] = {}
        self._seq = itertools.count(1)

    def counters_for(self, token_fp: str) -> TokenCounters:
        return self.counters.setdefault(token_fp, TokenCounters())

    def create(
        self,
        *,
        config: SimulatorConfig,
        model: ModelSpec,
        model_input: dict[str, Any],
        token_fp: str,
        base_url: str,
        now: float,
        fail_fraction: float,
        fail_message: str,
        slow_start_s: float,
        cancel_after_s: float | None = None,
    ) -> SimPrediction:
        """Plan and store a new prediction (its whole timeline is drawn now).

        `cancel_after_s` (the `Cancel-After` header) sets its deadline, counted from `now`.
        """
        mean_s = config.latency_for(model.name)
        jitter = config.jitter_fraction
        total_s = max(0.0, mean_s * (1 + self._rng.uniform(-jitter, jitter)))
        queue_s = total_s * config.queue_fraction + slow_start_s
        seed = model_input.get("seed")
        if not isinstance(seed, int) or isinstance(seed, bool):
            seed = self._rng.randrange(2**31)
        failed = fail_fraction > 0 and self._rng.random() < fail_fraction
        prediction = SimPrediction(
            id=self._unique_id(),
            model=model,
            input=model_input,
            token_fp=token_fp,
            base_url=base_url,
            plan=model.plan(model_input),
            seed=seed,
            created_at=now,
            start_at=now + queue_s,
            end_at=now + total_s + slow_start_s,
            error=fail_message if failed else None,
            deadline_at=now + cancel_after_s if cancel_after_s is not None else None,
            seq=next(self._seq),
        )
        self.predictions[prediction.id] = prediction
        return prediction

    def get(self, prediction_id: str, token_fp: str | None = None) -> SimPrediction | None:
        """The prediction, if it exists and (when given) belongs to that token's account."""
        prediction = self.predictions.get(prediction_id)
        if prediction is None or (token_fp is not None and prediction.token_fp != token_fp):
            return None
        return prediction

    def owned_by(self, token_fp: str) -> list[SimPrediction]:
        """Every prediction of that token's account (GET /v1/predictions lists only these)."""
        return [p for p in self.predictions.values() if p.token_fp == token_fp]

    def clear(self) -> None:
        self.predictions.clear()
        self.counters.clear()

    def _unique_id(self) -> str:
        while True:
            candidate = new_prediction_id()
            if candidate not in self.predictions:
                return candidate
