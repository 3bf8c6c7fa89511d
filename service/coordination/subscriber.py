"""A pattern subscription whose messages are handled in the transport's data callback.

A grant message is on the critical path of every contended handoff. redis-py's PubSub hands a
message over through a reader task: the bytes wake the task, the task runs the message through
its retry, parser and dispatch layers, and only then can a waiter be woken. Here the message is
parsed with hiredis and handed to `on_message` in the same callback that received it, so the
waiter runs in the next event-loop iteration. On the benchmark machine, an EVALSHA that
publishes, from an idle process to an idle subscriber (`python -m benchmarks.wake_delivery`,
median of 5 rounds): send → handled p50 0.62 ms with PubSub.get_message, 0.52 ms here; p99 about
0.95 ms both ways (noise).

redis-py still opens the connection, with whatever the URL asks for (AUTH, TLS, a unix socket,
HELLO); its transport is then handed to `_PushProtocol`. A subscribed connection only ever
receives, apart from the PINGs of the health check, which also notice a connection that died
without a word.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import hiredis
from redis.asyncio.connection import ConnectionPool


class SubscriptionLost(ConnectionError):
    pass


class _PushProtocol(asyncio.Protocol):
    def __init__(
        self, transport: asyncio.WriteTransport, patterns: int, on_message: Callable[[bytes], None]
    ) -> None:
        loop = asyncio.get_running_loop()
        self.transport = transport
        self.subscribed: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.last_read = time.monotonic()
        self._reader = hiredis.Reader()
        self._awaiting_confirmations = patterns
        self._on_message = on_message

    def data_received(self, data: bytes) -> None:
        self.last_read = time.monotonic()
        self._reader.feed(data)
        while True:
            try:
                reply: Any = self._reader.gets()
            except hiredis.ProtocolError:
                self.transport.close()
                return
            if reply is False:
                return
            self._handle(reply)

    def _handle(self, reply: Any) -> None:
        # RESP2 and RESP3 (a push) both parse to a list: [b"pmessage", pattern, channel, data].
        if isinstance(reply, list) and reply:
            kind = reply[0]
            if kind == b"pmessage" and len(reply) == 4:
                self._on_message(reply[3])
            elif kind == b"psubscribe":
                self._awaiting_confirmations -= 1
                if self._awaiting_confirmations == 0 and not self.subscribed.done():
                    self.subscribed.set_result(None)
        elif isinstance(reply, hiredis.ReplyError):  # e.g. NOPERM for the patterns
            if not self.subscribed.done():
                self.subscribed.set_exception(SubscriptionLost(f"subscribe refused: {reply}"))
            self.transport.close()

    def eof_received(self) -> bool:
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        for future in (self.subscribed, self.closed):
            if not future.done():
                future.set_exception(SubscriptionLost("subscription connection lost"))
                future.exception()  # nobody need be awaiting it: no "never retrieved" warning


class Subscription:
    def __init__(self, protocol: _PushProtocol, writer: asyncio.StreamWriter) -> None:
        self._protocol = protocol
        # Kept alive: a StreamWriter that is collected closes its transport.
        self._writer = writer

    @classmethod
    async def open(
        cls,
        pool: ConnectionPool,
        patterns: list[str],
        on_message: Callable[[bytes], None],
        timeout_s: float,
    ) -> Subscription:
        """Connect (redis-py's connection, as `pool` would make it) and subscribe to
        `patterns`. Raises redis-py's connection errors, SubscriptionLost or TimeoutError."""
        connection = pool.make_connection()  # type: ignore[no-untyped-call]
        await connection.connect()
        writer = connection._writer
        if writer is None:
            raise SubscriptionLost("connection closed while opening")
        # The transport is ours from here: the connection object must not close it when it is
        # collected (its __del__ closes a writer it still has).
        connection._reader = connection._writer = None
        transport = writer.transport
        protocol = _PushProtocol(transport, len(patterns), on_message)
        transport.set_protocol(protocol)
        # (hiredis's stub types the argument as a 1-tuple)
        transport.write(hiredis.pack_command(("PSUBSCRIBE", *patterns)))  # type: ignore[arg-type]
        try:
            await asyncio.wait_for(protocol.subscribed, timeout_s)
        except BaseException:
            transport.close()
            raise
        return cls(protocol, writer)

    async def serve(self, health_check_s: float) -> None:
        """Return never; raise SubscriptionLost once the connection is gone. A connection that
        read nothing since the PING sent one health-check interval ago is given up. (Replies
        already in the socket are read before this task resumes, so an event-loop stall alone
        does not count as silence.)"""
        protocol = self._protocol
        pinged_at: float | None = None
        while True:
            await asyncio.wait([protocol.closed], timeout=health_check_s)
            if protocol.closed.done():
                protocol.closed.result()  # raises SubscriptionLost
            if pinged_at is not None and protocol.last_read < pinged_at:
                protocol.transport.close()
                raise SubscriptionLost("subscription connection silent")
            pinged_at = time.monotonic()
            protocol.transport.write(b"*1\r\n$4\r\nPING\r\n")

    def close(self) -> None:
        self._protocol.transport.close()
