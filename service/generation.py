"""One generation and a batch of them: limits → prediction → files. The only orchestrator.

For every prediction, in this fixed order (no deadlock cycles):
  1. a slot of the external semaphore, when the request names one;
  2. a slot of the account's concurrency semaphore (REPLICATE_CONCURRENT_LIMIT);
  3. a token of the account's sliding 60 s window (REPLICATE_REQUESTS_PER_MINUTE), taken before
     every create attempt, retries included (the first one in the same Redis call as step 2 when
     that slot is free at once).
Slots are held until the prediction is terminal or cancelled, and released on every path. If a
lease is lost (its holder froze past the TTL), the prediction is cancelled: it would otherwise run
outside the limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from service.config import Settings
from service.coordination import (
    AcquireTimeout,
    CoordinationUnavailable,
    Coordinator,
    Lease,
    SemaphoreNotFound,
)
from service.coordination.lease import shielded
from service.errors import LimitTimeout, NotFound, ServiceError, Unavailable, UpstreamError
from service.filenames import build_filenames
from service.schemas import BatchRequest, GenerateRequest, ModelSpec
from service.upstream import CreateOutcomeUnknown, PredictionResult, Upstream

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
    def __init__(self, semaphore_id: str) -> None:
        super().__init__(
            f"Lost the slot of limit '{semaphore_id}' (lease expired unrenewed); the prediction "
            "was cancelled so that the limit holds"
        )


class Generator:
    def __init__(self, coordinator: Coordinator, upstream: Upstream, settings: Settings) -> None:
        self._coordinator = coordinator
        self._upstream = upstream
        self._settings = settings
        self.on_outcome: list[GenerationListener] = []
        # Orphan holds (see _hold_orphan) and lease annotations; cancelled at close.
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
        except CoordinationUnavailable as exc:
            raise _unavailable() from exc
        if not exists:
            raise NotFound(f"External semaphore '{semaphore_id}' not found")

    async def _run(
        self, caller: Caller, spec: ModelSpec, task: TaskSpec, semaphore_id: str | None
    ) -> TaskOutcome:
        started = time.monotonic()
        try:
            result = await self._predict_under_limits(caller, spec, task, semaphore_id)
        except ServiceError as exc:
            self._notify(spec.name, "failed", started)
            return TaskOutcome(task.index, task.prompt, task.output_filename, error=exc)
        self._notify(spec.name, "succeeded", started)
        return TaskOutcome(
            task.index,
            task.prompt,
            task.output_filename,
            files=_files(spec, task, result),
            prediction_id=result.prediction_id,
        )

    def _notify(self, model: str, outcome: str, started: float) -> None:
        for listener in self.on_outcome:
            listener(model, outcome, time.monotonic() - started)

    async def _predict_under_limits(
        self, caller: Caller, spec: ModelSpec, task: TaskSpec, semaphore_id: str | None
    ) -> PredictionResult:
        settings = self._settings
        deadline = time.monotonic() + settings.queue_timeout_seconds
        holder = self._coordinator.holder(purpose=f"generate {spec.name}")
        leases: list[Lease] = []
        keep_leases = False
        try:
            try:
                if semaphore_id is not None:
                    leases.append(
                        await self._coordinator.acquire(
                            semaphore_id, timeout_s=_remaining(deadline), holder=holder
                        )
                    )
                leases.append(
                    await self._coordinator.acquire_account(
                        caller.account,
                        limit=settings.replicate_concurrent_limit,
                        timeout_s=_remaining(deadline),
                        holder=holder,
                        limit_per_minute=settings.replicate_requests_per_minute,
                    )
                )
            except AcquireTimeout as exc:
                raise _limit_timeout(exc) from exc
            except SemaphoreNotFound as exc:
                raise NotFound(f"External semaphore '{exc.semaphore_id}' not found") from exc
            except CoordinationUnavailable as exc:
                raise _unavailable() from exc
            try:
                return await self._run_watched(caller, spec, task, leases, deadline)
            except CreateOutcomeUnknown:
                # A prediction may be running with an id we never learned: keep its slots for
                # as long as it could run, so that it cannot run outside the limit.
                keep_leases = True
                self._hold_orphan(leases)
                raise
        finally:
            if not keep_leases:
                await _release_all(leases)

    async def _run_watched(
        self,
        caller: Caller,
        spec: ModelSpec,
        task: TaskSpec,
        leases: list[Lease],
        deadline: float,
    ) -> PredictionResult:
        settings = self._settings
        coordinator = self._coordinator
        # The account slot, taken at once, may have come with the first create's window entry.
        prepaid = leases[-1].window_entry

        async def before_create() -> None:
            nonlocal prepaid
            _check_leases(leases)
            if prepaid:
                prepaid = False
                return
            try:
                await coordinator.take_account_rate(
                    caller.account,
                    limit_per_minute=settings.replicate_requests_per_minute,
                    timeout_s=_remaining(deadline),
                )
            except AcquireTimeout as exc:
                raise _limit_timeout(exc) from exc
            except CoordinationUnavailable as exc:
                raise _unavailable() from exc
            _check_leases(leases)

        async def before_poll() -> None:
            # Polls share Replicate's 3,000/min budget for other calls with every replica on
            # the account: pace them through a window of their own.
            with contextlib.suppress(CoordinationUnavailable):
                await coordinator.window.wait_take(
                    f"acct-poll:{caller.account}",
                    settings.poll_budget_per_minute,
                    timeout_s=60.0,
                    limit_scope="account_poll_budget",
                    limit_id=caller.account,
                )

        async def on_created(prediction_id: str) -> None:
            # For operators' eyes only: kept off the request's critical path.
            self._in_background(_annotate(leases, prediction_id))

        run = asyncio.ensure_future(
            self._upstream.run_prediction(
                caller.token,
                spec.ref,
                task.replicate_input,
                before_create=before_create,
                before_poll=before_poll,
                on_created=on_created,
            )
        )
        lost: list[Lease] = []

        def cancel_on_loss(lease: Lease) -> None:
            lost.append(lease)
            run.cancel()  # upstream cancels the prediction by id before it re-raises

        for lease in leases:
            lease.on_lost(cancel_on_loss)
        try:
            return await _await_shielding_cancel(run)
        except asyncio.CancelledError:
            if lost and not _current_task_cancelling():
                raise LeaseLostError(lost[0].semaphore_id) from None
            raise

    def _hold_orphan(self, leases: list[Lease]) -> None:
        hold_s = min(self._settings.prediction_timeout_seconds, 600.0)

        async def hold() -> None:
            try:
                await asyncio.sleep(hold_s)
            finally:
                await _release_all(leases)

        task = asyncio.create_task(hold())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)


async def _annotate(leases: list[Lease], prediction_id: str) -> None:
    for lease in leases:
        with contextlib.suppress(CoordinationUnavailable):
            await lease.set_prediction_id(prediction_id)


async def _release_all(leases: list[Lease]) -> None:
    """Release every lease at once (one round trip of latency, not one per lease); shielded:
    a caller cancelled meanwhile does not leave a slot behind."""
    if leases:
        await shielded(asyncio.gather(*(lease.release() for lease in leases)))


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
            raise LeaseLostError(lease.semaphore_id)


def _remaining(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())


def _limit_timeout(exc: AcquireTimeout) -> LimitTimeout:
    names = {
        "semaphore": f"external semaphore '{exc.limit_id}'",
        "account_concurrency": "the account's concurrency limit (REPLICATE_CONCURRENT_LIMIT)",
        "account_rate": "the account's requests-per-minute limit (REPLICATE_REQUESTS_PER_MINUTE)",
    }
    what = names.get(exc.scope, exc.scope)
    return LimitTimeout(
        f"Timed out after {exc.waited_s:.1f}s waiting for {what} (limit {exc.limit}); "
        f"retry after {max(1, math.ceil(exc.retry_after_s))}s",
        scope=exc.scope,
        limit_id=exc.limit_id if exc.scope == "semaphore" else "account",
        retry_after_s=exc.retry_after_s,
    )


def _unavailable() -> Unavailable:
    return Unavailable(
        "Coordination store (Redis) is unreachable; no generation can start until it is back",
        headers={"Retry-After": "5"},
    )


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
