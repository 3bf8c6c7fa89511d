"""One pub/sub connection per process that wakes exactly the waiters a release entitles.

Release scripts publish the ids of the queue heads that may now take a slot; this dispatcher sets
the local event of each id it knows. Pub/sub can lose messages (a dropped connection, a restart),
so no waiter relies on it: every wait is also bounded by a poll (see Semaphores.acquire). After a
reconnect every local waiter is woken once to re-check, since messages may have been missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import redis.asyncio as aioredis

from .tasks import stop_task

log = logging.getLogger("service.coordination.wake")


class WakeDispatcher:
    def __init__(self, client: aioredis.Redis, pattern: str) -> None:
        self._client = client
        self._pattern = pattern
        self._events: dict[str, asyncio.Event] = {}
        self._task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        self.reconnects = 0

    @property
    def connected(self) -> bool:
        return self._subscribed.is_set()

    def register(self, waiter_id: str) -> asyncio.Event:
        event = asyncio.Event()
        self._events[waiter_id] = event
        return event

    def unregister(self, waiter_id: str) -> None:
        self._events.pop(waiter_id, None)

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

    async def _run(self) -> None:
        backoff_s = 0.05
        while True:
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.psubscribe(self._pattern)
                self._subscribed.set()
                if self.reconnects:
                    self.wake_all()
                backoff_s = 0.05
                while True:
                    # A bounded read lets redis-py send its health-check PINGs, so a silently
                    # dead connection is noticed too.
                    message = await pubsub.get_message(timeout=1.0)
                    if message is None:
                        continue
                    data = message.get("data")
                    if isinstance(data, bytes):
                        data = data.decode()
                    if isinstance(data, str):
                        for waiter_id in data.split():
                            event = self._events.get(waiter_id)
                            if event is not None:
                                event.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._subscribed.clear()
                self.reconnects += 1
                log.warning(
                    "wake subscription lost; waiters fall back to polling",
                    extra={"error": type(exc).__name__},
                )
                self.wake_all()
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, 2.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
