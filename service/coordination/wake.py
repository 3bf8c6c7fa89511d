"""One pub/sub connection per process that delivers grants to its waiters and wakes them.

Its part in the grant protocol (described once, with a timeline, in semaphore.py): it
subscribes to two patterns,

    rcg:{*}:wake:<token>   grants to this process's waiters (the format: grant_heads in
                           redis_scripts/lib/semaphore.lua)
    rcg:{*}:wake           plain wake-ups, "<id> <id> ...": a semaphore was deleted

and `handle` reads each message, or a grant that a release by this process returned in its
reply instead: a grant sets the waiter's event and leaves its details for Semaphores.acquire
(`take_grant`). After a reconnect every local waiter is woken once to re-check, since messages
may have been missed. The connection is kept by `subscriber.stay_subscribed` (reconnecting
with a backoff) and read by `subscriber.Subscription`, which hands each message to `handle` in
the callback that received it, and PINGs it every HEALTH_CHECK_S to notice a connection that
died without a word.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from dataclasses import dataclass

from service.aio import stop_task

from .subscriber import HEALTH_CHECK_S, SUBSCRIBE_TIMEOUT_S, SubscriptionSource, stay_subscribed

log = logging.getLogger("service.coordination.wake")


@dataclass(frozen=True)
class Grant:
    """A slot a release gave to a waiter, as announced (Redis server times, ms)."""

    granted_at_ms: int
    expires_at_ms: int
    epoch: str
    limit: int

    @property
    def valid_s(self) -> float:
        """How long the grant lasts from the moment it was made."""
        return (self.expires_at_ms - self.granted_at_ms) / 1000


class Wake:
    """One waiter's wake-up (a single waiter at a time): like asyncio.Event, but `wait` takes a
    timeout and `set` resolves the waiter's future directly, so the waiter resumes in the next
    event-loop iteration. (On Python 3.11, asyncio.wait_for(event.wait(), t) runs the wait in a
    task of its own and resumes the waiter two iterations later: on a handoff's critical path.)"""

    def __init__(self) -> None:
        self._set = False
        self._future: asyncio.Future[None] | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True
        if self._future is not None and not self._future.done():
            self._future.set_result(None)

    def clear(self) -> None:
        self._set = False

    async def wait(self, timeout_s: float) -> bool:
        """True once set, False after `timeout_s`."""
        if self._set:
            return True
        loop = asyncio.get_running_loop()
        future = self._future = loop.create_future()
        timer = loop.call_later(timeout_s, _time_up, future)
        try:
            await future
        finally:
            timer.cancel()
            if self._future is future:
                self._future = None
        return self._set


def _time_up(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class WakeDispatcher:
    def __init__(self, source: SubscriptionSource, pattern: str) -> None:
        """`source`: where the subscription connects (connection.build_clients says where for
        each kind of deployment)."""
        self._source = source
        self._pattern = pattern
        self.token = secrets.token_hex(4)
        self._events: dict[str, Wake] = {}
        self._grants: dict[str, Grant] = {}
        self._task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        self.reconnects = 0
        self.messages = 0
        self.local_grants = 0
        self.grants_received = 0

    @property
    def connected(self) -> bool:
        return self._subscribed.is_set()

    @property
    def patterns(self) -> list[str]:
        return [self._pattern, f"{self._pattern}:{self.token}"]

    def new_waiter_id(self) -> str:
        """A lease id whose grants are announced to this process only."""
        return f"{secrets.token_hex(12)}-{self.token}"

    def register(self, waiter_id: str) -> Wake:
        event = Wake()
        self._events[waiter_id] = event
        return event

    def unregister(self, waiter_id: str) -> None:
        self._events.pop(waiter_id, None)
        self._grants.pop(waiter_id, None)

    def take_grant(self, waiter_id: str) -> Grant | None:
        return self._grants.pop(waiter_id, None)

    async def start(self, wait_s: float = 2.0) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="wake-dispatcher")
        # Not fatal if Redis is down now: waiters poll, and the loop keeps reconnecting.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._subscribed.wait(), wait_s)

    async def close(self) -> None:
        if self._task is not None:
            await stop_task(self._task)
            self._task = None

    def wake_all(self) -> None:
        for event in list(self._events.values()):
            event.set()

    def handle(self, data: str, *, local: bool = False) -> None:
        """One message from either pattern, or (`local`) a grant a release by this process
        returned instead of publishing it."""
        if local:
            self.local_grants += 1
        else:
            self.messages += 1
        words = data.split()
        if words[:1] != ["grant"]:
            for waiter_id in words:
                event = self._events.get(waiter_id)
                if event is not None:
                    event.set()
            return
        try:
            granted_at_ms, limit, epoch = int(words[1]), int(words[2]), words[3]
        except (IndexError, ValueError):
            log.warning("malformed grant message", extra={"grant": data[:200]})
            return
        for item in words[4:]:
            waiter_id, _, expiry = item.rpartition(":")
            if waiter_id in self._events and expiry.isdigit():
                self._grant(waiter_id, Grant(granted_at_ms, int(expiry), epoch, limit))

    def _grant(self, waiter_id: str, grant: Grant) -> None:
        self.grants_received += 1
        self._grants[waiter_id] = grant
        self._events[waiter_id].set()

    def _on_message(self, data: bytes) -> None:
        try:
            self.handle(data.decode())
        except Exception:  # a bug here must not take the subscription down with it
            log.exception("wake message not handled; waiters re-check")
            self.wake_all()

    async def _run(self) -> None:
        await stay_subscribed(
            self._source,
            self.patterns,
            self._on_message,
            on_up=self._on_up,
            on_down=self._on_down,
            timeout_s=SUBSCRIBE_TIMEOUT_S,
            health_check_s=HEALTH_CHECK_S,
        )

    def _on_up(self) -> None:
        self._subscribed.set()
        if self.reconnects:
            self.wake_all()  # messages may have been missed while it was down

    def _on_down(self, error: Exception) -> None:
        self._subscribed.clear()
        self.reconnects += 1
        log.warning(
            "wake subscription lost; waiters fall back to polling",
            extra={"error": type(error).__name__},
        )
        self.wake_all()
