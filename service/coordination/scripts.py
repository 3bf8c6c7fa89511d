"""Loads redis_scripts/*.lua and calls them by EVALSHA, with EVAL (which caches the script on
that node) after NOSCRIPT: a first use, a Redis restart, a failover, SCRIPT FLUSH."""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

from redis.exceptions import NoScriptError

from .connection import RedisClient

INSTALLED_SCRIPTS = Path("share") / "replicate-concurrent-generation" / "redis_scripts"


def find_scripts_dir() -> Path:
    """`redis_scripts/` beside `service/` (a source tree, the Docker image, an editable install),
    else where a wheel install put it (`<prefix>/share/...`, see pyproject's data-files)."""
    beside = Path(__file__).resolve().parents[2] / "redis_scripts"
    if beside.is_dir():
        return beside
    installed = Path(sys.prefix) / INSTALLED_SCRIPTS
    if installed.is_dir():
        return installed
    raise RuntimeError(f"redis_scripts/ not found beside the package ({beside}) or at {installed}")


SCRIPTS_DIR = find_scripts_dir()
_USES = "-- uses:"


@cache
def script_source(name: str) -> str:
    """The Lua text of one operation, with the libraries its first line names prepended, in
    that order (`-- uses: common semaphore` → lib/common.lua, lib/semaphore.lua)."""
    text = (SCRIPTS_DIR / f"{name}.lua").read_text()
    first_line = text.partition("\n")[0]
    if not first_line.startswith(_USES):
        return text
    libraries = first_line.removeprefix(_USES).split()
    return "\n".join(
        [*((SCRIPTS_DIR / "lib" / f"{lib}.lua").read_text() for lib in libraries), text]
    )


class Scripts:
    """One registered script per operation, bound to one client: the raw door to Redis for every
    script call. `service.coordination.script_calls` wraps each one with named parameters and a
    typed reply; nothing else should call `call` directly."""

    NAMES = (
        "acquire_slot",
        "keep_waiting",
        "release_slot",
        "renew_leases",
        "annotate_lease",
        "create_semaphore",
        "set_limit",
        "delete_semaphore",
        "take_window",
        "adopt_orphans",
        "read_semaphore",
        "note_nodes",
    )

    def __init__(self, client: RedisClient) -> None:
        self._client = client
        self._scripts = {name: LuaScript(script_source(name)) for name in self.NAMES}

    async def call(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        return await self._scripts[name](self._client, keys, args)


class LuaScript:
    """One Lua script, called by EVALSHA, and by EVAL after NOSCRIPT (not cached on the node
    that serves these keys: a first use, a restart, a failover, SCRIPT FLUSH); EVAL caches it
    there. Not redis-py's Script, whose reload is a SCRIPT LOAD that a Cluster client sends to
    every primary: one stopped primary then failed a script's first use on all the others
    (measured: every renewal on a healthy shard timed out while another shard was stopped)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    async def __call__(self, client: Any, keys: Sequence[str], args: Sequence[Any]) -> Any:
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await client.eval(self.source, len(keys), *keys, *args)
