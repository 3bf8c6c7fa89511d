"""One simulated prediction: its planned timeline, and its JSON at any moment.

Nothing runs per prediction: the status is derived from the clock whenever it is read::

    created_at ──────── start_at ─────────── end_at ───────── end_at + output_ttl_s
       starting            processing          succeeded|failed   data_removed, files 404

A cancel before end_at sets canceled_at and ends the prediction there. A `Cancel-After`
deadline (deadline_at = created_at + duration) ends it there too, whoever asks::

    deadline_at <= start_at             aborted at deadline_at (never ran: no predict_time)
    start_at < deadline_at < end_at     canceled at deadline_at
    end_at <= deadline_at               no effect
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any, Literal

from service.simulator.catalog import ModelSpec, RenderPlan
from service.simulator.ids import iso_z

Status = Literal["starting", "processing", "succeeded", "failed", "canceled", "aborted"]
TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "canceled", "aborted"})
WEB_ORIGIN = "https://replicate.com"


@dataclass
class SimPrediction:
    id: str
    model: ModelSpec
    input: dict[str, Any]
    token_fp: str
    base_url: str  # origin used in urls.* and file URLs, without a trailing slash
    plan: RenderPlan
    seed: int
    created_at: float
    start_at: float
    end_at: float
    error: str | None  # set: the prediction ends "failed" with this text
    deadline_at: float | None = None  # from Cancel-After; None: no deadline
    seq: int = 0  # creation order in the store (orders equal created_at in the list)
    canceled_at: float | None = None
    _canceled: asyncio.Event | None = field(default=None, repr=False)

    @property
    def ended_at(self) -> float:
        """When it stops being in flight: completion, cancel or deadline, whichever is first."""
        return min(t for t in (self.end_at, self.canceled_at, self.deadline_at) if t is not None)

    @property
    def _cut_by_deadline(self) -> bool:
        """The deadline comes before completion (and before any cancel)."""
        deadline = self.deadline_at
        return deadline is not None and deadline < self.end_at and self.ended_at == deadline

    def status_at(self, now: float) -> Status:
        if self.canceled_at is not None and self.canceled_at < self.end_at:
            return "canceled"  # a cancel is only accepted before any other end
        if self._cut_by_deadline and now >= self.ended_at:
            return "aborted" if self.ended_at <= self.start_at else "canceled"
        if now >= self.end_at:
            return "failed" if self.error is not None else "succeeded"
        return "processing" if now >= self.start_at else "starting"

    def is_terminal(self, now: float) -> bool:
        return self.status_at(now) in TERMINAL

    def is_expired(self, now: float, ttl_s: float) -> bool:
        return self.is_terminal(now) and now >= self.ended_at + ttl_s

    def cancel(self, now: float) -> bool:
        """Cancel if still running; returns whether anything changed."""
        if self.is_terminal(now):
            return False
        self.canceled_at = now
        if self._canceled is not None:
            self._canceled.set()
        return True

    async def wait_terminal(self, timeout_s: float, now: float) -> None:
        """Sleep until its end (planned, deadline or cancel) or `timeout_s`, whichever is first."""
        remaining = min(timeout_s, self.ended_at - now)
        if remaining <= 0 or self.is_terminal(now):
            return
        if self._canceled is None:
            self._canceled = asyncio.Event()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._canceled.wait(), remaining)

    def filenames(self) -> list[str]:
        if not self.model.list_output:
            return [f"output.{self.plan.fmt}"]
        return [f"out-{i}.{self.plan.fmt}" for i in range(self.plan.count)]

    def file_urls(self) -> list[str]:
        return [f"{self.base_url}/files/{self.id}/{name}" for name in self.filenames()]

    def to_json(
        self, now: float, ttl_s: float, *, as_starting: bool = False, listed: bool = False
    ) -> dict[str, Any]:
        """The API object at `now`; `as_starting` gives the just-created (or wait-expired) view,
        `listed` the view of a GET /v1/predictions result (no `logs`, see listing.py)."""
        status: Status = "starting" if as_starting else self.status_at(now)
        removed = status in TERMINAL and self.is_expired(now, ttl_s)
        started = status not in ("starting", "aborted") and self.ended_at >= self.start_at
        output: Any = None
        if status == "succeeded" and not removed:
            urls = self.file_urls()
            output = urls if self.model.list_output else urls[0]
        body: dict[str, Any] = {
            "id": self.id,
            "model": self.model.name,
            "version": "hidden",
            "input": {} if removed else self.input,
            "logs": None if removed else self._logs(status),
            "output": output,
            "data_removed": removed,
            "error": self.error if status == "failed" else None,
            "status": status,
            "source": "api",
            "created_at": iso_z(self.created_at),
            "started_at": iso_z(self.start_at) if started else None,
            "completed_at": iso_z(self.ended_at) if status in TERMINAL else None,
            "deadline": iso_z(self.deadline_at) if self.deadline_at is not None else None,
            "metrics": self._metrics(status, started),
            "urls": {
                "cancel": f"{self.base_url}/v1/predictions/{self.id}/cancel",
                "get": f"{self.base_url}/v1/predictions/{self.id}",
                "web": f"{WEB_ORIGIN}/p/{self.id}",
            },
        }
        if listed:
            del body["logs"]
        return body

    def _metrics(self, status: Status, started: bool) -> dict[str, float | int]:
        if status not in TERMINAL:
            return {}
        end = self.ended_at
        metrics: dict[str, float | int] = {"total_time": round(end - self.created_at, 6)}
        if started:
            metrics["predict_time"] = round(end - self.start_at, 6)
        if status == "succeeded":
            metrics["image_count"] = self.plan.count
        return metrics

    def _logs(self, status: Status) -> str:
        if status in ("starting", "aborted"):
            return ""
        lines = [f"Using seed: {self.seed}"]
        if status == "succeeded":
            lines.append(
                f"Generated {self.plan.count} image(s) in {self.end_at - self.start_at:.2f}s"
            )
        elif status == "failed":
            lines.append(str(self.error))
        return "\n".join(lines) + "\n"
