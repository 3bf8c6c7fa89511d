"""What a durable job is, as stored in Redis and as shown to its caller.

A job is one /generate or /generate-batch body, run later by any replica. Its tasks move through

    queued ──▶ running ──▶ succeeded | failed | canceled
               create: None → "inflight" (written before the request leaves)
                            → "created" with the prediction id (written once it is known)

The create markers are what makes a resumed job create each prediction at most once: a task
marked "created" is followed by its id, one marked "inflight" is first looked for among the
account's newest predictions (service.jobs.runner).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from service.errors import ServiceError
from service.generation import TaskOutcome
from service.schemas import TaskRequest

QUEUED, RUNNING = "queued", "running"
SUCCEEDED, FAILED, CANCELED = "succeeded", "failed", "canceled"
JOB_STATUSES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELED)
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELED})
INFLIGHT, CREATED = "inflight", "created"

KIND_GENERATE, KIND_BATCH = "generate", "batch"


@dataclass
class TaskState:
    """One task's progress (a field of the job's tasks hash, as JSON)."""

    status: str = QUEUED
    prediction_id: str | None = None
    create: str | None = None  # None, INFLIGHT or CREATED
    create_at: float | None = None  # epoch seconds of the last create attempt (runner's clock)
    attempts: int = 0
    files: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    error_status: int | None = None
    error_fields: dict[str, Any] = field(default_factory=dict)

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    def to_json(self) -> str:
        values = {k: v for k, v in asdict(self).items() if v not in (None, [], {}, 0)}
        values["status"] = self.status
        return json.dumps(values, separators=(",", ":"), ensure_ascii=True)

    @classmethod
    def from_json(cls, raw: str | bytes | None) -> TaskState:
        if not raw:
            return cls()
        data = json.loads(raw)
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def with_outcome(self, outcome: TaskOutcome) -> TaskState:
        """This task, ended with `outcome` (the prediction id kept when known)."""
        done = TaskState(
            status=SUCCEEDED if outcome.error is None else FAILED,
            prediction_id=outcome.prediction_id or self.prediction_id,
            create=self.create,
            create_at=self.create_at,
            attempts=self.attempts,
        )
        if outcome.error is None:
            done.files = [
                {"url": f.url, "filename": f.filename, "expires_at": f.expires_at}
                for f in outcome.files
            ]
        else:
            done.set_error(outcome.error)
        return done

    def set_error(self, error: ServiceError) -> None:
        self.error = error.message
        self.error_status = error.status_code
        self.error_fields = {k: v for k, v in error.fields.items() if _is_json(v)}


@dataclass(frozen=True)
class JobSpec:
    """The validated request a job runs: model, tasks, semaphore, and how it was submitted."""

    kind: str  # KIND_GENERATE or KIND_BATCH
    model_name: str
    semaphore_id: str | None
    tasks: list[TaskRequest]

    def to_json(self) -> str:
        return json.dumps(
            {
                "kind": self.kind,
                "model_name": self.model_name,
                "semaphore_id": self.semaphore_id,
                "tasks": [
                    [t.index, t.prompt, t.output_filename, t.replicate_input] for t in self.tasks
                ],
            },
            separators=(",", ":"),
            ensure_ascii=True,
        )

    @classmethod
    def from_json(cls, raw: str | bytes) -> JobSpec:
        data = json.loads(raw)
        return cls(
            kind=data["kind"],
            model_name=data["model_name"],
            semaphore_id=data["semaphore_id"],
            tasks=[TaskRequest(i, p, f, dict(inp)) for i, p, f, inp in data["tasks"]],
        )


@dataclass(frozen=True)
class Webhook:
    """Where the caller wants the job POSTed: on its end, and per task when `events` says so."""

    url: str
    events: tuple[str, ...] = ("completed",)

    def to_json(self) -> str:
        return json.dumps({"url": self.url, "events": list(self.events)}, separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | bytes) -> Webhook:
        data = json.loads(raw)
        return cls(url=data["url"], events=tuple(data.get("events") or ("completed",)))


def iso_ms(ms: str | bytes | int | None) -> str | None:
    """Redis milliseconds → ISO-8601 with Z (as Replicate shows times)."""
    if ms in (None, b"", ""):
        return None
    moment = datetime.fromtimestamp(int(ms) / 1000, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def task_view(index: int, state: TaskState, request: TaskRequest | None) -> dict[str, Any]:
    view: dict[str, Any] = {
        "index": index,
        "status": state.status,
        "prediction_id": state.prediction_id,
        "prompt": request.prompt if request else None,
        "output_filename": request.output_filename if request else None,
        "files": state.files,
        "error": state.error,
    }
    if state.error is not None:
        view["error_status"] = state.error_status
        for key, value in state.error_fields.items():
            if key == "status":
                view["prediction_status"] = value
            elif key not in view:
                view[key] = value
    return view


def _is_json(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True
