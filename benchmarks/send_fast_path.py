"""A measured proposal, for benchmarks only: write a command without an extra event-loop task.

redis-py 8.1's asyncio `AbstractConnection.send_packed_command`, when the connection has a
`socket_timeout` (service.coordination's always do), wraps the write in
`asyncio.wait_for(self._send_packed_command(command), socket_timeout)`. On Python 3.11,
wait_for runs its coroutine in a new Task: the bytes leave one event-loop iteration later, and
the caller resumes two callbacks after that. On the handoff's critical path (a release), in a
process that just woke from a 50 ms sleep, that is ~0.1 ms between `Scripts.call` and the
send(2) (`python -m benchmarks.handoff_trace`, "Scripts.call -> written": 0.10-0.13 ms p50;
with this: 0.03 ms), and it is paid by every command.

The write itself never blocks here: `StreamWriter.writelines` hands the bytes to the transport,
which sends them at once or buffers them; only `drain()` can wait (when the transport's buffer
is above its high-water mark). So: write synchronously, and only when something is left in the
transport's buffer, drain under the same timeout, with the same error mapping as redis-py. The
socket timeout keeps its meaning (a write stuck that long fails the command and drops the
connection).

The place for it in the project is `HiredisPackingConnection` in service/coordination/
connection.py (override `send_packed_command`). Here `install()` patches redis-py's class for a
benchmark process only (`RCG_FAST_SEND=1` in peers_bench_ours.py, `TRACE_FAST_SEND=1` in
handoff_trace.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

_plain_send = AbstractConnection.send_packed_command


async def send_packed_command(
    self: Any, command: bytes | str | Iterable[bytes], check_health: bool = True
) -> None:
    writer = self._writer
    if not self.is_connected or writer is None or (check_health and self.health_check_interval):
        # connecting, or a health check may be due: redis-py's own path
        await _plain_send(self, command, check_health)
        return
    if isinstance(command, str):
        command = command.encode()
    if isinstance(command, bytes):
        command = [command]
    try:
        writer.writelines(command)
        if writer.transport.get_write_buffer_size() == 0:
            return  # all sent: nothing to drain
        if self.socket_timeout:
            await asyncio.wait_for(writer.drain(), self.socket_timeout)
        else:
            await writer.drain()
    except TimeoutError:
        await self.disconnect(nowait=True)
        raise RedisTimeoutError("Timeout writing to socket") from None
    except OSError as e:
        await self.disconnect(nowait=True)
        raise RedisConnectionError(f"Error while writing to socket. {e}.") from e
    except BaseException:
        await self.disconnect(nowait=True)
        raise


def install() -> None:
    AbstractConnection.send_packed_command = send_packed_command  # type: ignore[method-assign]
