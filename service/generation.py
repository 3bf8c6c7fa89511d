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
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from service.config import Settings
from service.coordination import ACCOUNT, CoordinationError, Coordinator, Lease
from service.errors import NotFound, PredictionFailed, ServiceError, Unavailable, UpstreamError
from service.filenames import build_filenames
from service.limits import Held, Limits, release, service_error
from service.schemas import BatchRequest, GenerateRequest, ModelSpec
from service.sealing import TokenSealer
from service.upstream import CreateOutcomeUnknown, PredictionResult, RunWatch, Upstream

log = logging.getLogger("service.generation")

OUTPUT_RETENTION = timedelta(hours=1)  # Replicate deletes API outputs after one hour


@dataclass(frozen=True)
class Caller:
    """Who pays: the Replicate account (by fingerprint) and its token, never logged."""

    account: str
    tier: str
    is_admin: bool
    token: str = field(repr=False)


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


@dataclass(frozen=True)
class TaskSpec:
    index: int
    prompt: str
    output_filename: str | None
    replicate_input: dict[str, Any]


GenerationListener = Callable[[str, str, float], None]  # (model, outcome, seconds)


class LeaseLostError(UpstreamError):
    """A slot was lost while its prediction ran: the prediction was cancelled (see Lease)."""

    def __init__(self, lease: Lease) -> None:
        which = (
            "the account's concurrency limit (REPLICATE_CONCURRENT_LIMIT)"
            if lease.kind == ACCOUNT
            else f"external semaphore '{lease.semaphore_id}'"
        )
        why = lease.why_invalid() or "it was lost"
        super().__init__(
            f"Lost the slot of {which}: {why}. The prediction was cancelled so that the limit "
            "holds; retry the request",
            fields={"limit_scope": "account_concurrency" if lease.kind == ACCOUNT else "semaphore"},
        )


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
        # Lease annotations, off the critical path; cancelled at close.
        self._background: set[asyncio.Task[None]] = set()

    async def generate(self, caller: Caller, request: GenerateRequest) -> TaskOutcome:
        """One task; a failure raises (the route answers with its status)."""
        await self._check_semaphore(request.external_semaphore_id)
        task = TaskSpec(0, request.prompt, request.output_filename, request.replicate_input)
        outcome = await self._run(caller, request.spec, task, request.external_semaphore_id)
        if outcome.error is not None:
            raise outcome.error
        return outcome

    async def generate_batch(self, caller: Caller, request: BatchRequest) -> list[TaskOutcome]:
        """Every task runs concurrently under the limits; one task's failure never fails its
        siblings, and the outcomes come back in input order."""
        await self._check_semaphore(request.external_semaphore_id)
        tasks = [
            TaskSpec(t.index, t.prompt, t.output_filename, t.replicate_input) for t in request.tasks
        ]
        return list(
            await asyncio.gather(
                *(self._run(caller, request.spec, t, request.external_semaphore_id) for t in tasks)
            )
        )

    async def _check_semaphore(self, semaphore_id: str | None) -> None:
        if semaphore_id is None:
            return
        try:
            exists = await self._coordinator.semaphore_exists(semaphore_id)
        except CoordinationError as exc:
            raise service_error(exc) from exc
        if not exists:
            raise NotFound(f"External semaphore '{semaphore_id}' not found")

    async def _run(
        self, caller: Caller, spec: ModelSpec, task: TaskSpec, semaphore_id: str | None
    ) -> TaskOutcome:
        """One task to its outcome: every error, of any layer, becomes this task's ServiceError
        (its siblings go on); only a cancellation propagates."""
        started = time.monotonic()
        try:
            result = await self._predict_under_limits(caller, spec, task, semaphore_id)
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
        self, caller: Caller, spec: ModelSpec, task: TaskSpec, semaphore_id: str | None
    ) -> PredictionResult:
        deadline = time.monotonic() + self._settings.queue_timeout_seconds
        holder = self._coordinator.holder(purpose=f"generate {spec.name}")
        # What a replica that adopts these slots needs to settle the prediction if this one dies
        # (docs/slot-ownership.md); a caller's own token only sealed, and only with a key.
        holder.account = caller.account
        holder.model = spec.ref
        holder.input = task.replicate_input
        if caller.tier == "credentials" and self._sealer is not None:
            holder.sealed_token = self._sealer.seal(caller.token)
        try:
            held = await self._limits.acquire(
                caller.account, semaphore_id, timeout_s=_remaining(deadline), holder=holder
            )
        except CoordinationError as exc:
            raise service_error(exc) from exc
        watch = RunWatch()
        may_be_running = False
        try:
            return await self._run_watched(caller, spec, task, held, deadline, watch)
        except CreateOutcomeUnknown:
            may_be_running = True  # a prediction may run with an id we never learned
            raise
        finally:
            if may_be_running or watch.may_be_running:
                # Its slots must stay taken while it may run: they expire into orphans that
                # another replica settles, or that Replicate's Cancel-After ends.
                log.warning(
                    "prediction may still be running: its slots are left to adoption",
                    extra={"prediction_id": watch.prediction_id},
                )
                await _abandon(held, create_unknown=may_be_running)
            else:
                await release(held)

    async def _run_watched(
        self,
        caller: Caller,
        spec: ModelSpec,
        task: TaskSpec,
        held: Held,
        deadline: float,
        watch: RunWatch,
    ) -> PredictionResult:
        limits = self._limits
        first_create = True  # its window entry came with the account slot

        async def before_create() -> None:
            nonlocal first_create
            _check_leases(held.leases)
            if first_create:
                first_create = False
                return
            try:
                await limits.take_create_token(caller.account, timeout_s=_remaining(deadline))
            except CoordinationError as exc:
                raise service_error(exc) from exc
            _check_leases(held.leases)

        async def before_poll() -> None:
            # Polls share Replicate's 3,000/min budget for other calls with every replica on
            # the account: paced through a window of their own, which only slows them down.
            await limits.pace_poll(caller.account)

        async def on_created(prediction_id: str) -> None:
            # Operators see it; an adopter cancels by it if this replica dies (without it, it
            # finds the prediction by model and input). Kept off the request's critical path.
            self._in_background(_annotate(held.leases, prediction_id))

        run = asyncio.ensure_future(
            self._upstream.run_prediction(
                caller.token,
                spec.ref,
                task.replicate_input,
                before_create=before_create,
                before_poll=before_poll,
                on_created=on_created,
                watch=watch,
            )
        )
        lost: list[Lease] = []

        def cancel_on_loss(lease: Lease) -> None:
            lost.append(lease)
            run.cancel()  # upstream cancels the prediction by id before it re-raises

        for lease in held.leases:
            lease.on_lost(cancel_on_loss)
        try:
            return await _await_shielding_cancel(run)
        except asyncio.CancelledError:
            if lost and not _current_task_cancelling():
                raise LeaseLostError(lost[0]) from None
            raise
        except PredictionFailed as exc:
            # Cancelled by another replica that took over our slot while we were stalled or
            # cut off (docs/slot-ownership.md): say that, not just "canceled".
            stale = [lease for lease in held.leases if not lease.is_valid()]
            if exc.status == "canceled" and (lost or stale):
                raise LeaseLostError((lost or stale)[0]) from None
            raise

    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)


async def _abandon(held: Held, *, create_unknown: bool) -> None:
    """Stop renewing without releasing. A create whose answer never came may still land at
    Replicate, later than any lookup could see: its record says so, and an adopter then keeps
    the slot until the prediction's hard deadline."""
    if create_unknown:
        for lease in held.leases:
            lease.holder.create_unknown = True
        with contextlib.suppress(Exception):
            await asyncio.shield(asyncio.gather(*(lease.annotate() for lease in held.leases)))
    for lease in held.leases:
        lease.abandon()


def _as_service_error(exc: Exception) -> ServiceError:
    if isinstance(exc, ServiceError):
        return exc
    if isinstance(exc, CoordinationError):
        return service_error(exc)
    log.error("generation failed unexpectedly", exc_info=exc)
    return InternalGenerationError(exc)


async def _annotate(leases: list[Lease], prediction_id: str) -> None:
    """Best effort: a failure here never touches the generation."""
    for lease in leases:
        try:
            await lease.set_prediction_id(prediction_id)
        except CoordinationError:
            pass
        except Exception:
            log.exception("lease annotation failed")


async def _await_shielding_cancel(run: asyncio.Future[PredictionResult]) -> PredictionResult:
    """Await the run; if we are cancelled, cancel the run and wait until it has cleaned up (it
    cancels the prediction upstream), so that slots are released only after that."""
    try:
        return await asyncio.shield(run)
    except asyncio.CancelledError:
        run.cancel()
        with contextlib.suppress(BaseException):
            await run
        raise


def _current_task_cancelling() -> bool:
    task = asyncio.current_task()
    return bool(task is not None and task.cancelling())


def _check_leases(leases: list[Lease]) -> None:
    for lease in leases:
        if not lease.is_valid():
            raise LeaseLostError(lease)


def _remaining(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())


def _files(spec: ModelSpec, task: TaskSpec, result: PredictionResult) -> list[GeneratedFile]:
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
    created = datetime.now(UTC)
    if created_at:
        with contextlib.suppress(ValueError):
            created = datetime.fromisoformat(created_at.replace("Z", "+00:00"))
    return (created + OUTPUT_RETENTION).isoformat().replace("+00:00", "Z")


__all__ = [
    "Caller",
    "GeneratedFile",
    "Generator",
    "LeaseLostError",
    "TaskOutcome",
]
