"""Prediction snapshots (what one API answer said) and the final `PredictionResult`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from service.errors import PredictionFailed, UpstreamError

TERMINAL_STATUSES = frozenset({"succeeded", "failed", "canceled", "aborted"})
KNOWN_STATUSES = TERMINAL_STATUSES | {"starting", "processing"}


@dataclass(frozen=True)
class PredictionResult:
    """A prediction that ended `succeeded` with at least one output URL."""

    prediction_id: str
    status: str
    output_urls: list[str]
    created_at: str | None
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Snapshot:
    """One answer about a prediction, read from the client's model or from the raw JSON."""

    prediction_id: str
    status: str
    output: Any = None
    error: str | None = None
    created_at: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @classmethod
    def from_prediction(cls, prediction: Any) -> Snapshot:
        """From a `replicate.prediction.Prediction` (pydantic v1 model)."""
        return cls(
            prediction_id=str(prediction.id),
            status=str(prediction.status),
            output=prediction.output,
            error=_text(prediction.error),
            created_at=prediction.created_at,
            metrics=dict(prediction.metrics or {}),
        )

    @classmethod
    def from_json(cls, data: Any) -> Snapshot | None:
        """From the raw JSON when the client's model refused it (status `aborted`, new fields)."""
        if not isinstance(data, dict):
            return None
        prediction_id, status = data.get("id"), data.get("status")
        if not isinstance(prediction_id, str) or not prediction_id:
            return None
        if status not in KNOWN_STATUSES:
            return None
        metrics = data.get("metrics")
        created_at = data.get("created_at")
        return cls(
            prediction_id=prediction_id,
            status=status,
            output=data.get("output"),
            error=_text(data.get("error")),
            created_at=created_at if isinstance(created_at, str) else None,
            metrics=dict(metrics) if isinstance(metrics, dict) else {},
        )


def to_result(snapshot: Snapshot) -> PredictionResult:
    """A terminal snapshot → the result, or PredictionFailed with Replicate's words."""
    pid, status = snapshot.prediction_id, snapshot.status
    if status == "failed":
        raise PredictionFailed(
            snapshot.error or f"Prediction {pid} failed", prediction_id=pid, status=status
        )
    if status == "canceled":
        raise PredictionFailed(f"Prediction {pid} was canceled", prediction_id=pid, status=status)
    if status == "aborted":
        raise PredictionFailed(
            f"Prediction {pid} was aborted: its deadline passed before it started",
            prediction_id=pid,
            status=status,
        )
    if status != "succeeded":
        raise UpstreamError(f"Prediction {pid} is not finished (status {status!r})")
    urls = output_urls(snapshot.output, pid)
    if not urls:
        raise PredictionFailed(
            f"Prediction {pid} succeeded but returned no output", prediction_id=pid, status=status
        )
    return PredictionResult(
        prediction_id=pid,
        status=status,
        output_urls=urls,
        created_at=snapshot.created_at,
        metrics=snapshot.metrics,
    )


def output_urls(output: Any, prediction_id: str) -> list[str]:
    """Raw output → list of URLs: a list stays a list, a single URI (kontext) becomes [uri].

    `FileOutput` items (if a caller used `async_run`) are reduced to `.url`.
    """
    if output is None:
        return []
    items = output if isinstance(output, list | tuple) else [output]
    urls: list[str] = []
    for item in items:
        if item is None:
            continue
        url = item if isinstance(item, str) else getattr(item, "url", None)
        if not isinstance(url, str):
            raise UpstreamError(
                f"Prediction {prediction_id} returned an unexpected output type "
                f"({type(item).__name__})",
                fields={"prediction_id": prediction_id},
            )
        if url:
            urls.append(url)
    return urls


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None
