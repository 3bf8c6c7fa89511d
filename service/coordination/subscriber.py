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

Where it connects is a `SubscriptionSource`:

- one server: that server (`PoolSubscriptionSource`, the command pool's connection settings);
- Sentinel: the primary the sentinels name now (the same, with a Sentinel pool); every health
  check also asks the sentinels, and a subscription on a server that is no longer the primary
  is given up, so it follows a failover even when the old primary stays up;
- a Cluster: any one node (`ClusterSubscriptionSource`). Classic PUBLISH is broadcast to every
  node of a Cluster, replicas included, so one PSUBSCRIBE anywhere receives every semaphore's
  messages; when that node is lost, the next attempt starts with the next node.

`stay_subscribed` keeps one subscription open for good: it reconnects with a backoff and tells
its caller each time the subscription comes up or is lost (WakeDispatcher's grants and
wake-ups). `ChannelSubscription` runs it in a task for one literal channel
(Coordinator.subscribe: Replicate's webhooks fanned out to every replica), on a connection of
its own.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
from collections.abc import Callable
from typing import Any, NoReturn

import hiredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from service.aio import stop_task

log = logging.getLogger("service.coordination.subscriber")

Address = tuple[str, int]
SENTINEL_CHECK_TIMEOUT_S = 2.0  # the longest a health check waits for the sentinels
SUBSCRIBE_TIMEOUT_S = 5.0  # the longest an attempt waits for its subscription's confirmation
HEALTH_CHECK_S = 5.0  # a PING (and, under Sentinel, a question to the sentinels) this often
FIRST_BACKOFF_S = 0.05  # between attempts after a loss, doubled up to MAX_BACKOFF_S
MAX_BACKOFF_S = 2.0
_GLOB = re.compile(r"([*?\[\]\\])")


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


class SubscriptionSource:
    """Where the subscription connects: `connect` returns a new, connected redis-py connection
    that belongs to the caller; `is_current` says whether a subscription at `address` still
    receives what it should (asked once per health check)."""

    async def connect(self) -> AbstractConnection:
        raise NotImplementedError

    async def is_current(self, address: Address | None) -> bool:
        return True

    async def aclose(self) -> None:
        """Nothing to close: every connection made belongs to its subscription."""


class PoolSubscriptionSource(SubscriptionSource):
    """A connection as `pool` makes them (its class and settings: AUTH, TLS, HELLO, a unix
    socket), outside the pool: the subscription does not take a command connection. With a
    Sentinel pool the connection asks the sentinels for the primary when it connects."""

    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool

    async def connect(self) -> AbstractConnection:
        pool = self._pool
        connection: AbstractConnection = pool.connection_class(**pool.connection_kwargs)
        await connection.connect()  # type: ignore[no-untyped-call]
        return connection

    async def is_current(self, address: Address | None) -> bool:
        pool = self._pool
        if not isinstance(pool, SentinelConnectionPool) or address is None:
            return True
        try:
            async with asyncio.timeout(SENTINEL_CHECK_TIMEOUT_S):
                host, port = await pool.sentinel_manager.discover_master(pool.service_name)
        except (RedisError, OSError, TimeoutError):
            return True  # the sentinels cannot tell now: keep the subscription
        return (str(host), int(port)) == address


class ClusterSubscriptionSource(SubscriptionSource):
    """A connection to one node of a Cluster, with the cluster client's connection settings;
    each attempt starts with the node after the one used last (the first at random), and
    tries every known node before it gives up."""

    def __init__(self, cluster: RedisCluster) -> None:
        self._cluster = cluster
        self._last: str | None = None

    async def connect(self) -> AbstractConnection:
        nodes = self._cluster.get_nodes()
        if not nodes:
            await self._cluster.initialize()  # reads the topology (raises if no node answers)
            nodes = self._cluster.get_nodes()
        nodes.sort(key=lambda node: node.name)
        names = [node.name for node in nodes]
        start = names.index(self._last) + 1 if self._last in names else random.randrange(len(nodes))
        error: BaseException | None = None
        for index in range(len(nodes)):
            node = nodes[(start + index) % len(nodes)]
            # As the cluster client's own connections: no retry below the cluster's.
            options = {**node.connection_kwargs, "retry": Retry(NoBackoff(), 0)}
            connection: AbstractConnection = node.connection_class(**options)
            try:
                await connection.connect()  # type: ignore[no-untyped-call]
            except (RedisError, OSError) as exc:
                error = exc
                continue
            self._last = node.name
            return connection
        raise SubscriptionLost(f"no cluster node accepted the subscription: {error!r}")

    async def is_current(self, address: Address | None) -> bool:
        nodes = self._cluster.get_nodes()
        if not nodes or address is None:
            return True  # the client is re-reading the topology: cannot tell
        return any((str(node.host), int(node.port)) == address for node in nodes)


def _address(connection: AbstractConnection) -> Address | None:
    host, port = getattr(connection, "host", None), getattr(connection, "port", None)
    if host is None or port is None:
        return None  # a unix socket
    return (str(host), int(port))


class Subscription:
    def __init__(
        self,
        protocol: _PushProtocol,
        writer: asyncio.StreamWriter,
        source: SubscriptionSource | None = None,
        address: Address | None = None,
    ) -> None:
        self._protocol = protocol
        # Kept alive: a StreamWriter that is collected closes its transport.
        self._writer = writer
        self._source = source or SubscriptionSource()
        self.address = address  # the server subscribed to (None for a unix socket)

    @classmethod
    async def open(
        cls,
        source: SubscriptionSource | ConnectionPool,
        patterns: list[str],
        on_message: Callable[[bytes], None],
        timeout_s: float,
    ) -> Subscription:
        """Connect where `source` says (a ConnectionPool: as that pool would connect) and
        subscribe to `patterns`. Raises redis-py's connection errors, SubscriptionLost or
        TimeoutError."""
        if isinstance(source, ConnectionPool):
            source = PoolSubscriptionSource(source)
        connection = await source.connect()
        address = _address(connection)
        writer = connection._writer  # private: pinned, tests/unit/test_private_contracts.py
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
        return cls(protocol, writer, source, address)

    async def serve(self, health_check_s: float) -> None:
        """Return never; raise SubscriptionLost once the connection is gone. A connection that
        read nothing since the PING sent one health-check interval ago is given up, and so is
        one to a server that no longer gets the messages (see SubscriptionSource.is_current).
        (Replies already in the socket are read before this task resumes, so an event-loop
        stall alone does not count as silence.)"""
        protocol = self._protocol
        pinged_at: float | None = None
        while True:
            await asyncio.wait([protocol.closed], timeout=health_check_s)
            if protocol.closed.done():
                protocol.closed.result()  # raises SubscriptionLost
            if pinged_at is not None and protocol.last_read < pinged_at:
                protocol.transport.close()
                raise SubscriptionLost("subscription connection silent")
            if not await self._source.is_current(self.address):
                protocol.transport.close()
                raise SubscriptionLost("the subscribed server no longer serves this deployment")
            pinged_at = time.monotonic()
            protocol.transport.write(b"*1\r\n$4\r\nPING\r\n")

    def close(self) -> None:
        self._protocol.transport.close()


def literal_pattern(channel: str) -> str:
    """The PSUBSCRIBE pattern that matches `channel` alone: its glob characters (* ? [ ] \\)
    escaped."""
    return _GLOB.sub(r"\\\1", channel)


def _nothing(*_: object) -> None:
    pass


async def stay_subscribed(
    source: SubscriptionSource,
    patterns: list[str],
    on_message: Callable[[bytes], None],
    *,
    on_up: Callable[[], None] = _nothing,
    on_down: Callable[[Exception], None] = _nothing,
    timeout_s: float = SUBSCRIBE_TIMEOUT_S,
    health_check_s: float = HEALTH_CHECK_S,
) -> NoReturn:
    """Stay subscribed to `patterns` where `source` says, until cancelled. Each message goes to
    `on_message` in the callback that read it (nothing here is on that path). `on_up()` runs
    each time the subscription is confirmed, `on_down(error)` each time an attempt fails or the
    subscription is lost (Subscription.serve's health check); then the next attempt follows
    after a backoff (FIRST_BACKOFF_S, doubled up to MAX_BACKOFF_S, back to the first once a
    subscription comes up). Messages published while it is down are lost: `on_up` after an
    `on_down` is where a caller re-checks what it may have missed. An exception from `on_up`
    counts as a loss."""
    backoff_s = FIRST_BACKOFF_S
    while True:
        subscription: Subscription | None = None
        try:
            subscription = await Subscription.open(source, patterns, on_message, timeout_s)
            on_up()
            backoff_s = FIRST_BACKOFF_S
            await subscription.serve(health_check_s)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            on_down(exc)
            await asyncio.sleep(backoff_s)
            backoff_s = min(backoff_s * 2, MAX_BACKOFF_S)
        finally:
            if subscription is not None:
                subscription.close()


class ChannelSubscription:
    """One channel followed for good (stay_subscribed in a task of its own, on its own
    connection), its messages handed to `on_message` as they are read (an exception it raises
    is logged; the subscription goes on). Created by Coordinator.subscribe; `close` stops
    it."""

    def __init__(
        self,
        source: SubscriptionSource,
        channel: str,
        on_message: Callable[[bytes], None],
        *,
        on_up: Callable[[], None] | None = None,
        on_down: Callable[[Exception], None] | None = None,
    ) -> None:
        self.channel = channel
        self.reconnects = 0  # subscriptions lost, and attempts that failed
        self._on_message = on_message
        self._on_up = on_up or _nothing
        self._on_down = on_down or _nothing
        self._connected = asyncio.Event()
        self._task = asyncio.create_task(
            stay_subscribed(
                source,
                [literal_pattern(channel)],
                self._handle,
                on_up=self._up,
                on_down=self._down,
            ),
            name=f"subscription:{channel}",
        )

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def closed(self) -> bool:
        return self._task.done()

    def add_done_callback(self, callback: Callable[[], None]) -> None:
        """`callback()` once the subscription has stopped (closed)."""
        self._task.add_done_callback(lambda _: callback())

    async def wait_connected(self, timeout_s: float) -> bool:
        """True once subscribed (now or within `timeout_s`), False otherwise."""
        try:
            await asyncio.wait_for(self._connected.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        await stop_task(self._task)
        self._connected.clear()

    def _handle(self, data: bytes) -> None:
        try:
            self._on_message(data)
        except Exception:  # a bug in the handler must not take the subscription down with it
            log.exception("message not handled", extra={"channel": self.channel})

    def _up(self) -> None:
        self._connected.set()
        self._on_up()

    def _down(self, error: Exception) -> None:
        self._connected.clear()
        self.reconnects += 1
        log.warning(
            "subscription lost; its messages are missed until it is back",
            extra={"channel": self.channel, "error": type(error).__name__},
        )
        try:
            self._on_down(error)
        except Exception:  # the caller's bug must not end the subscription
            log.exception("on_down failed", extra={"channel": self.channel})
