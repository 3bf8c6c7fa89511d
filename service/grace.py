"""The data-loss grace, made visible: one log line at start, and answers that say so.

Redis holds every lease. If a node restarts empty (no AOF, a lost volume), or a failover
promotes a replica that missed writes, while replicas run, the leases are gone but their
holders still run: admitting newcomers at once would exceed every limit. So the coordination
library holds new admissions on that node back until one lease TTL after it changed, while
surviving holders re-assert their leases at their next renewal (docs/redis-ha.md, "Per-node
loss detection"): a semaphore that finds itself on another node opens that grace itself, and
one (a global one, or an account's concurrency semaphore) created on a node that is still
young (`<prefix>:epoch` missing and the node started less than one TTL ago, a node identity no
replica had seen, or the epoch changed under a running replica) gets `grace_until` = the end
of that youth and admits nobody before then.

On a brand-new deployment nothing can hold a lease yet, and the first generations wait up to
one TTL (30 s by default) for nothing. Timeline, TTL 30 s, a new Redis volume:

    t=0    redis starts; t=2 a replica starts: no epoch key, Redis 2 s old → suspect until
           t=30 (the rest of Redis' first TTL); logged once by `announce`
    t=5    the first generation: its account's semaphore is created with grace until t=30;
           it waits, holding nothing, and is admitted at t=30: its answer carries
           `X-Limit-Scope: grace` and `X-Limit-Grace-Waited-Seconds: 25.0`
    t=6    a lease request with timeout_s=5 times out at t=11: 429, `X-Limit-Scope: grace`,
           `Retry-After: 19`, and a message saying why and how an operator skips it

Skipping it, on a brand-new store and before the first replica starts (never on a Redis that
restarted empty under running replicas: that is what the grace is for):
`redis-cli SET <prefix>:epoch new`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.coordination import (
    GLOBAL,
    AcquireTimeout,
    CoordinationError,
    Coordinator,
    SemaphoreNotFound,
)
from service.errors import LimitTimeout
from service.fingerprint import ACCOUNT

log = logging.getLogger("service.grace")

SCOPE = "grace"  # X-Limit-Scope / limit_scope of answers the grace delayed or refused
WAITED_HEADER = "X-Limit-Grace-Waited-Seconds"
# A wait shorter than this is not worth a header: the grace ended as the request arrived.
NOTICEABLE_S = 0.05

_WHY = (
    "Redis started less than one lease TTL ago with an empty store (or a Redis node restarted "
    "or failed over and may have lost data), so replicas that held slots before may still be "
    "running: new admissions wait until one lease TTL (LEASE_TTL_SECONDS) after that, while "
    "they re-assert their leases"
)


def skip_command(prefix: str) -> str:
    return f"redis-cli SET {prefix}:epoch new"


def _iso(unix_s: float) -> str:
    return datetime.fromtimestamp(unix_s, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def announce(coordinator: Coordinator) -> float | None:
    """Log once, at start, that the grace runs and when it ends at the latest (returned, Unix
    time); None, and nothing logged, when this process suspects no data loss."""
    suspected_s = coordinator.loss_suspected_until - time.monotonic()
    if suspected_s <= 0:
        return None
    ttl_s = coordinator.lease_ttl_s
    first_use_by = time.time() + suspected_s
    ends_by = first_use_by + ttl_s
    prefix = coordinator.prefix
    log.warning(
        "data-loss grace: %s. Each semaphore and account first used before %s admits nobody "
        "until then (%g s at most from that first use), so the first generations wait; over "
        "by %s at the latest. A brand-new deployment (nothing can hold a lease yet) skips it "
        "with `%s` before its first replica starts (README: The first five minutes)",
        _WHY,
        _iso(first_use_by),
        ttl_s,
        _iso(ends_by),
        skip_command(prefix),
        extra={"grace_ends_by": _iso(ends_by), "lease_ttl_s": ttl_s},
    )
    return ends_by


@dataclass
class GraceNote:
    """What the grace did to one HTTP request (filled by GraceWatch, read by GraceHeaders)."""

    waited_s: float = 0.0


# Set per request by GraceHeaders; the request's tasks (a batch's too) share the one note.
_current_note: ContextVar[GraceNote | None] = ContextVar("grace_note", default=None)


class GraceWatch:
    """How long the grace of the semaphores one acquisition needs still runs.

    Redis is asked only while this process suspects a data loss (and one TTL after, as long as
    a semaphore created then may keep its grace) and after an acquisition timed out; at any
    other time `remaining_s` costs nothing. A generation's acquisition asks only if it waits
    (`probe`)."""

    def __init__(self, coordinator: Coordinator) -> None:
        self._coordinator = coordinator

    def _may_run(self) -> bool:
        coordinator = self._coordinator
        return time.monotonic() < coordinator.loss_suspected_until + coordinator.lease_ttl_s

    async def remaining_s(self, needs: Sequence[tuple[str, str]], *, always: bool = False) -> float:
        """Seconds until the grace of every (kind, semaphore id) in `needs` is over (0: none)."""
        if not needs or not (always or self._may_run()):
            return 0.0
        left_s = 0.0
        for kind, semaphore_id in needs:
            try:
                view = await self._coordinator.registry.view(semaphore_id, kind)
            except SemaphoreNotFound:
                # The acquisition creates an account's (or a declared) semaphore, with a grace
                # while a data loss is suspected; a registered one that is missing is a 404.
                creates = kind == ACCOUNT or semaphore_id in self._coordinator.config.declared
                if creates:
                    grace_ms = self._coordinator.grace_ms_for(kind, semaphore_id)
                    left_s = max(left_s, grace_ms / 1000)
            except CoordinationError:
                return 0.0  # the acquisition itself says what is wrong
            else:
                left_s = max(left_s, view.grace_remaining_s)
        return left_s

    def probe(self, account: str, semaphore_id: str | None) -> GraceProbe:
        """The grace left on what one prediction needs when its acquisition starts (now), read
        only if that acquisition is still waiting after PROBE_AFTER_S: a faster one cannot have
        been held back noticeably, and pays nothing."""
        return GraceProbe(self, account, semaphore_id)

    async def _refresh_epoch(self) -> None:
        with contextlib.suppress(CoordinationError):
            # A data loss the renewer has not seen yet (it reads the epoch every TTL/3; this
            # reads it at most once a second): the acquisition would find it itself.
            await self._coordinator.refresh_epoch()

    async def refusal(self, exc: AcquireTimeout) -> LimitTimeout | None:
        """The answer to a timeout the grace caused (None: the limit was simply full)."""
        kind = {"semaphore": GLOBAL, "account_concurrency": ACCOUNT}.get(exc.scope)
        if kind is None:
            return None
        left_s = await self.remaining_s([(kind, exc.limit_id)], always=True)
        if left_s <= 0:
            return None
        what = (
            f"external semaphore '{exc.limit_id}'"
            if kind == GLOBAL
            else "the account's concurrency limit"
        )
        prefix = self._coordinator.prefix
        return LimitTimeout(
            f"Timed out after {exc.waited_s:.1f}s waiting for {what}: held back by the "
            f"data-loss grace, which ends in {max(1, math.ceil(left_s))}s. {_WHY}. On a "
            f"brand-new deployment an operator skips it with `{skip_command(prefix)}` before "
            "the first replica starts",
            scope=SCOPE,
            limit_id=exc.limit_id if kind == GLOBAL else "account",
            retry_after_s=left_s,
        )

    def delayed(self, grace_s: float, waited_s: float, semaphore_id: str | None) -> None:
        """An acquisition admitted after waiting while the grace ran: logged, and noted for
        the answer's headers (when it serves an HTTP request)."""
        held_back_s = min(grace_s, waited_s)
        if held_back_s < NOTICEABLE_S:
            return
        log.info(
            "admission delayed %.1f s by the data-loss grace",
            held_back_s,
            extra={"semaphore_id": semaphore_id, "grace_waited_s": round(held_back_s, 1)},
        )
        note = _current_note.get()
        if note is not None:
            note.waited_s = max(note.waited_s, held_back_s)


def _needs(account: str, semaphore_id: str | None) -> list[tuple[str, str]]:
    needs = [(ACCOUNT, account)]
    if semaphore_id is not None:
        needs.append((GLOBAL, semaphore_id))
    return needs


# Half the noticeable wait: a grace that ended before the probe read it held the acquisition
# back for less than NOTICEABLE_S, unless the read itself took longer than this.
PROBE_AFTER_S = NOTICEABLE_S / 2


class GraceProbe:
    """The grace left on what one acquisition needs, as it starts; read in the background only
    once the acquisition has waited PROBE_AFTER_S (most take a millisecond: they pay one timer,
    not a Redis round trip and an epoch check).

    The grace at the start is the grace read later plus the time elapsed until that read; a
    grace that was over by then held the acquisition back for less than NOTICEABLE_S, which
    `GraceWatch.delayed` ignores anyway. Create it inside the running loop, right before the
    acquisition; then `grace_s()` once it is done, or `cancel()` if it failed."""

    def __init__(self, watch: GraceWatch, account: str, semaphore_id: str | None) -> None:
        self._watch = watch
        self._needs = _needs(account, semaphore_id)
        self._started = time.monotonic()
        self._task: asyncio.Task[float] | None = None
        self._timer = asyncio.get_running_loop().call_later(PROBE_AFTER_S, self._start)

    def _start(self) -> None:
        self._task = asyncio.create_task(self._read())
        self._task.add_done_callback(_retrieve)

    async def _read(self) -> float:
        await self._watch._refresh_epoch()
        read_at = time.monotonic()
        left_s = await self._watch.remaining_s(self._needs)
        return left_s + (read_at - self._started) if left_s > 0 else 0.0

    async def grace_s(self) -> float:
        """The grace left at the start (0: none, or the acquisition was quick)."""
        self._timer.cancel()
        if self._task is None:
            return 0.0
        return await self._task

    def cancel(self) -> None:
        self._timer.cancel()
        if self._task is not None:
            self._task.cancel()


def _retrieve(task: asyncio.Task[float]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("data-loss grace: reading it failed", exc_info=task.exception())


class GraceHeaders:
    """Pure ASGI: an answer that a grace delayed says so, with `X-Limit-Scope: grace` (unless
    it names another limit) and `X-Limit-Grace-Waited-Seconds`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        note = GraceNote()
        token = _current_note.set(note)

        async def send_noted(message: Message) -> None:
            if message["type"] == "http.response.start" and note.waited_s > 0:
                headers = MutableHeaders(scope=message)
                if "x-limit-scope" not in headers:
                    headers["X-Limit-Scope"] = SCOPE
                headers[WAITED_HEADER] = f"{note.waited_s:.1f}"
            await send(message)

        try:
            await self.app(scope, receive, send_noted)
        finally:
            _current_note.reset(token)
