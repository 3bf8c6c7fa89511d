"""A redis.asyncio connection that packs commands with hiredis.

redis-py's synchronous client packs commands in C when hiredis is installed; its asyncio client
always packs them in Python, one `encode` per argument. A script call has about 20 arguments
(seven keys, the script's ARGV, the SHA): packing it took 24 µs in Python and 2.3 µs with hiredis
on the benchmark machine, on both sides of every handoff. The bytes are identical.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio.connection import Connection
from redis.exceptions import DataError

hiredis: Any
try:
    import hiredis
except ImportError:  # pragma: no cover - hiredis is a dependency; the fallback stays correct
    hiredis = None


class HiredisPackingConnection(Connection):
    def pack_command(self, *args: Any) -> list[bytes]:
        # hiredis encodes str as strict UTF-8: any other encoding setting keeps redis-py's packer.
        encoder = self.encoder
        if hiredis is None or (encoder.encoding, encoder.encoding_errors) != ("utf-8", "strict"):
            return super().pack_command(*args)
        # As redis-py does: a command name with spaces ("CLIENT SETINFO") is several arguments.
        if isinstance(args[0], str):
            args = (*args[0].encode().split(), *args[1:])
        elif b" " in args[0]:
            args = (*args[0].split(), *args[1:])
        # redis-py refuses these rather than guess how to send them; so must we.
        for arg in args:
            if arg is None or isinstance(arg, bool):
                raise DataError(
                    f"Invalid input of type: '{type(arg).__name__}'. Convert to a bytes, string, "
                    "int or float first."
                )
        try:
            return [hiredis.pack_command(args)]
        except TypeError as exc:
            raise DataError(str(exc)) from exc
