"""An in-process Redis for running one replica without a Redis server (`REDIS_URL` unset).

fakeredis' `TcpFakeServer` speaks the Redis protocol on a loopback port, served from daemon
threads; Lua (EVALSHA, PUBLISH inside scripts, through lupa) and pub/sub (PSUBSCRIBE) work over
it, which is everything the coordination library uses. It is for development and demos only:
the limits live in this process, so they are not shared with any other replica, and they are
lost when the process exits.
"""

from __future__ import annotations

import socket
import threading
import time

import redis
from fakeredis import TcpFakeServer

WARNING_BANNER = """\
************************************************************************************
* WARNING: REDIS_URL is not set: using an EMBEDDED in-process Redis (fakeredis).   *
*   - run ONE replica only: limits are NOT shared with other replicas or services; *
*   - every semaphore, lease and rate window is LOST when this process exits.      *
* Set REDIS_URL=redis://host:6379/0 for anything beyond a local trial.             *
************************************************************************************"""


class EmbeddedRedis:
    """A fakeredis TCP server on 127.0.0.1 in a daemon thread. `url` is ready after `start()`."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._host = host
        self._port = port or _free_port(host)
        self._server: TcpFakeServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"redis://{self._host}:{self._port}/0"

    def start(self, timeout_s: float = 10.0) -> str:
        server = TcpFakeServer((self._host, self._port), server_type="redis")
        # Connection threads must not keep the process alive at exit (fakeredis makes them
        # non-daemon, and each loops until its peer hangs up).
        server.daemon_threads = True
        server.block_on_close = False
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="embedded-redis",
            daemon=True,
        )
        self._thread.start()
        self._wait_ready(timeout_s)
        return self.url

    def mark_store_known(self, epoch_key: str) -> None:
        """Set the coordination epoch key, so that this brand-new store is not taken for a Redis
        that restarted empty under live holders (which would hold new acquisitions for one
        lease TTL): nothing outside this process can hold a lease on it."""
        client = redis.Redis(host=self._host, port=self._port, socket_timeout=5)
        try:
            client.set(epoch_key, "embedded", nx=True)
        finally:
            client.close()

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()  # also tells every connection thread to finish
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        client = redis.Redis(host=self._host, port=self._port, socket_timeout=1)
        try:
            while True:
                try:
                    client.ping()
                    return
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        raise RuntimeError("the embedded Redis did not start") from None
                    time.sleep(0.02)
        finally:
            client.close()


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
