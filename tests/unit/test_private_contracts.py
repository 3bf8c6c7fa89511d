"""What the service relies on inside its dependencies, beyond their public API: each use is
pinned to a major version range in pyproject.toml, and each is checked here, so the day an
upgrade changes it this file fails rather than production.

    redis-py  asyncio Connection._reader/_writer   the wake subscription takes the socket of a
                                                  connection redis-py opened (its TLS, auth and
                                                  Sentinel/Cluster discovery included) and reads
                                                  pushes in the transport's callback: grant
                                                  messages p50 0.49 ms against 0.59 ms with
                                                  PubSub.get_message, p99 1.9 ms against 3.9 ms
                                                  (benchmarks/wake_delivery.py, 3 rounds)
    uvicorn   Server._captured_signals            a drained SIGTERM exits 0 instead of being
                                                  re-raised before the demo's processes stop
    redis-py  Connection.pack_command             hiredis packs commands; output byte-identical
                                                  (tests/unit/test_connection.py)
    redis-py  AbstractConnection                  HiredisPackingConnection overrides it to write
              .send_packed_command, ._writer      without a Task per command (-0.1 ms on both
                                                  sides of a handoff: benchmarks/send_fast_path.py)
                                                  and copies its preamble and error mapping:
                                                  both are compared here, path by path, and on
                                                  real sockets in
                                                  tests/integration/test_send_fast_path.py
    httpx     AsyncHTTPTransport._pool             service/upstream/sockets.py wraps the pool's
    httpcore  AsyncConnectionPool                  network backend so that its check of idle
              ._network_backend,                   connections finds the socket once, not on
              _utils.is_socket_readable            every check (CPU per /generate 1.52x -> 1.30x
                                                  a bare proxy's: benchmarks/gateway.py); if
                                                  they move, the wrapper is skipped, and this
                                                  file fails
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import pytest
import uvicorn
from redis.asyncio.connection import AbstractConnection, Connection

from service.coordination.connection import HiredisPackingConnection


def test_redis_connection_keeps_its_stream_in_reader_and_writer() -> None:
    connection = Connection()
    assert connection._reader is None and connection._writer is None


def test_the_packing_connection_is_a_redis_connection() -> None:
    assert issubclass(HiredisPackingConnection, Connection)
    assert callable(Connection.pack_command)


def test_uvicorn_server_lists_the_signals_it_captured() -> None:
    server = uvicorn.Server(uvicorn.Config(app=lambda *args: None))
    assert server._captured_signals == []


class _Transport:
    def get_write_buffer_size(self) -> int:
        return 1  # something left unsent: the override drains as redis-py always does

    def is_closing(self) -> bool:
        return False


class _Writer:
    """A StreamWriter whose drain() raises what a test gives it."""

    def __init__(self, drain_raises: BaseException | None) -> None:
        self.transport = _Transport()
        self.written: list[bytes] = []
        self.closed = False
        self._drain_raises = drain_raises

    def writelines(self, data: list[bytes]) -> None:
        self.written.extend(data)

    async def drain(self) -> None:
        if self._drain_raises is not None:
            raise self._drain_raises

    def close(self) -> None:
        self.closed = True


async def _send_with(
    send: Any, drain_raises: BaseException | None, command: Any
) -> tuple[Any, ...]:
    connection = HiredisPackingConnection(socket_timeout=1.0)
    writer = _Writer(drain_raises)
    connection._reader = object()  # type: ignore[assignment]
    connection._writer = writer  # type: ignore[assignment]
    try:
        await send(connection, command, check_health=True)
        error: BaseException | None = None
    except BaseException as exc:
        error = exc
    return (
        type(error),
        str(error) if error is not None else None,
        repr(error.__cause__) if error is not None else None,
        writer.written,
        writer.closed,
        connection.is_connected,
    )


@pytest.mark.parametrize(
    "drain_raises",
    [
        None,
        BrokenPipeError(32, "Broken pipe"),
        ConnectionResetError("Connection lost"),
        TimeoutError(),
        asyncio.CancelledError(),
        RuntimeError("unable to perform operation"),
    ],
    ids=repr,
)
@pytest.mark.parametrize("command", [b"PING\r\n", "PING\r\n", [b"PI", b"NG\r\n"]], ids=repr)
async def test_redis_send_packed_command_behaves_as_the_override_copies_it(
    drain_raises: BaseException | None, command: Any
) -> None:
    """Every outcome of redis-py's method (error type, message, cause, bytes written,
    disconnect) is the override's, on each error path it maps."""
    plain = await _send_with(AbstractConnection.send_packed_command, drain_raises, command)
    ours = await _send_with(HiredisPackingConnection.send_packed_command, drain_raises, command)
    assert ours == plain
    assert plain[3] == [b"PING\r\n"] or plain[3] == [b"PI", b"NG\r\n"]


def test_redis_send_packed_command_has_the_preamble_and_write_the_override_skips() -> None:
    """The override hands a connection that is not connected, or may be due a health check,
    to redis-py's method, and otherwise replaces only its `wait_for` around writelines +
    drain. If redis-py's method grows another step, this fails: re-read it and the
    override (service/coordination/connection.py)."""
    source = inspect.getsource(AbstractConnection.send_packed_command)
    body = [line.strip() for line in source.splitlines() if line.strip()]
    body = [line for line in body if not line.startswith("#")]
    preamble = body[body.index(") -> None:") + 1 : body.index("try:")]
    assert preamble == [
        "if not self.is_connected:",
        "await self.connect_check_health(check_health=False)",
        "if check_health:",
        "await self.check_health()",
    ]
    assert "self._send_packed_command(command), self.socket_timeout" in source
    write = inspect.getsource(AbstractConnection._send_packed_command)
    assert write.strip().splitlines()[1:] == [
        "        self._writer.writelines(command)",
        "        await self._writer.drain()",
    ]
    # check_health does nothing without a health_check_interval (the override's fast case).
    check = inspect.getsource(AbstractConnection.check_health)
    assert "self.health_check_interval\n" in check or "self.health_check_interval and" in check
    assert Connection().health_check_interval == 0


def test_an_httpx_transport_keeps_its_pool_and_the_pool_its_network_backend() -> None:
    import httpcore
    import httpx
    from httpcore._utils import is_socket_readable

    transport = httpx.AsyncHTTPTransport()
    assert isinstance(transport._pool, httpcore.AsyncConnectionPool)
    assert isinstance(transport._pool._network_backend, httpcore.AsyncNetworkBackend)
    assert is_socket_readable(None) is True  # no socket: treated as readable (unusable)
