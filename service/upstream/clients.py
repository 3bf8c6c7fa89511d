"""One `replicate.Client` per Replicate account, kept in a bounded LRU cache.

Why a cache: each Client owns an httpx connection pool and there is no public close, so a
Client per request leaks pools. Why per token: the token is baked into the client's headers,
so the cache is keyed by a full-length digest of it (`token_cache_key`), not by the short
account fingerprint two tokens could share.

- Built lazily inside the running loop (its AsyncClient binds to the loop it first runs on); an
  entry made on another loop (tests, a restarted loop) is dropped, never reused.
- `base_url` is passed explicitly (the client would fall back to REPLICATE_BASE_URL), and an
  empty token is refused (the client would fall back to REPLICATE_API_TOKEN: another tenant's).
- The pool is sized through `transport=`: the client ignores `limits=`. Its check of idle
  connections is made cheaper (service/upstream/sockets.py), with the same answers.
- Eviction never closes a client under use: a lease pins it, and the last user closes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import httpx
from replicate.client import Client

from service.errors import Unauthorized, Unavailable
from service.fingerprint import token_cache_key
from service.upstream.deadline import add_cancel_after
from service.upstream.exchange import record_response
from service.upstream.sockets import cheaper_idle_checks

logger = logging.getLogger("service.upstream")


@dataclass(eq=False)
class _Entry:
    client: Client
    transport: httpx.AsyncBaseTransport  # ours: closing it closes the client's connections
    loop: asyncio.AbstractEventLoop
    users: int = 0
    evicted: bool = False


class InstrumentedTransport(httpx.AsyncBaseTransport):
    """Wraps the transport under replicate's RetryTransport, so every attempt is seen (the
    client retries GET 429/503/504 itself, below any httpx event hook)."""

    def __init__(
        self, inner: httpx.AsyncBaseTransport, observe: Callable[[str, str, int], None]
    ) -> None:
        self._inner = inner
        self._observe = observe

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            response = await self._inner.handle_async_request(request)
        except Exception:
            self._observe(request.method, request.url.path, 0)
            raise
        self._observe(request.method, request.url.path, response.status_code)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


ResponseObserver = Callable[[str, str, int], None]  # (method, path, status; 0 = no answer)


class ClientCache:
    """Bounded LRU of `replicate.Client`, keyed by the token's full keyed digest (never by the
    token, never by its 64-bit fingerprint: two tokens sharing one must never share a client,
    since the client carries its token)."""

    def __init__(
        self,
        base_url: str,
        *,
        max_clients: int = 256,
        pool_size: int = 60,
        on_response: ResponseObserver | None = None,
    ) -> None:
        if max_clients < 1 or pool_size < 1:
            raise ValueError("max_clients and pool_size must be >= 1")
        self._base_url = base_url.rstrip("/")
        self._max_clients = max_clients
        self._pool_size = pool_size
        self._on_response = on_response
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()
        self._closed = False

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"ClientCache(base_url={self._base_url!r}, clients={len(self._entries)})"

    @contextlib.asynccontextmanager
    async def lease(self, token: str) -> AsyncIterator[Client]:
        """The account's client, pinned (not closed by eviction) until the block exits."""
        entry = await self._entry(token)
        entry.users += 1
        try:
            yield entry.client
        finally:
            entry.users -= 1
            if entry.evicted and entry.users == 0:
                await _close(entry)

    async def aclose(self) -> None:
        """Close every cached client's connection pool; later leases raise Unavailable.

        A client still leased (a prediction being cancelled during shutdown) is closed by its
        last user instead, so that cancel can still reach Replicate.
        """
        self._closed = True
        entries = list(self._entries.values())
        self._entries.clear()
        for entry in entries:
            entry.evicted = True
            if entry.users == 0:
                await _close(entry)

    async def _entry(self, token: str) -> _Entry:
        if not token or not token.strip():
            # Client(api_token="") would silently use the server's REPLICATE_API_TOKEN.
            raise Unauthorized("A Replicate API token is required")
        if self._closed:
            raise Unavailable("Upstream client is shut down")
        loop = asyncio.get_running_loop()
        key = token_cache_key(token)
        entry = self._entries.get(key)
        if entry is not None and entry.loop is loop:
            self._entries.move_to_end(key)
            return entry
        if entry is not None:  # built on a loop that is gone: unusable, and not closable here
            del self._entries[key]
            entry.evicted = True
        client, transport = self._build(token)
        entry = _Entry(client=client, transport=transport, loop=loop)
        self._entries[key] = entry
        while len(self._entries) > self._max_clients:
            _, old = self._entries.popitem(last=False)
            old.evicted = True
            if old.users == 0 and old.loop is loop:
                await _close(old)
        return entry

    def _build(self, token: str) -> tuple[Client, httpx.AsyncBaseTransport]:
        limits = httpx.Limits(
            max_connections=self._pool_size, max_keepalive_connections=self._pool_size
        )
        pooled = httpx.AsyncHTTPTransport(limits=limits)
        cheaper_idle_checks(pooled)  # the same check of idle connections, cheaper (sockets.py)
        transport: httpx.AsyncBaseTransport = pooled
        if self._on_response is not None:
            transport = InstrumentedTransport(transport, self._on_response)
        client = Client(
            api_token=token,
            base_url=self._base_url,
            transport=transport,
            # The request hook adds Cancel-After to creates (deadline.py); the response hook
            # keeps what ReplicateError drops (exchange.py).
            event_hooks={"request": [add_cancel_after], "response": [record_response]},
        )
        return client, transport


async def _close(entry: _Entry) -> None:
    # The client's AsyncClient is private to it (and made on first use), but its transport
    # is ours: closing that closes every connection the client opened.
    try:
        await entry.transport.aclose()
    except Exception:  # closing is best effort; never let it mask the caller's outcome
        logger.warning("closing a Replicate client failed", exc_info=True)
