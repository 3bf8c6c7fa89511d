"""What the upstream saw, for tests and benchmarks: `GET /_sim/stats`.

"In flight" means created and not yet terminal (succeeded, failed, canceled or aborted); the
maximum is exact, computed by sweeping every [created_at, ended_at) interval, which ends at the
`Cancel-After` deadline when that comes first.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from service.simulator.prediction import SimPrediction
from service.simulator.store import PredictionStore, TokenCounters

FINAL_STATUSES = ("succeeded", "failed", "canceled", "aborted")


def max_overlap(intervals: Iterable[tuple[float, float]]) -> int:
    """Largest number of half-open [start, end) intervals covering one instant."""
    events: list[tuple[float, int]] = []
    for start, end in intervals:
        events.append((start, 1))
        events.append((end, -1))
    events.sort()  # at equal times -1 sorts first: an end frees its slot before a new start
    best = current = 0
    for _, delta in events:
        current += delta
        best = max(best, current)
    return best


def _summary(predictions: list[SimPrediction], now: float) -> dict[str, Any]:
    by_status = dict.fromkeys(FINAL_STATUSES, 0)
    in_flight = 0
    for prediction in predictions:
        status = prediction.status_at(now)
        if status in by_status:
            by_status[status] += 1
        else:
            in_flight += 1
    return {
        "created": len(predictions),
        "in_flight": in_flight,
        "max_in_flight": max_overlap((p.created_at, p.ended_at) for p in predictions),
        "by_status": by_status,
    }


def _counters(counters: Iterable[TokenCounters]) -> dict[str, Any]:
    total = TokenCounters()
    for item in counters:
        total.get_requests += item.get_requests
        total.list_requests += item.list_requests
        total.cancels += item.cancels
        total.account_requests += item.account_requests
        for cause, count in item.create_errors.items():
            total.create_errors[cause] = total.create_errors.get(cause, 0) + count
    return {
        "get_requests": total.get_requests,
        "list_requests": total.list_requests,
        "cancels": total.cancels,
        "account_requests": total.account_requests,
        "create_errors": total.create_errors,
    }


def build_stats(
    store: PredictionStore, now: float, faults: dict[str, Any], token_fp: str | None = None
) -> dict[str, Any]:
    by_token: dict[str, list[SimPrediction]] = {}
    for prediction in store.predictions.values():
        by_token.setdefault(prediction.token_fp, []).append(prediction)
    fingerprints = sorted(set(by_token) | set(store.counters))
    if token_fp is not None:
        fingerprints = [token_fp]
    tokens: dict[str, Any] = {}
    for fp in fingerprints:
        predictions = by_token.get(fp, [])
        counters = store.counters.get(fp)
        tokens[fp] = {
            **_summary(predictions, now),
            **_counters([counters] if counters else []),
            "prediction_ids": [p.id for p in predictions],
            "created_at": [p.created_at for p in predictions],
            "deadlines": [p.deadline_at for p in predictions],  # Cancel-After; None without
            "intervals": [
                [p.created_at, p.ended_at if p.is_terminal(now) else None] for p in predictions
            ],
        }
    return {
        "now": now,
        "totals": {
            **_summary(list(store.predictions.values()), now),
            **_counters(store.counters.values()),
        },
        "tokens": tokens,
        "faults": faults,
    }
