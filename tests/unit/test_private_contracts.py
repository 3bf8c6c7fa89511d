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
"""

from __future__ import annotations

import uvicorn
from redis.asyncio.connection import Connection

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
