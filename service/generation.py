"""One generation and a batch of them: limits → prediction → files. The only orchestrator.

Every prediction holds, before its create: a slot of the external semaphore (when the request
names one), a slot of the account's concurrency semaphore and an entry of the account's creation
window — taken by service.limits without ever waiting while holding one of them; every create
retry takes another window entry. Slots are held until the prediction is terminal or was never
created, and released on every path; a prediction that may still be running (its cancel did not
go through, its create's answer never came) leaves its slots to adoption instead
(docs/slot-ownership.md). If a lease is lost (its holder froze past the TTL, or another replica
took it over), the prediction is cancelled: it would otherwise run outside the limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from service.auth import Caller
from service.config import Settings
from service.coordination import CoordinationError, Coordinator, Holder
from service.coordination_errors import service_error
from service.errors import NotFound, ServiceError, Unavailable
from service.filenames import build_filenames
from service.limits import LeaseLostError, Limits
from service.schemas import BatchRequest, GenerateRequest, ModelSpec, TaskRequest
from service.sealing import TokenSealer
from service.upstream import CreateOutcomeUnknown, PredictionResult, RunWatch, Upstream

log = logging.getLogger("service.generation")

OUTPUT_RETENTION = timedelta(hours=1)  # Replicate deletes API outputs after one hour


@dataclass(frozen=True)
class GeneratedFile:
    url: str
    filename: str
    expires_at: str | None


@dataclass(frozen=True)
class TaskOutcome:
    index: int
    prompt: str
    output_filename: str | None
    files: list[GeneratedFile] = field(default_factory=list)
    prediction_id: str | None = None
    error: ServiceError | None = None

    @property
    def succeeded(self) -> bool:
        return self.error is None


GenerationListener = Callable[[str, str, float], None]  # (model, outcome, seconds)


@dataclass(frozen=True)
class TaskHooks:
    """What a durable job (service.jobs) adds around one task: its purpose in the slots' records
    (an adopter never cancels a job's prediction: the job follows it), a write awaited before
    every create attempt (durable before the request leaves) and one once the id is known."""

    purpose: str
    before_create: Callable[[], Awaitable[None]] | None = None
    on_created: Callable[[str], Awaitable[None]] | None = None
    # Asked when the task is interrupted with its prediction running (shutdown, a lost slot):
    # True leaves it running, for the job's next runner to follow by id.
    keep_running: Callable[[], Awaitable[bool]] | None = None


class InternalGenerationError(Unavailable):
    """An error nobody anticipated, inside one task: answered as a retryable 503 naming it (its
    prediction was cancelled and its slots released on the way out)."""

    def __init__(self, exc: BaseException) -> None:
        super().__init__(
            f"Internal error while generating ({type(exc).__name__}); the prediction was "
            "cancelled and its slots released; retry the request",
            headers={"Retry-After": "1"},
        )


class Generator:
    def __init__(
        self,
        coordinator: Coordinator,
        upstream: Upstream,
        settings: Settings,
        sealer: TokenSealer | None = None,
    ) -> None:
        self._coordinator = coordinator
        self._upstream = upstream
        self._settings = settings
        self._limits = Limits(coordinator, settings)
        self._sealer = sealer
        self.on_outcome: list[GenerationListener] = []

    async def generate(self, caller: Caller, request: GenerateRequest) -> TaskOutcome:
        """One task; a failure raises (the route answers with its status)."""
        await self.check_semaphore(request.external_semaphore_id)
        task = TaskRequest(0, request.prompt, request.output_filename, request.replicate_input)
        outcome = await self._run(caller, request.spec, task, request.external_semaphore_id)
        if outcome.error is not None:
            raise outcome.error
        return outcome

    async def generate_batch(self, caller: Caller, request: BatchRequest) -> list[TaskOutcome]:
        """Every task runs concurrently under the limits; one task's failure never fails its
        siblings, and the outcomes come back in input order."""
        await self.check_semaphore(request.external_semaphore_id)
        return list(
            await asyncio.gather(
                *(
                    self._run(caller, request.spec, task, request.external_semaphore_id)
                    for task in request.tasks
                )
            )
        )

    async def run_task(
        self,
        caller: Caller,
        spec: ModelSpec,
        task: TaskRequest,
        semaphore_id: str | None,
        hooks: TaskHooks,
    ) -> TaskOutcome:
        """One task of a durable job to its outcome (raises only on cancellation)."""
        return await self._run(caller, spec, task, semaphore_id, hooks)

    async def follow(
        self,
        caller: Caller,
        spec: ModelSpec,
        task: TaskRequest,
        prediction_id: str,
        *,
        keep_running: Callable[[], Awaitable[bool]] | None = None,
    ) -> TaskOutcome:
        """A job's task whose prediction a replica that died created: follow it by id, holding
        no slot (its slot is that replica's orphan, kept by an adopter until the prediction is
        terminal). Cancelled → the prediction is cancelled too."""
        started = time.monotonic()
        try:
            result = await self._upstream.follow_prediction(
                caller.token,
                prediction_id,
                before_poll=functools.partial(self._limits.pace_poll, caller.account),
                keep_running=keep_running,
            )
            files = _files(spec, task, result)
        except Exception as exc:
            error = _as_service_error(exc)
            self._notify(spec.name, "failed", started)
            return TaskOutcome(
                task.index,
                task.prompt,
                task.output_filename,
                prediction_id=prediction_id,
                error=error,
            )
        self._notify(spec.name, "succeeded", started)
        return TaskOutcome(
            task.index, task.prompt, task.output_filename, files=files, prediction_id=prediction_id
        )

    async def check_semaphore(self, semaphore_id: str | None) -> None:
        """NotFound if the named semaphore does not exist; a 503 (service_error) if Redis cannot
        tell now."""
        if semaphore_id is None:
            return
        try:
            exists = await self._coordinator.semaphore_exists(semaphore_id)
        except CoordinationError as exc:
            raise service_error(exc) from exc
        if not exists:
            raise NotFound(f"External semaphore '{semaphore_id}' not found")

    async def _run(
        self,
        caller: Caller,
        spec: ModelSpec,
        task: TaskRequest,
        semaphore_id: str | None,
        hooks: TaskHooks | None = None,
    ) -> TaskOutcome:
        """One task to its outcome: every error, of any layer, becomes this task's ServiceError
        (its siblings go on); only a cancellation propagates."""
        started = time.monotonic()
        try:
            result = await self._predict_under_limits(caller, spec, task, semaphore_id, hooks)
            files = _files(spec, task, result)
        except Exception as exc:
            error = _as_service_error(exc)
            self._notify(spec.name, "failed", started)
            return TaskOutcome(task.index, task.prompt, task.output_filename, error=error)
        self._notify(spec.name, "succeeded", started)
        return TaskOutcome(
            task.index,
            task.prompt,
            task.output_filename,
            files=files,
            prediction_id=result.prediction_id,
        )

    def _notify(self, model: str, outcome: str, started: float) -> None:
        for listener in self.on_outcome:
            listener(model, outcome, time.monotonic() - started)

    async def _predict_under_limits(
        self,
        caller: Caller,
        spec: ModelSpec,
        task: TaskRequest,
        semaphore_id: str | None,
        hooks: TaskHooks | None = None,
    ) -> PredictionResult:
        """The protocol of one prediction: hold its slots, run it guarded by them, and leave
        them to adoption if it may still be running when the run ends."""
        holder = self._holder(caller, spec, task)
        before_create: Callable[[], Awaitable[None]] | None = None
        on_created: Callable[[str], Awaitable[None]] | None = None
        keep_running: Callable[[], Awaitable[bool]] | None = None
        if hooks is not None:  # a durable job's task (service.jobs)
            holder.purpose = hooks.purpose
            before_create, on_created = hooks.before_create, hooks.on_created
            keep_running = hooks.keep_running
        watch = RunWatch()
        timeout_s = self._settings.queue_timeout_seconds
        async with self._limits.hold(
            caller.account, semaphore_id, timeout_s=timeout_s, holder=holder
        ) as slots:
            try:
                return await slots.guard(
                    self._upstream.run_prediction(
                        caller.token,
                        spec.ref,
                        task.replicate_input,
                        before_create=_then(slots.before_create, before_create),
                        # Polls share Replicate's 3,000/min budget for other calls with every
                        # replica on the account: paced, which only slows them down.
                        before_poll=functools.partial(self._limits.pace_poll, caller.account),
                        on_created=on_created,  # a durable job records the id
                        # The slots' records name the prediction while it runs (an adopter
                        # cancels by it); one done within the create's hold is released now.
                        on_running=slots.annotate,
                        watch=watch,
                        keep_running=keep_running,
                    ),
                    # A slot lost once the prediction ended (the job's record of it slowed by
                    # Redis) costs nothing upstream: the result stands.
                    ended=lambda: watch.ended,
                )
            except CreateOutcomeUnknown:
                slots.leave_running(create_unknown=True)  # running with an id we never learned
                raise
            finally:
                if watch.may_be_running:  # its cancel did not go through, or it was kept
                    slots.leave_running()

    def _holder(self, caller: Caller, spec: ModelSpec, task: TaskRequest) -> Holder:
        """The slots' record: what a replica that adopts them needs to settle the prediction if
        this one dies (docs/slot-ownership.md); a caller's own token only sealed, and only with
        a key."""
        holder = self._coordinator.holder(purpose=f"generate {spec.name}")
        holder.account = caller.account
        holder.model = spec.ref
        holder.input = task.replicate_input
        if caller.tier == "credentials" and self._sealer is not None:
            holder.sealed_token = self._sealer.seal(caller.token)
        return holder

    async def close(self) -> None:
        await self._limits.close()


def _then(
    first: Callable[[], Awaitable[None]], second: Callable[[], Awaitable[None]] | None
) -> Callable[[], Awaitable[None]]:
    if second is None:
        return first

    async def both() -> None:
        await first()
        await second()

    return both


def _as_service_error(exc: Exception) -> ServiceError:
    if isinstance(exc, ServiceError):
        return exc
    if isinstance(exc, CoordinationError):
        return service_error(exc)
    log.error("generation failed unexpectedly", exc_info=exc)
    return InternalGenerationError(exc)


def _files(spec: ModelSpec, task: TaskRequest, result: PredictionResult) -> list[GeneratedFile]:
    names = build_filenames(
        task.output_filename,
        result.output_urls,
        default_stem=f"{spec.name}_{result.prediction_id}",
        default_extension=spec.default_extension,
    )
    expires_at = _expiry(result.created_at)
    return [
        GeneratedFile(url=url, filename=name, expires_at=expires_at)
        for url, name in zip(result.output_urls, names, strict=True)
    ]


def _expiry(created_at: str | None) -> str:
    created: datetime | None = None
    if created_at:
        with contextlib.suppress(ValueError):
            created = datetime.fromisoformat(created_at.replace("Z", "+00:00"))
    if created is None:  # the clock only when Replicate's own time is missing or unreadable
        created = datetime.now(UTC)
    return (created + OUTPUT_RETENTION).isoformat().replace("+00:00", "Z")


__all__ = [
    "Caller",
    "GeneratedFile",
    "Generator",
    "LeaseLostError",
    "TaskHooks",
    "TaskOutcome",
]
