"""Settling orphans: predictions whose replica stopped renewing their slots (it died, froze or
lost Redis) while they may still run at Replicate. See docs/slot-ownership.md.

Redis keeps an orphan's slot taken; a replica waiting on that semaphore learns of it from its
acquire's reply and calls `notice`. The keeper then adopts the orphans (one script call: their
leases become this replica's, renewed like its own) and settles each one:

    prediction id and token known → GET; still running → cancel (no caller can receive its
                                    result any more) → poll until terminal → release the slot
    no id (the holder died while    → find it among the account's newest predictions by model
      its create was held open)       and input; wait until every match is terminal (never
                                      cancel: an identical one may be another caller's) and
                                      the create can no longer land → release
    its holder saw its create's     → keep the slot until the orphan's pin: the create may
      answer never come               still land, later than any lookup could see
    no token to ask with, or no     → keep the slot until the orphan's pin (by then Replicate
      answer from Replicate           has ended the prediction through Cancel-After) → release

If this replica stops meanwhile, it gives back nothing: the adopted lease lapses into an orphan
again and another replica takes over.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from service.aio import Background
from service.coordination import CoordinationError, Coordinator, Orphan
from service.fingerprint import token_fingerprint
from service.sealing import TokenSealer
from service.upstream import Upstream
from service.upstream.results import TERMINAL_STATUSES

log = logging.getLogger("service.orphans")

ADOPT_BATCH = 16
# The purpose in a durable job's slots' records (service.jobs.runner).
JOB_PURPOSE_PREFIX = "job "
# Between a lease's acquisition (its record's clock) and Replicate's created_at.
CLOCK_SKEW_S = 60.0
# How often an adopter re-reads the account's newest predictions for an unnamed orphan.
UNNAMED_POLL_S = 1.0
# After its orphaning (one lease TTL or more after its holder's last renewal), how long a create
# its holder had already written may still take to show up in Replicate's list.
CREATE_TRANSIT_S = 5.0

# Called with (outcome, seconds since the slot was orphaned) when a settled orphan's slot is
# given back; outcome is "cancelled", "ended" (terminal already) or "waited_out".
SettledListener = Callable[[str, float], None]


class OrphanKeeper:
    def __init__(
        self,
        coordinator: Coordinator,
        upstream: Upstream,
        *,
        server_token: str | None,
        sealer: TokenSealer,
    ) -> None:
        self._coordinator = coordinator
        self._upstream = upstream
        self._server_token = server_token
        self._server_account = token_fingerprint(server_token) if server_token else None
        self._sealer = sealer
        self._adopting: set[tuple[str, str]] = set()
        self._tasks = Background("orphan settling")
        self.on_settled: list[SettledListener] = []

    def notice(self, kind: str, semaphore_id: str) -> None:
        """A reply said this semaphore has orphans: adopt them, once at a time per semaphore."""
        key = (kind, semaphore_id)
        if key in self._adopting:
            return
        self._adopting.add(key)
        self._spawn(self._adopt(kind, semaphore_id))

    async def close(self) -> None:
        """Stop settling; adopted leases still unsettled lapse back into orphans."""
        await self._tasks.close()

    async def _adopt(self, kind: str, semaphore_id: str) -> None:
        try:
            orphans = await self._coordinator.adopt_orphans(
                semaphore_id, kind=kind, count=ADOPT_BATCH
            )
        except CoordinationError as exc:
            log.warning("adopting orphans failed", extra={"error": str(exc)})
            return
        finally:
            self._adopting.discard((kind, semaphore_id))
        for orphan in orphans:
            log.warning(
                "adopted an orphaned slot",
                extra={
                    "semaphore_id": semaphore_id,
                    "kind": kind,
                    "prediction_id": orphan.record.get("prediction_id"),
                    "previous_replica": orphan.record.get("replica"),
                    "orphaned_for_s": round(orphan.orphaned_for_s, 3),
                },
            )
            self._spawn(self._settle(orphan))

    async def _settle(self, orphan: Orphan) -> None:
        started = time.monotonic()
        lease = orphan.lease
        try:
            outcome = await self._outcome(orphan)
        except asyncio.CancelledError:
            lease.abandon()  # shutting down: another replica takes it over
            raise
        except Exception:
            log.exception("settling an orphan failed; it is held until its deadline")
            lease.abandon()
            return
        await lease.release()
        waited = orphan.orphaned_for_s + time.monotonic() - started
        log.info(
            "orphaned slot given back",
            extra={"semaphore_id": lease.semaphore_id, "outcome": outcome, "after_s": waited},
        )
        for listener in self.on_settled:
            listener(outcome, waited)

    async def _outcome(self, orphan: Orphan) -> str:
        record = orphan.record
        prediction_id = record.get("prediction_id")
        token = self._token_for(orphan)
        deadline = time.monotonic() + orphan.pin_in_s
        if token is not None and isinstance(prediction_id, str) and prediction_id:
            # A durable job's prediction is followed by the replica that resumes its job
            # (service.jobs): wait for its end, never cancel it.
            job = str(record.get("purpose") or "").startswith(JOB_PURPOSE_PREFIX)
            status = await self._upstream.settle(
                token, prediction_id, cancel=not job, within_s=orphan.pin_in_s
            )
            if status is not None:
                return "ended" if status != "canceled" else "cancelled"
        elif (
            token is not None
            and not record.get("create_unknown")
            and isinstance(record.get("input"), dict)
            and await self._wait_for_unnamed(token, orphan, deadline)
        ):
            return "ended"
        # Nothing to ask Replicate about, or no answer: Replicate ends it by the pin.
        await asyncio.sleep(max(0.0, deadline - time.monotonic()))
        return "waited_out"

    async def _wait_for_unnamed(self, token: str, orphan: Orphan, deadline: float) -> bool:
        """The holder vanished while its create was held open: find the prediction by its model
        and input among the account's newest, and wait until every match is terminal (never
        cancel: an identical prediction may be another caller's, a retry of the same request).
        True once none is running and no create of the holder can still land; False without an
        answer from Replicate.

        No create can land later than a moment after the orphaning: its holder stopped renewing
        a TTL before, and a holder checks its lease (locally, against its last renewal) right
        before every create, so a live one sends none after its lease expired and a dead one
        none at all. (A process frozen in the instant between that check and writing the
        request is the one case this cannot see: docs/slot-ownership.md, assumptions.)"""
        record = orphan.record
        model, replicate_input = str(record.get("model") or ""), record["input"]
        created_after = float(record.get("acquired_at") or 0.0) - CLOCK_SKEW_S
        landed_by = time.monotonic() - orphan.orphaned_for_s + CREATE_TRANSIT_S
        while time.monotonic() < deadline:
            found = await self._upstream.find_predictions(
                token, model, replicate_input, created_after_epoch_s=created_after
            )
            if found is None:
                return False
            running = [pid for pid, status in found if status not in TERMINAL_STATUSES]
            if not running and time.monotonic() >= landed_by:
                return True
            await asyncio.sleep(UNNAMED_POLL_S)
        return False

    def _token_for(self, orphan: Orphan) -> str | None:
        account = orphan.record.get("account")
        if account is not None and account == self._server_account:
            return self._server_token
        sealed = orphan.record.get("sealed_token")
        return self._sealer.open(sealed) if isinstance(sealed, str) else None

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        self._tasks.spawn(work)
