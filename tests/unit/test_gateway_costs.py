"""What the gateway's per-request shortcuts must keep: a new request id is still a uuid4 hex,
and a pool's cheaper idle-connection check still sees a connection the server closed."""

from __future__ import annotations

import asyncio
import uuid

import httpcore
import httpx

from service.observability.middleware import accept_request_id, new_request_id
from service.upstream.sockets import CachedSocketBackend, cheaper_idle_checks


def test_new_request_ids_are_uuid4_hex() -> None:
    seen = set()
    for _ in range(500):
        value = new_request_id()
        parsed = uuid.UUID(value)
        assert parsed.hex == value and len(value) == 32
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122
        seen.add(value)
    assert len(seen) == 500
    assert accept_request_id("given-id") == "given-id"
    assert uuid.UUID(accept_request_id("bad id!")).version == 4


def test_the_pool_of_a_transport_gets_the_cheaper_backend_once() -> None:
    transport = httpx.AsyncHTTPTransport()
    cheaper_idle_checks(transport)
    cheaper_idle_checks(transport)
    backend = transport._pool._network_backend
    assert isinstance(backend, CachedSocketBackend)
    assert not isinstance(backend._inner, CachedSocketBackend)
    cheaper_idle_checks(httpx.MockTransport(lambda request: httpx.Response(200)))  # no pool


async def test_an_idle_connection_the_server_closed_reads_as_readable() -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    backend = CachedSocketBackend(httpcore.AnyIOBackend())
    stream = await backend.connect_tcp("127.0.0.1", port)
    try:
        assert stream.get_extra_info("socket") is not None
        for _ in range(100):
            if accepted:
                break
            await asyncio.sleep(0.01)
        assert stream.get_extra_info("is_readable") is False  # open and idle
        assert stream.get_extra_info("is_readable") is False  # asked again: same answer
        accepted[0].close()
        await accepted[0].wait_closed()
        for _ in range(100):
            if stream.get_extra_info("is_readable"):
                break
            await asyncio.sleep(0.01)
        assert stream.get_extra_info("is_readable") is True  # closed by the server
    finally:
        await stream.aclose()
        server.close()
        await server.wait_closed()
