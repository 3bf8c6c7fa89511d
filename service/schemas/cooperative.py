"""CPU-bound request work in slices, so that one request never holds the event loop for long.

A long job (decoding a big JSON body, validating a batch of tasks) is written as a generator
that yields at safe points and returns its result. `finish` runs it to the end at once (tests,
small inputs); `finish_async` runs it on the event loop and, whenever SLICE_S has passed since
the last pause, lets every other ready task run (`asyncio.sleep(0)`) before going on.

Why not a thread: the heavy parts (json's C scanner, pydantic-core) hold the GIL for a whole
call, so a worker thread would stall the loop just the same. Slicing bounds the stall by the
work between two yields, which the generators keep small.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Generator
from typing import TypeVar

T = TypeVar("T")

# Longest stretch of work between two pauses: well under the ~50 ms a replica may stall, and
# long enough that the pauses cost nothing measurable (one sleep(0) is a few microseconds).
SLICE_S = 0.005

Steps = Generator[None, None, T]


def finish(steps: Steps[T]) -> T:
    """Run `steps` to the end without pausing; return its result."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            result: T = done.value
            return result


async def finish_async(steps: Steps[T], slice_s: float = SLICE_S) -> T:
    """Run `steps` to the end, serving the event loop at least every `slice_s` of work."""
    deadline = time.perf_counter() + slice_s
    while True:
        try:
            next(steps)
        except StopIteration as done:
            result: T = done.value
            return result
        if time.perf_counter() >= deadline:
            await asyncio.sleep(0)
            deadline = time.perf_counter() + slice_s
