"""Runs queued jobs: any replica, a bounded number of tasks at once, resumed after a crash.

Each replica is one consumer of the queue's group (`<replica id>-<random>`):

    loop      while this replica's unfinished tasks < JOB_MAX_RUNNING_TASKS:
                XAUTOCLAIM entries idle > JOB_CLAIM_IDLE_SECONDS (their runner died) and
                XREADGROUP new ones (blocking 1 s); each entry is one job → _run_job
    _run_job  take_job.lua: the job's fence epoch + 1 (an earlier runner can write nothing)
              every task not finished runs through the Generator (same limits, same FIFO
              queues as /generate), at most JOB_MAX_RUNNING_TASKS at once on this replica
              a watcher renews the entry's idle time every claim-idle/3 and polls the cancel
              flag; the job's end is written (finish_job.lua), its webhooks queued, and only
              then the entry XACKed and XDELed: the entry is the job's outbox, so a runner
              that died in between leaves it pending, and the runner that claims it finds
              the job ended and queues them (a delivery is never queued twice)

Never two predictions for one task. Before every create attempt the task is marked `inflight`
in Redis (awaited: no record, no create), and `created` with the prediction id once known.
A runner that takes over a job after its runner died:

    created <id>   follows the prediction by id (Generator.follow); its slot is the dead
                   replica's orphan, which an adopter keeps until the prediction is terminal
                   and never cancels (the lease's purpose says "job ...": service.orphans)
    inflight       looks for it among the account's newest predictions with the same model and
                   input (excluding ids other tasks of the job already have); found → follows
                   it; not there CREATE_TRANSIT_S after the takeover → it was never created
                   (a create reaches Replicate within seconds) → creates it
    queued         creates it

A task that waited too long for a limit (429) or found Redis down before any create attempt is
retried: a job waits as long as it takes. On shutdown, tasks that have not created anything
stop at once and stay queued; running predictions get DRAIN_SECONDS (at most 10 s) to finish,
then are left running, their slots to adoption and their tasks to the next runner, which
follows them by id; the entry is left to another replica. A runner that froze or was cut off
while another took the job over leaves its predictions running the same way when it wakes
(`_keep_running`): one prediction per task, whatever happens to the replicas.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from service.auth import Caller
from service.config import Settings
from service.errors import LimitTimeout, ServiceError, Unavailable, UpstreamError
from service.fingerprint import token_fingerprint
from service.generation import Generator, TaskHooks, TaskOutcome
from service.jobs.models import (
    CANCELED,
    CREATED,
    FAILED,
    INFLIGHT,
    KIND_GENERATE,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    TaskState,
    task_view,
)
from service.jobs.store import JobRecord, JobStore
from service.orphans import JOB_PURPOSE_PREFIX
from service.schemas import MODELS, TaskRequest
from service.sealing import TokenSealer
from service.upstream import Upstream

log = logging.getLogger("service.jobs")

CANCEL_POLL_S = 0.5
READ_BLOCK_MS = 1000
CLAIM_BATCH = 8
# Between Redis' clock (the create marker) and Replicate's created_at.
CLOCK_SKEW_S = 60.0
# How long after a takeover a create the dead runner had sent may still show up in the list.
CREATE_TRANSIT_S = 5.0
# How long a resumed task keeps trying to read the prediction list before giving up.
LIST_RETRY_S = 60.0
RETRY_WAIT_S = 1.0
SHUTDOWN_WAIT_MAX_S = 10.0

FinishedListener = Callable[[JobRecord, str], Awaitable[None]]  # (job, final status)
TaskListener = Callable[[JobRecord, int, TaskState], Awaitable[None]]


class JobLost(Unavailable):
    """Another replica took this job over (this one stalled past the claim idle time)."""


class ShuttingDown(Unavailable):
    """This replica is stopping: the task was not started and stays queued."""


@dataclass
class _Run:
    """One job being run by this replica."""

    record: JobRecord
    entry: str
    epoch: int
    caller: Caller
    states: dict[int, TaskState]
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    claimed: set[str] = field(default_factory=set)  # prediction ids found for inflight tasks
    canceling: bool = False
    lost: bool = False
    unfinished: int = 0
    hooks_owed: bool = False  # some ended task's webhooks may not have been queued

    def stop(self) -> None:
        for task in self.tasks:
            task.cancel()


class JobRunner:
    def __init__(
        self,
        store: JobStore,
        generator: Generator,
        upstream: Upstream,
        settings: Settings,
        sealer: TokenSealer,
    ) -> None:
        self._store = store
        self._generator = generator
        self._upstream = upstream
        self._settings = settings
        self._sealer = sealer
        self.consumer = f"{settings.effective_replica_id}-{secrets.token_hex(4)}"
        self.max_tasks = settings.job_max_running_tasks
        self._capacity = asyncio.Semaphore(self.max_tasks)
        idle_s = settings.job_claim_idle_seconds or settings.lease_ttl_seconds
        self._claim_idle_ms = int(idle_s * 1000)
        self._renew_every_s = idle_s / 3
        self._runs: dict[str, _Run] = {}
        self._jobs: set[asyncio.Task[None]] = set()
        self._loop: asyncio.Task[None] | None = None
        self._closing = False
        self.running_tasks = 0  # tasks of this replica inside a prediction or a limit wait
        self.on_finished: list[FinishedListener] = []
        self.on_task: list[TaskListener] = []

    @property
    def unfinished_tasks(self) -> int:
        return sum(run.unfinished for run in self._runs.values())

    def start(self) -> None:
        self._loop = asyncio.create_task(self._main(), name="job-runner")

    async def close(self) -> None:
        """Stop taking jobs; let running predictions finish for a while, then cancel them and
        queue their tasks again (another replica takes the job over)."""
        self._closing = True
        if self._loop is not None:
            self._loop.cancel()
            with contextlib.suppress(BaseException):
                await self._loop
        if self._jobs:
            wait_s = min(self._settings.drain_seconds, SHUTDOWN_WAIT_MAX_S)
            _, pending = await asyncio.wait(self._jobs, timeout=wait_s)
            for run in self._runs.values():
                run.stop()
            if pending:
                await asyncio.wait(pending, timeout=30)

    # -- the queue ------------------------------------------------------------------------

    async def _main(self) -> None:
        group_ready = False
        next_claim = 0.0
        while True:
            try:
                if not group_ready:
                    await self._store.ensure_group()
                    group_ready = True
                if self.unfinished_tasks >= self.max_tasks:
                    await asyncio.sleep(0.1)
                    continue
                if time.monotonic() >= next_claim:
                    next_claim = time.monotonic() + self._renew_every_s
                    claimed = await self._store.claim_idle(
                        self.consumer, min_idle_ms=self._claim_idle_ms, count=CLAIM_BATCH
                    )
                    for entry, job_id in claimed:
                        log.warning(
                            "took over a job whose runner went silent", extra={"job_id": job_id}
                        )
                        self._start_job(entry, job_id)
                    if claimed:
                        continue
                block_ms = min(READ_BLOCK_MS, int(self._renew_every_s * 1000))
                for entry, job_id in await self._store.read_new(
                    self.consumer, count=1, block_ms=max(10, block_ms)
                ):
                    self._start_job(entry, job_id)
            except asyncio.CancelledError:
                raise
            except ServiceError as exc:
                log.warning("job queue unreadable", extra={"error": exc.message})
                await asyncio.sleep(RETRY_WAIT_S)
            except Exception:
                log.exception("job queue loop failed")
                group_ready = False
                await asyncio.sleep(RETRY_WAIT_S)

    def _start_job(self, entry: str, job_id: str) -> None:
        if job_id in self._runs:
            return
        task = asyncio.create_task(self._run_job(entry, job_id), name=f"job-{job_id}")
        self._jobs.add(task)
        task.add_done_callback(self._jobs.discard)

    # -- one job --------------------------------------------------------------------------

    async def _run_job(self, entry: str, job_id: str) -> None:
        try:
            taken = await self._store.take(job_id, self.consumer)
            record = await self._store.read(job_id) if taken.outcome != "gone" else None
            if record is None:
                await self._store.done(entry)  # expired
                return
            if taken.outcome == "finished":
                # Ended, its entry not acknowledged: its runner died (or Redis failed) before
                # the job's webhooks were queued, or it was canceled while queued. Queue them
                # now (a delivery already queued is not queued twice), then acknowledge.
                if await self._notify_end(record, taken.status, record.tasks):
                    await self._store.done(entry)
                return
            caller = self._caller(record)
            states = {t.index: record.tasks.get(t.index, TaskState()) for t in record.spec.tasks}
            run = _Run(record, entry, taken.epoch, caller or _NO_CALLER, states)
            # A takeover: the tasks that ended under the dead runner may have ended after its
            # last webhook was queued.
            run.hooks_owed = any(state.terminal for state in states.values())
            self._runs[job_id] = run
            try:
                await self._execute(run, cancel=taken.cancel, no_caller=caller is None)
            finally:
                self._runs.pop(job_id, None)
        except asyncio.CancelledError:
            raise
        except ServiceError as exc:
            # Redis unreachable: the entry stays pending, and is taken over once idle.
            log.warning("job interrupted", extra={"job_id": job_id, "error": exc.message})
        except Exception:
            log.exception("job failed unexpectedly", extra={"job_id": job_id})

    async def _execute(self, run: _Run, *, cancel: bool, no_caller: bool) -> None:
        job_id = run.record.id
        spec = run.record.spec
        if no_caller:
            why = "The token this job was submitted with can no longer be used here"
            for index, state in run.states.items():
                if not state.terminal:
                    state.status, state.error, state.error_status = FAILED, why, 503
                    await self._write(run, index, state)
            await self._finish(run, FAILED, why)
            return
        run.canceling = cancel
        pending = [t for t in spec.tasks if not run.states[t.index].terminal]
        run.unfinished = len(pending)
        if not cancel:
            for task in pending:
                work = asyncio.create_task(self._task(run, task))
                run.tasks.add(work)
        watcher = asyncio.create_task(self._watch(run))
        try:
            if run.tasks:
                await asyncio.gather(*run.tasks, return_exceptions=True)
        finally:
            watcher.cancel()
            with contextlib.suppress(BaseException):
                await watcher
        if run.lost:
            log.warning("job taken over by another replica", extra={"job_id": job_id})
            return
        if run.canceling:
            if cancel:  # asked while its runner was dead: its predictions may still run
                await self._cancel_predictions(run)
            for index, state in run.states.items():
                if not state.terminal:
                    state.status = CANCELED
                    await self._write(run, index, state)
            await self._finish(run, CANCELED, None)
            return
        if self._closing and any(not s.terminal for s in run.states.values()):
            return  # left pending: another replica takes the job over
        status = SUCCEEDED
        error: str | None = None
        if spec.kind == KIND_GENERATE:
            only = run.states[spec.tasks[0].index]
            if only.status == FAILED:
                status, error = FAILED, only.error
        await self._finish(run, status, error)

    async def _cancel_predictions(self, run: _Run) -> None:
        """Cancel the predictions a dead runner created for this job (their slots' adopters
        only wait for a job's predictions to end, never cancel them)."""
        ids = [
            s.prediction_id
            for s in run.states.values()
            if not s.terminal and s.create == CREATED and s.prediction_id
        ]
        await asyncio.gather(
            *(
                self._upstream.settle(run.caller.token, pid, cancel=True, within_s=10.0)
                for pid in ids
                if pid
            ),
            return_exceptions=True,
        )

    async def _finish(self, run: _Run, status: str, error: str | None) -> None:
        """The job's end, then its webhooks queued, then its entry acknowledged: the entry is
        the job's outbox. A replica that dies (or loses Redis) after the end and before its
        webhooks were queued leaves the entry pending; the runner that claims it finds the job
        ended and queues them (`_run_job`)."""
        record = run.record
        if not await self._store.finish(
            record.id, run.epoch, status, error, len(record.spec.tasks)
        ):
            return  # another runner has it
        log.info("job finished", extra={"job_id": record.id, "status": status})
        tasks = run.states if run.hooks_owed else {}
        if await self._notify_end(record, status, tasks):
            await self._store.done(run.entry)
        else:
            log.warning(
                "job webhooks not queued; left to the runner that claims its entry",
                extra={"job_id": record.id},
            )

    async def _notify_end(
        self, record: JobRecord, status: str, states: dict[int, TaskState]
    ) -> bool:
        """Every listener of the job's end, and of each of `states` that ended; False when one
        found Redis unreachable (then it runs again after a takeover: each must be idempotent).
        A listener's bug is logged, not retried: it would fail the same way forever."""
        done = True
        for index, state in sorted(states.items()):
            if state.terminal:
                done = await self._notify_task(record, index, state) and done
        for listener in self.on_finished:
            try:
                await listener(record, status)
            except ServiceError as exc:
                log.warning(
                    "job finished listener failed",
                    extra={"job_id": record.id, "error": exc.message},
                )
                done = False
            except Exception:
                log.exception("job finished listener failed", extra={"job_id": record.id})
        return done

    async def _notify_task(self, record: JobRecord, index: int, state: TaskState) -> bool:
        done = True
        for listener in self.on_task:
            try:
                await listener(record, index, state)
            except ServiceError as exc:
                log.warning(
                    "job task listener failed",
                    extra={"job_id": record.id, "task": index, "error": exc.message},
                )
                done = False
            except Exception:
                log.exception("job task listener failed", extra={"job_id": record.id})
        return done

    async def _watch(self, run: _Run) -> None:
        """Renew the entry (our claim on the job) and notice a cancel request."""
        next_renew = time.monotonic() + self._renew_every_s
        renewed_at = time.monotonic()
        while True:
            await asyncio.sleep(CANCEL_POLL_S)
            try:
                if not run.canceling and await self._store.cancel_requested(run.record.id):
                    log.info("job cancel requested", extra={"job_id": run.record.id})
                    run.canceling = True
                    run.stop()
                if time.monotonic() >= next_renew:
                    if not await self._store.renew(self.consumer, run.entry):
                        run.lost = True
                        run.stop()
                        return
                    renewed_at = time.monotonic()
                    next_renew = renewed_at + self._renew_every_s
            except ServiceError:
                if time.monotonic() - renewed_at > self._claim_idle_ms / 1000:
                    run.lost = True  # another replica may run it by now: stop writing
                    run.stop()
                    return

    # -- one task -------------------------------------------------------------------------

    async def _task(self, run: _Run, task: TaskRequest) -> None:
        try:
            async with self._capacity:
                if run.canceling or run.lost:
                    return
                self.running_tasks += 1
                try:
                    outcome = await self._outcome(run, task)
                finally:
                    self.running_tasks -= 1
            if outcome is None:
                return
            state = run.states[task.index].with_outcome(outcome)
            await self._write(run, task.index, state)
        except asyncio.CancelledError:
            if self._closing and not run.canceling and not run.lost:
                await self._requeue(run, task.index)
            raise
        except ServiceError as exc:
            log.warning(
                "job task interrupted",
                extra={"job_id": run.record.id, "task": task.index, "error": exc.message},
            )
        finally:
            run.unfinished -= 1

    async def _outcome(self, run: _Run, task: TaskRequest) -> TaskOutcome | None:
        state = run.states[task.index]
        spec = MODELS[run.record.spec.model_name]
        keep = functools.partial(self._keep_running, run)
        if state.create == CREATED and state.prediction_id:
            return await self._generator.follow(
                run.caller, spec, task, state.prediction_id, keep_running=keep
            )
        if state.create == INFLIGHT:
            found = await self._find_inflight(run, task, state)
            if isinstance(found, TaskOutcome):
                return found
            if found is not None:
                state.prediction_id, state.create = found, CREATED
                await self._write(run, task.index, state, event=True)
                return await self._generator.follow(
                    run.caller, spec, task, found, keep_running=keep
                )
        return await self._create(run, task)

    async def _create(self, run: _Run, task: TaskRequest) -> TaskOutcome | None:
        record = run.record
        spec = MODELS[record.spec.model_name]
        index = task.index
        while True:
            attempted = False

            async def before_create() -> None:
                nonlocal attempted
                if self._closing:
                    raise ShuttingDown("This replica is shutting down; the task stays queued")
                state = run.states[index]
                first = state.status != RUNNING
                state.status, state.create, state.create_at = RUNNING, INFLIGHT, time.time()
                state.attempts += 1
                if not await self._write(run, index, state, event=first):
                    raise JobLost("Another replica took this job over")
                attempted = True

            async def on_created(prediction_id: str) -> None:
                state = run.states[index]
                state.prediction_id, state.create = prediction_id, CREATED
                try:
                    await self._write(run, index, state, event=True)
                except ServiceError as exc:  # resuming finds it by the list instead
                    log.warning("job task id not recorded", extra={"error": exc.message})

            hooks = TaskHooks(
                purpose=f"{JOB_PURPOSE_PREFIX}{record.id} task {index}",
                before_create=before_create,
                on_created=on_created,
                keep_running=functools.partial(self._keep_running, run),
            )
            outcome = await self._generator.run_task(
                run.caller, spec, task, record.spec.semaphore_id, hooks
            )
            error = outcome.error
            if error is None or attempted:
                return outcome
            if isinstance(error, JobLost | ShuttingDown):
                return None
            if not isinstance(error, LimitTimeout | Unavailable):
                return outcome
            # Nothing was created: a job waits as long as it takes.
            await asyncio.sleep(RETRY_WAIT_S + secrets.randbelow(500) / 1000)

    async def _find_inflight(
        self, run: _Run, task: TaskRequest, state: TaskState
    ) -> str | TaskOutcome | None:
        """The prediction a dead runner's create may have made: its id, None when it was never
        created, or the task's failed outcome when that cannot be known."""
        spec = MODELS[run.record.spec.model_name]
        others = {s.prediction_id for i, s in run.states.items() if i != task.index}
        created_after = (state.create_at or 0.0) - CLOCK_SKEW_S
        transit_until = time.monotonic() + CREATE_TRANSIT_S
        give_up = time.monotonic() + LIST_RETRY_S
        while True:
            found = await self._upstream.find_predictions(
                run.caller.token,
                spec.ref,
                task.replicate_input,
                created_after_epoch_s=created_after,
            )
            if found is not None:
                fresh = [pid for pid, _ in found if pid not in others and pid not in run.claimed]
                if fresh:
                    pid = fresh[-1]  # newest first: the oldest is the first create
                    run.claimed.add(pid)
                    return pid
                if time.monotonic() >= transit_until:
                    return None
            elif time.monotonic() >= give_up:
                error = UpstreamError(
                    "The replica running this task died while creating its prediction, and "
                    "Replicate's prediction list could not be read to find it; not retried, "
                    "to avoid a duplicate"
                )
                return TaskOutcome(task.index, task.prompt, task.output_filename, error=error)
            await asyncio.sleep(RETRY_WAIT_S)

    async def _keep_running(self, run: _Run) -> bool:
        """A task interrupted with its prediction running leaves it running, for the job's next
        runner to follow by id, when this replica shuts down or another runner has taken the
        job over (this one froze or was cut off; the slot's adopter keeps the slot until the
        prediction ends). Never when the job is being cancelled; and when Redis cannot say,
        the prediction is cancelled (the safe side for every limit)."""
        if run.canceling:
            return False
        if self._closing or run.lost:
            return True
        return await self._store.taken_over(run.record.id, run.epoch)

    async def _requeue(self, run: _Run, index: int) -> None:
        """Shutdown stopped this task: queued again, unless its prediction was created (or its
        create was under way), which the next runner follows by id (or finds)."""
        state = run.states[index]
        if state.terminal or state.create in (CREATED, INFLIGHT):
            return
        fresh = TaskState(attempts=state.attempts)
        with contextlib.suppress(Exception):
            await asyncio.shield(self._write(run, index, fresh, event=True))

    async def _write(self, run: _Run, index: int, state: TaskState, *, event: bool = True) -> bool:
        record = run.record
        run.states[index] = state
        view = None
        if event:
            request = next((t for t in record.spec.tasks if t.index == index), None)
            view = {"type": "task", **task_view(index, state, request)}
        written = await self._store.update_task(
            record.id, run.epoch, index, state, view, len(record.spec.tasks)
        )
        if not written:
            run.lost = True
            return False
        if state.terminal and not await self._notify_task(record, index, state):
            run.hooks_owed = True  # queued again at the job's end
        return True

    def _caller(self, record: JobRecord) -> Caller | None:
        """Who pays for the job's predictions, from what this replica holds: the server's
        token (admin and environment tiers) or the caller's, sealed in the job."""
        tier = record.get("tier") or ""
        owner = record.get("owner") or ""
        token: str | None = None
        if tier in ("admin", "environment"):
            server = self._settings.replicate_api_token
            token = server.get_secret_value() if server else None
        else:
            sealed = record.get("sealed_token")
            token = self._sealer.open(sealed) if sealed else None
        if not token or token_fingerprint(token) != owner:
            return None
        return Caller(account=owner, tier=tier, is_admin=tier == "admin", token=token)


_NO_CALLER = Caller(account="", tier="", is_admin=False, token="")

__all__ = ["QUEUED", "JobRunner"]
