"""A cheaper "is this idle connection still usable?" for the clients' connection pools.

httpcore asks it of every idle connection of a pool each time it hands out or takes back a
connection (`has_expired` → `get_extra_info("is_readable")`): a pool of 16 idle connections is
asked ~30 times per request. Through anyio, each answer first rebuilds the stream's table of
extra attributes (a dict of lambdas) to find the raw socket, then polls it; that lookup cost
more than the poll. Here the raw socket is looked up once per connection and the answer is the
same poll of the same socket (httpcore's own `is_socket_readable`), so a connection the server
closed is still never reused. Everything else is passed through unchanged.
"""

from __future__ import annotations

import socket
import ssl
import typing

import httpcore
from httpcore._utils import is_socket_readable

_RAW = object()  # not looked up yet


class _Stream(httpcore.AsyncNetworkStream):
    def __init__(self, inner: httpcore.AsyncNetworkStream) -> None:
        self._inner = inner
        self._socket: typing.Any = _RAW

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109
        return await self._inner.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109
        await self._inner.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
    ) -> httpcore.AsyncNetworkStream:
        return _Stream(await self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> typing.Any:
        if info == "is_readable":
            if self._socket is _RAW:
                self._socket = self._inner.get_extra_info("socket")
            sock: socket.socket | None = self._socket
            return is_socket_readable(sock)
        return self._inner.get_extra_info(info)


class CachedSocketBackend(httpcore.AsyncNetworkBackend):
    """Wraps a pool's network backend: its streams answer `is_readable` as above."""

    def __init__(self, inner: httpcore.AsyncNetworkBackend) -> None:
        self._inner = inner

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        stream = await self._inner.connect_tcp(
            host, port, timeout=timeout, local_address=local_address, socket_options=socket_options
        )
        return _Stream(stream)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        stream = await self._inner.connect_unix_socket(
            path, timeout=timeout, socket_options=socket_options
        )
        return _Stream(stream)

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def cheaper_idle_checks(transport: object) -> None:
    """Give an httpx transport's connection pool the backend above (a no-op for a transport
    that has no such pool, e.g. a test's mock transport)."""
    pool = getattr(transport, "_pool", None)
    backend = getattr(pool, "_network_backend", None)
    if (
        isinstance(pool, httpcore.AsyncConnectionPool)
        and isinstance(backend, httpcore.AsyncNetworkBackend)
        and not isinstance(backend, CachedSocketBackend)
    ):
        pool._network_backend = CachedSocketBackend(backend)
