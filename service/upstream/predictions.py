"""One prediction, from create to a terminal status; cancelled on every other way out.

Timeline of `PredictionRun.execute` (prefer_wait_s=5, poll 1 s, growing 1.5x up to 3 s):

    before_create()  POST /v1/models/o/n/predictions  Prefer: wait=5   (held ≤ 5 s)
                     Cancel-After: 900s   (time left until the run's deadline, rounded up)
      429 → sleep Retry-After → before_create() → POST ...   (≤ create_retries times)
      5xx / not sent → sleep backoff → before_create() → POST ...   (≤ transient_retries)
      < 5 s left before a POST → no POST: UpstreamError "timed out" (Replicate's minimum)
    201 {"id": "abc", "status": "starting"}  → on_running("abc"), on_created("abc")
                     (a create answered already terminal: on_created only)
    sleep 1.0  before_poll()  GET /v1/predictions/abc  processing
    sleep 1.5  before_poll()  GET ...                   processing (output may be there: not done)
    sleep 2.25 before_poll()  GET ...                   succeeded → PredictionResult
    failed / canceled / aborted → PredictionFailed;  deadline passed → cancel + UpstreamError

The invariant a slot holder relies on: when `execute` returns or raises, the prediction is
known terminal, was cancelled, or was never created. Hence (and, should this process die
first, Replicate ends every prediction of the run by itself through `Cancel-After`):
- cancelled while polling → POST /v1/predictions/abc/cancel (shielded, bounded), then re-raise;
- cancelled during the create hold (id unknown yet) → let the create finish (shielded), cancel
  the id it returns, then re-raise;
- any other error after the id is known (hook failed, deadline, lost track) → cancel, re-raise.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic.v1 import ValidationError as ClientValidationError
from replicate.client import Client
from replicate.exceptions import ReplicateError

from service.aio import settle
from service.errors import UpstreamError, UpstreamThrottled
from service.upstream.arrivals import Arrivals
from service.upstream.deadline import cancel_after_s, cancel_after_scope
from service.upstream.exchange import exchange_scope
from service.upstream.policy import (
    Throttled,
    Transient,
    backoff_s,
    classify_by_id,
    classify_create,
    throttle_delay_s,
)
from service.upstream.results import KNOWN_STATUSES, PredictionResult, Snapshot, to_result

logger = logging.getLogger("service.upstream")

Hook = Callable[[], Awaitable[None]]
CreatedHook = Callable[[str], Awaitable[None]]
# Asked when a run is interrupted with its prediction still running: True leaves it running
# (someone else continues it: a durable job resumed on another replica) instead of cancelling.
KeepRunning = Callable[[], Awaitable[bool]]
KEEP_RUNNING_ASK_S = 2.0  # an answer not in by then: cancel (the safe side for every limit)

# How long a create may still take once we were cancelled: the Prefer-wait hold + 0.5 s read
# slack, plus the client's 5 s connect and 5 s pool timeouts.
_CREATE_SLACK_S = 11.0


@dataclass(frozen=True)
class Tuning:
    """The numbers (and injectable time) behind retries, polling and deadlines."""

    prefer_wait_s: int = 5
    create_retries: int = 5
    transient_retries: int = 4
    poll_interval_s: float = 1.0
    max_poll_interval_s: float = 3.0
    prediction_timeout_s: float = 900.0
    backoff_base_s: float = 0.2
    backoff_cap_s: float = 5.0
    max_throttle_wait_s: float = 60.0
    cancel_timeout_s: float = 5.0
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    clock: Callable[[], float] = time.monotonic
    rng: random.Random = field(default_factory=random.Random)
    # Replicate webhooks in (PUBLIC_BASE_URL): creates of this account carry this webhook, and
    # a poll's wait ends early when one brings the prediction (service.upstream.arrivals).
    webhook_url: str | None = None
    webhook_account: str | None = None
    arrivals: Arrivals | None = None


class PredictionRun:
    """Create one prediction and follow it to a terminal status (see the module timeline)."""

    def __init__(
        self,
        client: Client,
        model: str,
        replicate_input: dict[str, Any],
        tuning: Tuning,
        *,
        account: str,
        before_create: Hook | None = None,
        before_poll: Hook | None = None,
        on_created: CreatedHook | None = None,
        on_running: CreatedHook | None = None,
        keep_running: KeepRunning | None = None,
    ) -> None:
        self._client = client
        self._keep_running = keep_running
        self._model = model
        self._input = replicate_input
        self._t = tuning
        self._clock = tuning.clock
        self._before_create = before_create
        self._before_poll = before_poll
        self._on_created = on_created
        # Told the id only when the create's answer left the prediction running (what matters
        # only while it runs: the slots' records, which an adopter cancels by).
        self._on_running = on_running
        self._announced = False  # on_created (and on_running) called with the id
        self._deadline = tuning.clock() + tuning.prediction_timeout_s
        self._interval_s = tuning.poll_interval_s
        self._account = account
        self.prediction_id: str | None = None
        self.terminal = False

    async def execute(self) -> PredictionResult:
        try:
            snapshot = await self._create()
            await self._announce()
            while not snapshot.terminal:
                snapshot = await self._poll()
            return to_result(snapshot)
        except BaseException as exc:
            await self._interrupted(exc)
            raise

    async def settle(self, prediction_id: str, *, cancel: bool) -> str:
        """Follow a prediction created elsewhere (an orphan another replica adopted, see
        docs/slot-ownership.md) to a terminal status, cancelling it first when asked. Returns
        that status; raises a ServiceError when it cannot be learned before the deadline."""
        self.prediction_id = prediction_id
        self._interval_s = 0.0  # the first read at once
        snapshot = await self._poll()
        self._interval_s = self._t.poll_interval_s
        if not snapshot.terminal and cancel:
            await self._cancel(reason="orphan")
            if self.terminal:
                return "canceled"
        while not snapshot.terminal:
            snapshot = await self._poll()
        return snapshot.status

    async def follow(self, prediction_id: str) -> PredictionResult:
        """Poll a prediction created elsewhere (a durable job resumed on another replica) to its
        result. Cancelled while following → the prediction is cancelled, then re-raised."""
        self.prediction_id = prediction_id
        self._interval_s = 0.0  # the first read at once
        try:
            snapshot = await self._poll()
            self._interval_s = self._t.poll_interval_s
            while not snapshot.terminal:
                snapshot = await self._poll()
        except BaseException as exc:
            await self._interrupted(exc)
            raise
        return to_result(snapshot)

    async def _announce(self) -> None:
        """Tell the prediction's id, once: to on_running (unless it is terminal), then to
        on_created."""
        if self._announced or self.prediction_id is None:
            return
        self._announced = True
        if self._on_running is not None and not self.terminal:
            await self._on_running(self.prediction_id)
        if self._on_created is not None:
            await self._on_created(self.prediction_id)

    async def _interrupted(self, exc: BaseException) -> None:
        """The run ends early: its prediction, if still running, is cancelled — unless whoever
        started the run continues it elsewhere (`keep_running`). Each step is bounded and
        finished even if we are cancelled again meanwhile (that cancellation is re-raised at
        the end): a cancel that a second cancellation cut short would leave the prediction
        running outside every limit."""
        if self.prediction_id is None or self.terminal:
            return
        # A create answered in the instant we were interrupted: its id is still news to the
        # caller (a durable job records it, cancelled or left running alike).
        told = await settle(asyncio.ensure_future(self._announce()), KEEP_RUNNING_ASK_S)
        if told.error is not None:
            self._log(
                logging.WARNING, "on_created failed after an interruption", error=repr(told.error)
            )
        interrupted = told.interrupted
        keep = False
        if self._keep_running is not None:
            asked = await settle(asyncio.ensure_future(self._keep_running()), KEEP_RUNNING_ASK_S)
            if asked.error is not None or not asked.finished:
                self._log(logging.WARNING, "keep-running check failed", error=repr(asked.error))
            keep, interrupted = asked.result is True, interrupted or asked.interrupted
        if keep:
            self._log(logging.INFO, "run interrupted: prediction left running")
        else:
            await self._cancel(reason=type(exc).__name__)
        if interrupted:
            raise asyncio.CancelledError

    # -- create ---------------------------------------------------------------------------

    async def _create(self) -> Snapshot:
        throttles = failures = 0
        while True:
            self._cancel_after_s()  # no time left for a prediction: take no rate-window token
            if self._before_create is not None:
                await self._before_create()
            try:
                snapshot = await self._create_once(self._cancel_after_s())
            except Throttled as exc:
                delay = throttle_delay_s(
                    exc.retry_after_s, throttles, cap_s=self._t.max_throttle_wait_s, rng=self._t.rng
                )
                retry_after = exc.retry_after_s if exc.retry_after_s is not None else delay
                if (
                    throttles >= self._t.create_retries
                    or delay > self._t.max_throttle_wait_s
                    or self._clock() + delay > self._deadline
                ):
                    self._log(logging.WARNING, "create throttled: giving up", retry_after_s=delay)
                    raise UpstreamThrottled(
                        f"Replicate is throttling prediction creation for this account "
                        f"(HTTP 429 after {throttles + 1} attempts)",
                        retry_after_s=retry_after,
                    ) from None
                throttles += 1
                self._log(
                    logging.INFO,
                    "create throttled: retrying",
                    attempt=throttles,
                    retry_after_s=round(delay, 3),
                )
                await self._t.sleep(delay)
                continue
            except Transient as exc:
                if failures >= self._t.transient_retries:
                    raise UpstreamError(
                        f"Replicate is unavailable ({exc.reason} after {failures + 1} attempts)"
                    ) from None
                delay = self._backoff(failures)
                failures += 1
                self._log(
                    logging.INFO,
                    "create failed: retrying",
                    attempt=failures,
                    reason=exc.reason,
                    delay_s=round(delay, 3),
                )
                await self._sleep_within_deadline(delay)
                continue
            self._observe(snapshot)
            self._log(logging.INFO, "prediction created", status=snapshot.status)
            return snapshot

    async def _create_once(self, cancel_after: int) -> Snapshot:
        """One POST, shielded: if we are cancelled during the hold, it ends and we learn the id."""
        task = asyncio.create_task(self._post(cancel_after))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.cancelled():
                raise
            settled = await settle(task, self._t.prefer_wait_s + _CREATE_SLACK_S)
            if settled.result is not None:
                self._note(settled.result)  # execute() cancels it on the way out
            elif not settled.finished:
                self._log(
                    logging.ERROR,
                    "create still unanswered after cancellation: a prediction may be left running",
                )
            raise

    async def _post(self, cancel_after: int) -> Snapshot:
        with exchange_scope() as exchange, cancel_after_scope(cancel_after):
            try:
                prediction = await self._client.models.predictions.async_create(
                    model=self._model,
                    input=self._input,
                    wait=self._t.prefer_wait_s,
                    **self._webhook(),
                )
            except ClientValidationError:
                # The client's model knows five statuses; "aborted" (or a new field) lands here.
                snapshot = Snapshot.from_json(exchange.json())
                if snapshot is None:
                    raise UpstreamError(
                        "Replicate answered the create with an unreadable prediction"
                    ) from None
                return snapshot
            except Exception as exc:
                raise classify_create(exc, exchange, self._model) from _chain(exc)
            return Snapshot.from_prediction(prediction)

    # -- poll -----------------------------------------------------------------------------

    async def _poll(self) -> Snapshot:
        pid = self._id()
        delay = self._interval_s
        self._interval_s = min(self._interval_s * 1.5, self._t.max_poll_interval_s)
        failures = throttles = 0
        while True:
            arrived = await self._wait_for_news(pid, delay)
            if arrived is not None:
                self._observe(arrived)
                return arrived
            if self._before_poll is not None:
                await self._before_poll()
            try:
                async with asyncio.timeout(max(0.0, self._deadline - self._clock())):
                    snapshot = await self._get_once(pid)
            except TimeoutError:
                raise self._timed_out() from None
            except Throttled as exc:
                delay = throttle_delay_s(
                    exc.retry_after_s, throttles, cap_s=self._t.max_throttle_wait_s, rng=self._t.rng
                )
                throttles += 1
                self._log(
                    logging.INFO, "poll throttled: backing off", retry_after_s=round(delay, 3)
                )
                continue
            except Transient as exc:
                if failures >= self._t.transient_retries:
                    raise UpstreamError(
                        f"Lost track of prediction {pid}: {exc.reason} "
                        f"after {failures + 1} attempts",
                        fields={"prediction_id": pid},
                    ) from None
                delay = self._backoff(failures)
                failures += 1
                self._log(
                    logging.INFO, "poll failed: retrying", attempt=failures, reason=exc.reason
                )
                continue
            self._observe(snapshot)
            return snapshot

    async def _get_once(self, pid: str) -> Snapshot:
        with exchange_scope() as exchange:
            try:
                prediction = await self._client.predictions.async_get(pid)
            except ClientValidationError:
                snapshot = Snapshot.from_json(exchange.json())
                if snapshot is None:
                    raise UpstreamError(
                        f"Replicate answered with an unreadable prediction {pid}",
                        fields={"prediction_id": pid},
                    ) from None
                return snapshot
            except Exception as exc:
                raise classify_by_id(exc, exchange, pid) from _chain(exc)
            return Snapshot.from_prediction(prediction)

    def _webhook(self) -> dict[str, Any]:
        t = self._t
        if t.webhook_url is None or t.webhook_account != self._account:
            return {}
        return {"webhook": t.webhook_url, "webhook_events_filter": ["completed"]}

    async def _wait_for_news(self, pid: str, delay_s: float) -> Snapshot | None:
        """Sleep `delay_s` before the next poll, unless a webhook brings the prediction ended
        (then its snapshot: no poll needed)."""
        arrivals = self._t.arrivals
        remaining = self._deadline - self._clock()
        if arrivals is None or remaining <= 0 or delay_s > remaining:
            await self._sleep_within_deadline(delay_s)
            return None
        data = await arrivals.wait(pid, delay_s)
        snapshot = Snapshot.from_json(data) if data is not None else None
        return snapshot if snapshot is not None and snapshot.terminal else None

    # -- cancel ---------------------------------------------------------------------------

    async def _cancel(self, *, reason: str) -> None:
        """Cancel by id, shielded from our own cancellation and bounded by cancel_timeout_s."""
        task = asyncio.create_task(self._cancel_with_retries())
        settled = await settle(task, self._t.cancel_timeout_s)
        if not settled.finished:
            self._log(logging.ERROR, "cancel did not finish in time", reason=reason)
        elif settled.error is not None:
            self._log(logging.ERROR, "cancel failed", reason=f"{reason}: {settled.error!r}")
        if settled.interrupted:
            raise asyncio.CancelledError

    async def _cancel_with_retries(self) -> None:
        pid = self._id()
        for attempt in range(self._t.transient_retries + 1):
            with exchange_scope() as exchange:
                try:
                    prediction = await self._client.predictions.async_cancel(pid)
                    status = str(prediction.status)
                except ClientValidationError:
                    snapshot = Snapshot.from_json(exchange.json())
                    status = snapshot.status if snapshot else "unknown"
                except Exception as exc:
                    error = classify_by_id(exc, exchange, pid)
                    if (
                        isinstance(error, Throttled | Transient)
                        and attempt < self._t.transient_retries
                    ):
                        if isinstance(error, Throttled):
                            delay = min(error.retry_after_s or 1.0, self._t.backoff_cap_s)
                        else:
                            delay = self._backoff(attempt)
                        await self._t.sleep(delay)
                        continue
                    self._log(logging.WARNING, "cancel failed", reason=str(error))
                    return
            self.terminal = True
            self._log(logging.INFO, "prediction cancelled", status=status)
            return

    # -- helpers --------------------------------------------------------------------------

    def _note(self, snapshot: Snapshot) -> None:
        self.prediction_id = snapshot.prediction_id
        self.terminal = snapshot.terminal

    def _observe(self, snapshot: Snapshot) -> None:
        self._note(snapshot)
        if snapshot.status not in KNOWN_STATUSES:
            raise UpstreamError(
                f"Prediction {snapshot.prediction_id} has an unknown status {snapshot.status!r}",
                fields={"prediction_id": snapshot.prediction_id},
            )

    def _cancel_after_s(self) -> int:
        """`Cancel-After` for the next create: the time left until the run's deadline, rounded
        up, so every prediction of the run (retries too) ends at Replicate by then, even if no
        cancel of ours ever arrives. Rounded up, not down: the run's own deadline fires first,
        so its cancel and its timeout error stay the normal path; Replicate's is the backstop.
        Under Replicate's 5 s minimum there is no time for a prediction: the run times out."""
        seconds = cancel_after_s(self._deadline - self._clock())
        if seconds is None:
            raise self._timed_out()
        return seconds

    def _id(self) -> str:
        if self.prediction_id is None:  # pragma: no cover - guarded by the call order
            raise RuntimeError("no prediction id yet")
        return self.prediction_id

    def _backoff(self, attempt: int) -> float:
        return backoff_s(
            attempt, base_s=self._t.backoff_base_s, cap_s=self._t.backoff_cap_s, rng=self._t.rng
        )

    async def _sleep_within_deadline(self, delay_s: float) -> None:
        remaining = self._deadline - self._clock()
        if remaining <= 0 or delay_s > remaining:
            if delay_s > remaining > 0:
                await self._t.sleep(remaining)
            raise self._timed_out()
        await self._t.sleep(delay_s)

    def _timed_out(self) -> UpstreamError:
        timeout = self._t.prediction_timeout_s
        if self.prediction_id is None:
            return UpstreamError(f"Creating the prediction timed out after {timeout:g} s")
        self._log(logging.WARNING, "prediction timed out")
        return UpstreamError(
            f"Prediction {self.prediction_id} timed out after {timeout:g} s; cancelling it",
            fields={"prediction_id": self.prediction_id},
        )

    def _log(self, level: int, event: str, **fields: Any) -> None:
        if not logger.isEnabledFor(level):
            return
        extra = {
            "event": event,
            "model": self._model,
            "account": self._account,
            "prediction_id": self.prediction_id,
            **fields,
        }
        logger.log(level, event, extra=extra)


def _chain(exc: Exception) -> BaseException | None:
    """Keep ReplicateError as the cause; drop httpx errors (they hold the request and its token)."""
    return exc if isinstance(exc, ReplicateError) else None
