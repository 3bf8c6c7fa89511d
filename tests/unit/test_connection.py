"""The hiredis-packing connection sends exactly what redis-py's own packer sends."""

from __future__ import annotations

from typing import Any

import pytest
from redis.asyncio.connection import Connection
from redis.exceptions import DataError

from service.coordination.connection import HiredisPackingConnection

COMMANDS: list[tuple[Any, ...]] = [
    ("PING",),
    ("CLIENT SETINFO", "LIB-NAME", "redis-py"),
    (b"CONFIG GET", b"maxmemory"),
    ("EVALSHA", "a" * 40, 7, *[f"rcg:{{sem:ü}}:{k}" for k in range(7)], 30000, -1, "{}"),
    ("SET", b"\x00\xff binary", "x" * 100_000),
    ("ZADD", "k", 1.5, "m", 1e-7, "n", 12345678901234567890),
]


@pytest.mark.parametrize("args", COMMANDS)
def test_packed_bytes_match_redis_py(args: tuple[Any, ...]) -> None:
    ours = b"".join(HiredisPackingConnection().pack_command(*args))
    theirs = b"".join(Connection().pack_command(*args))
    assert ours == theirs


@pytest.mark.parametrize("bad", [None, True, object()])
def test_values_redis_py_refuses_are_refused(bad: object) -> None:
    with pytest.raises(DataError):
        Connection().pack_command("SET", "k", bad)
    with pytest.raises(DataError):
        HiredisPackingConnection().pack_command("SET", "k", bad)


def test_another_encoding_keeps_redis_pys_packer() -> None:
    latin = HiredisPackingConnection(encoding="latin-1")
    assert b"".join(latin.pack_command("SET", "k", "é")) == b"".join(
        Connection(encoding="latin-1").pack_command("SET", "k", "é")
    )
