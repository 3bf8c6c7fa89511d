"""HiredisPackingConnection.send_packed_command on real sockets, on both event loops (the
service runs on uvloop, the tests' default is asyncio): it delivers commands and pipelines,
keeps redis-py's back-pressure, and fails as redis-py's own method does on every error path
(each failure scenario also runs with redis-py's method, and the outcomes must be equal):

- a write to a socket the peer reset, or closed: redis ConnectionError, disconnected;
- a peer that stops reading: redis TimeoutError after socket_timeout, disconnected;
- a cancellation while the write waits (drain): CancelledError, disconnected, and the next
  command goes on a new socket.

A send that never drains fails the back-pressure, timeout and cancellation tests; one that
drains only when the transport kept bytes (the first proposal) fails the reset tests."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import re
import socket
import struct
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any, TypeVar

import pytest
import redis.asyncio as aioredis
import uvloop
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.coordination.connection import HiredisPackingConnection
from tests.fixtures.redis_server import RedisServer
from tests.fixtures.tcp_proxy import TcpProxy, tcp_proxy

pytestmark = pytest.mark.redis

T = TypeVar("T")
BIG = 32 * 1024 * 1024  # more than loopback socket buffers and a frozen proxy take


class RedisPySend(HiredisPackingConnection):
    """The reference: the same connection with redis-py's own send_packed_command."""

    send_packed_command = AbstractConnection.send_packed_command  # type: ignore[assignment]


LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}


@pytest.fixture(params=sorted(LOOPS))
def loop_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def run(loop_name: str) -> Callable[[Coroutine[Any, Any, T]], T]:
    """Runs a coroutine to completion on a new loop of the parametrized kind."""

    def runner(coro: Coroutine[Any, Any, T]) -> T:
        with asyncio.Runner(loop_factory=LOOPS[loop_name]) as r:
            return r.run(coro)

    return runner


def connection(
    cls: type[HiredisPackingConnection], port: int, *, timeout_s: float = 5.0
) -> HiredisPackingConnection:
    # No CLIENT SETINFO on connect: the fake peers below answer nothing.
    return cls(host="127.0.0.1", port=port, socket_timeout=timeout_s, driver_info=None, protocol=2)


@contextlib.asynccontextmanager
async def connected(
    cls: type[HiredisPackingConnection], port: int, *, timeout_s: float = 5.0
) -> AsyncIterator[HiredisPackingConnection]:
    """A connection, connected, and closed at the end whatever happened (an open transport
    left to the loop's close can hang a failing test on uvloop)."""
    conn = connection(cls, port, timeout_s=timeout_s)
    await conn.connect()
    try:
        yield conn
    finally:
        writer = conn._writer
        if writer is not None:
            writer.transport.abort()
        await conn.disconnect(nowait=True)


def outcome(exc: BaseException | None, conn: HiredisPackingConnection) -> tuple[Any, ...]:
    """What a send did: the exception's type and message (object addresses masked), and
    whether the connection stayed connected."""
    message = re.sub(r"0x[0-9a-f]+", "0x?", str(exc)) if exc is not None else None
    return (type(exc), message, conn.is_connected)


async def until(condition: Callable[[], bool], what: str, timeout_s: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        assert loop.time() < deadline, f"never saw {what}"
        await asyncio.sleep(0.005)


async def settle(proxy: TcpProxy) -> None:
    """Thaw the proxy and wait until it forwarded everything and saw every connection close
    (its threads, but the accept loop, ended), so that stopping it races with nothing."""
    proxy.thaw()
    await until(lambda: not any(t.is_alive() for t in proxy._threads[1:]), "the proxy idle")


def big_set(key: bytes, size: int = BIG) -> list[bytes]:
    """SET key <size bytes>, packed as two chunks (header, payload)."""
    header = b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n" % (len(key), key, size)
    return [header, b"x" * size + b"\r\n"]


# --- a peer that accepts and then resets, or closes --------------------------------------------


@contextlib.contextmanager
def fake_peer() -> Iterator[tuple[int, Callable[[str], None]]]:
    """A listener whose accepted sockets can be reset (RST) or closed (FIN) on demand."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    ready = threading.Event()

    def accept() -> None:
        with contextlib.suppress(OSError):
            sock, _ = listener.accept()
            accepted.append(sock)
            ready.set()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()

    def end(how: str) -> None:
        assert ready.wait(5), "the connection never arrived"
        sock = accepted[0]
        if how == "reset":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()

    try:
        yield listener.getsockname()[1], end
    finally:
        listener.close()
        for sock in accepted:
            with contextlib.suppress(OSError):
                sock.close()
        thread.join(timeout=2)


async def write_after_reset(cls: type[HiredisPackingConnection]) -> tuple[Any, ...]:
    """The peer reset the connection and the loop noticed (reading): the next write fails."""
    with fake_peer() as (port, end):
        async with connected(cls, port) as conn:
            writer = conn._writer
            assert writer is not None
            end("reset")
            await until(writer.transport.is_closing, "the reset")
            try:
                await conn.send_packed_command(b"*1\r\n$4\r\nPING\r\n", check_health=False)
            except BaseException as exc:
                return outcome(exc, conn)
            return outcome(None, conn)


async def writes_after_close(cls: type[HiredisPackingConnection]) -> list[tuple[Any, ...]]:
    """The peer closed (FIN): the first write still leaves (the peer answers it with a reset),
    the one after the reset fails."""
    with fake_peer() as (port, end):
        async with connected(cls, port) as conn:
            end("close")
            await asyncio.sleep(0.1)  # the FIN arrives
            results = []
            for _ in range(2):
                try:
                    await conn.send_packed_command(b"*1\r\n$4\r\nPING\r\n", check_health=False)
                    results.append(outcome(None, conn))
                except BaseException as exc:
                    results.append(outcome(exc, conn))
                    break
                await asyncio.sleep(0.1)  # the reset comes back
            return results


# --- (a) delivery -----------------------------------------------------------------------------


def test_commands_and_pipelines_arrive_intact(
    redis_server: RedisServer, redis_url: str, run: Callable[[Coroutine[Any, Any, T]], T]
) -> None:
    async def scenario() -> None:
        pool = aioredis.ConnectionPool.from_url(
            redis_url, socket_timeout=5, connection_class=HiredisPackingConnection
        )
        client = aioredis.Redis.from_pool(pool)
        try:
            assert await client.ping() is True
            await client.set("k", "v")
            assert await client.get("k") == b"v"
            async with client.pipeline(transaction=True) as pipe:
                for i in range(500):
                    pipe.set(f"p:{i}", i)
                pipe.get("p:499")
                replies = await pipe.execute()
            assert replies == [True] * 500 + [b"499"]
            big = b"y" * (8 * 1024 * 1024)  # more than the socket takes at once: drained
            async with client.pipeline(transaction=False) as pipe:
                pipe.set("big", big)
                pipe.strlen("big")
                pipe.get("big")
                assert await pipe.execute() == [True, len(big), big]
            conn = await pool.get_connection()
            assert isinstance(conn, HiredisPackingConnection)
            for command in ("PING\r\n", b"PING\r\n", [b"PI", b"NG\r\n"]):  # str, bytes, chunks
                await conn.send_packed_command(command)
                assert await conn.read_response() == b"PONG"
            await pool.release(conn)
        finally:
            await client.aclose()

    run(scenario())


def test_a_connected_send_writes_without_yielding_to_the_loop(
    redis_server: RedisServer, run: Callable[[Coroutine[Any, Any, T]], T]
) -> None:
    async def scenario() -> None:
        async with connected(HiredisPackingConnection, redis_server.port) as conn:
            step = conn.send_packed_command(b"*1\r\n$4\r\nPING\r\n")
            with pytest.raises(StopIteration):  # finished at its first step: no Task, no yield
                step.send(None)
            assert await conn.read_response() == b"PONG"
            # Not connected yet: redis-py's path connects first.
            fresh = connection(HiredisPackingConnection, redis_server.port)
            await fresh.send_packed_command(b"*1\r\n$4\r\nPING\r\n")
            assert await fresh.read_response() == b"PONG"
            await conn.disconnect()
            await fresh.disconnect()

    run(scenario())


def test_a_write_larger_than_the_socket_takes_returns_once_drained(
    redis_server: RedisServer, run: Callable[[Coroutine[Any, Any, T]], T]
) -> None:
    """redis-py's back-pressure: the send returns once the transport's buffer is back under
    its high-water mark, not with 32 MB still queued in the process."""

    async def scenario() -> None:
        async with connected(HiredisPackingConnection, redis_server.port) as conn:
            writer = conn._writer
            assert writer is not None
            await conn.send_packed_command(big_set(b"drained"))
            _, high = writer.transport.get_write_buffer_limits()
            assert writer.transport.get_write_buffer_size() <= high
            assert await conn.read_response() == b"OK"
            await conn.disconnect()

    run(scenario())


# --- (b) a closed or reset socket -------------------------------------------------------------


def test_a_write_to_a_reset_socket_is_a_connection_error_and_disconnects(
    loop_name: str, run: Callable[[Coroutine[Any, Any, T]], T]
) -> None:
    ours = run(write_after_reset(HiredisPackingConnection))
    assert ours == run(write_after_reset(RedisPySend))
    assert ours[2] is False, "still connected after a failed write"
    if loop_name == "asyncio":
        # asyncio's transport drops the write and drain() raises the reset it saw:
        assert ours[:2] == (
            RedisConnectionError,
            f"Error {errno.ECONNRESET} while writing to socket. {os.strerror(errno.ECONNRESET)}.",
        )
    else:
        # uvloop's closed transport refuses the write itself with a RuntimeError, which
        # redis-py lets through as it is (disconnecting first): so does the override.
        assert ours[0] is RuntimeError and "closed" in ours[1], ours


def test_a_write_to_a_closed_socket_fails_once_reset_as_redis_pys_does(
    run: Callable[[Coroutine[Any, Any, T]], T],
) -> None:
    ours = run(writes_after_close(HiredisPackingConnection))
    assert ours[0] == (type(None), None, True)  # the peer's FIN alone: the write leaves
    assert ours[-1][0] is RedisConnectionError and ours[-1][2] is False, ours
    assert ours == run(writes_after_close(RedisPySend))


# --- (c) a peer that stops reading ------------------------------------------------------------


def test_a_peer_that_stops_reading_times_the_write_out_and_disconnects(
    redis_server: RedisServer, run: Callable[[Coroutine[Any, Any, T]], T]
) -> None:
    async def scenario(cls: type[HiredisPackingConnection]) -> tuple[Any, ...]:
        with tcp_proxy(redis_server.port) as proxy:
            async with connected(cls, proxy.port, timeout_s=0.5) as conn:
                proxy.freeze()
                loop = asyncio.get_running_loop()
                started = loop.time()
                with pytest.raises(RedisTimeoutError) as caught:
                    await conn.send_packed_command(big_set(b"frozen"))
                waited = loop.time() - started
                result = outcome(caught.value, conn)
                await settle(proxy)
                assert waited >= 0.45, waited  # the socket timeout, not at once
                return result

    ours = run(scenario(HiredisPackingConnection))
    assert ours == (RedisTimeoutError, "Timeout writing to socket", False)
    assert ours == run(scenario(RedisPySend))


# --- (d) a cancellation mid-drain -------------------------------------------------------------


def test_a_cancelled_write_disconnects_and_the_connection_is_never_reused(
    redis_server: RedisServer, run: Callable[[Coroutine[Any, Any, T]], T]
) -> None:
    async def scenario(cls: type[HiredisPackingConnection]) -> tuple[Any, ...]:
        with tcp_proxy(redis_server.port) as proxy:
            async with connected(cls, proxy.port, timeout_s=30) as conn:
                writer = conn._writer
                assert writer is not None
                proxy.freeze()
                send = asyncio.create_task(conn.send_packed_command(big_set(b"half")))
                await until(lambda: writer.transport.get_write_buffer_size() > 0, "a blocked write")
                await asyncio.sleep(0.1)
                assert not send.done(), "the write should wait while the peer reads nothing"
                send.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await send
                result = outcome(None, conn)
                await settle(proxy)
                # Never reused: the next command goes on a new socket, and its reply is its own
                # (on the old socket it would read the cancelled SET's +OK). The bytes handed to
                # the transport before the cancellation are still flushed by its close(), which
                # is not an abort: Redis may run the cancelled SET, with redis-py's send too.
                await conn.send_packed_command(b"*2\r\n$4\r\nECHO\r\n$6\r\nmarker\r\n")
                assert await conn.read_response() == b"marker"
                await conn.disconnect()
                await settle(proxy)
                return result

    ours = run(scenario(HiredisPackingConnection))
    assert ours == (type(None), None, False)
    assert ours == run(scenario(RedisPySend))
