"""A PROTOTYPE of a proposed change to service.coordination, used only by benchmarks.coord_probe
to measure it before anyone edits the library: "grant on release".

Today release_slot publishes the ids of the queue heads; each woken waiter then runs acquire_slot
again to take the slot (notify-then-acquire: one more round trip and one more process wake-up on
the critical path, and one more EVALSHA per waited acquisition). Here release_slot (and
acquire_slot after a purge) moves the entitled heads straight into `holders` with a lease and
publishes "g <epoch> <limit> <id>:<expiry> ... @<Redis TIME>" (the time is for the probe's
breakdown only). The waiter returns its lease on the message.
With `targeted`, lease ids carry a per-process token ("<token>.<random>") and grants go to
"<wake channel>:<token>", so a release wakes only the process whose waiter got the slot.

A lost message is harmless: the waiter's bounded poll re-runs acquire_slot, which reports the
already-granted slot as held. A waiter that times out or is cancelled runs release_slot on its
id, which gives a slot granted meanwhile to the next head. Monkeypatches one Coordinator; the
library files are not touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
import types
from typing import Any

from service.coordination import AcquireTimeout, Coordinator, Holder, Lease, SemaphoreNotFound
from service.coordination.lease import shielded
from service.coordination.redis_errors import guarded
from service.coordination.scripts import SCRIPTS_DIR
from service.coordination.wake import WakeDispatcher

# [waiter id, Redis TIME when the grant was published, time.time() when this process read it]
SERVER_TIMES: list[list[object]] = []

GRANT_LUA = r"""
-- Give free slots straight to the queue heads (FIFO), each with a lease of `ttl` ms, and tell
-- their processes: one message per process token ('' = the shared channel).
local function grant_heads(now, channel, ttl)
  local free = free_slots(now)
  if free <= 0 then return 0 end
  local heads = redis.call('ZRANGE', KEYS[4], 0, free - 1)
  if #heads == 0 then return 0 end
  local epoch = redis.call('HGET', KEYS[1], 'epoch') or ''
  local limit = redis.call('HGET', KEYS[1], 'limit')
  local expiry = now + ttl
  local groups, order = {}, {}
  for _, id in ipairs(heads) do
    redis.call('ZADD', KEYS[2], expiry, id)
    redis.call('HSET', KEYS[3], id, redis.call('HGET', KEYS[6], id) or '{}')
    local token = string.match(id, '^(%w+)%.') or ''
    if not groups[token] then groups[token] = {}; order[#order + 1] = token end
    local g = groups[token]
    g[#g + 1] = id .. ':' .. expiry
  end
  redis.call('ZREM', KEYS[4], unpack(heads))
  redis.call('ZREM', KEYS[5], unpack(heads))
  redis.call('HDEL', KEYS[6], unpack(heads))
  redis.call('HINCRBY', KEYS[7], 'acquired', #heads)
  keep_for(KEYS[2], ttl * 3)
  keep_for(KEYS[3], ttl * 3)
  for _, token in ipairs(order) do
    local target = channel
    if token ~= '' then target = channel .. ':' .. token end
    local t = redis.call('TIME')
    redis.call('PUBLISH', target, 'g ' .. epoch .. ' ' .. limit .. ' ' ..
      table.concat(groups[token], ' ') .. ' @' .. t[1] .. '.' .. string.format('%06d', t[2]))
  end
  return #heads
end
"""


def variant_source(name: str) -> str:
    """The project's script with wake_heads replaced by grant_heads (ARGV as today, plus the
    lease TTL as ARGV[4] of release_slot)."""
    common = (SCRIPTS_DIR / "lib" / "common.lua").read_text()
    body = (SCRIPTS_DIR / f"{name}.lua").read_text()
    if name == "acquire_slot":
        old = "if purge(now, 64) > 0 then wake_heads(now, ARGV[9]) end"
        new = "if purge(now, 64) > 0 then grant_heads(now, ARGV[9], ttl) end"
    else:
        old = "  wake_heads(now, ARGV[2])"
        new = "  grant_heads(now, ARGV[2], tonumber(ARGV[4]))"
    if old not in body:
        raise RuntimeError(f"{name}.lua changed; update benchmarks/coord_variant.py")
    return common + "\n" + GRANT_LUA + "\n" + body.replace(old, new)


class GrantDispatcher(WakeDispatcher):
    """Also subscribes to this process's own channel and records the grants it reads."""

    def __init__(self, client: Any, pattern: str, token: str) -> None:
        super().__init__(client, pattern)
        self.token = token
        self.grants: dict[str, tuple[int, str, int]] = {}

    async def _run(self) -> None:  # same loop as WakeDispatcher, two patterns, grant messages
        backoff_s = 0.05
        while True:
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                patterns = [self._pattern]
                if self.token:
                    patterns.append(f"{self._pattern}:{self.token}")
                await pubsub.psubscribe(*patterns)
                self._subscribed.set()
                backoff_s = 0.05
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is None:
                        continue
                    data = message.get("data")
                    if isinstance(data, bytes):
                        data = data.decode()
                    if not isinstance(data, str):
                        continue
                    words = data.split()
                    if words and words[0] == "g":
                        received = time.time()
                        epoch, limit = words[1], int(words[2])
                        server_t = float(words[-1][1:]) if words[-1].startswith("@") else 0.0
                        for item in words[3:]:
                            if item.startswith("@"):
                                continue
                            waiter_id, _, expiry = item.rpartition(":")
                            SERVER_TIMES.append([waiter_id, server_t, received])
                            event = self._events.get(waiter_id)
                            if event is not None:
                                self.grants[waiter_id] = (int(expiry), epoch, limit)
                                event.set()
                    else:
                        for waiter_id in words:
                            event = self._events.get(waiter_id)
                            if event is not None:
                                event.set()
            except asyncio.CancelledError:
                raise
            except Exception:
                self._subscribed.clear()
                self.wake_all()
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, 2.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]


def install(c: Coordinator, *, targeted: bool) -> None:
    """Before c.start(): swap in the grant scripts, dispatcher and acquire loop."""
    token = secrets.token_hex(4) if targeted else ""
    scripts = c.scripts._scripts
    for name in ("acquire_slot", "release_slot"):
        scripts[name] = c.client.register_script(variant_source(name))
    dispatcher = GrantDispatcher(c._pubsub_client, c.keyspace.channel_pattern, token)
    c.dispatcher = dispatcher
    sems = c.semaphores
    sems._dispatcher = dispatcher

    async def release_id(self: Any, keys: Any, lease_id: str, counter: str) -> bool:
        reply = await guarded(
            self._scripts.call(
                "release_slot", keys.all, [lease_id, keys.channel, counter, self.lease_ttl_ms]
            )
        )
        return int(reply) == 1

    async def acquire(
        self: Any, semaphore_id: str, options: Any, holder: Holder | None = None
    ) -> Lease:
        keys = self._keyspace.semaphore(semaphore_id, options.kind)
        holder = holder or Holder(replica=self._replica_id)
        lease_id = f"{token}.{secrets.token_hex(12)}" if token else secrets.token_hex(12)
        wake = dispatcher.register(lease_id)
        started = time.monotonic()
        deadline = started + options.timeout_s
        waiter_json = json.dumps({"replica": self._replica_id, "since": time.time()})
        queue = "1" if options.timeout_s > 0 else "0"
        acquired = False

        def made(expiry: int, epoch: str, limit: int) -> Lease:
            nonlocal acquired
            lease = Lease(
                owner=self,
                semaphore_id=semaphore_id,
                kind=options.kind,
                lease_id=lease_id,
                expires_at_ms=expiry,
                epoch=epoch,
                limit=limit,
                ttl_s=self.lease_ttl_s,
                holder=holder,
                keys_ttl_ms=options.keys_ttl_ms,
            )
            self.held[lease_id] = lease
            acquired = True
            return lease

        try:
            while True:
                wake.clear()
                grant = dispatcher.grants.pop(lease_id, None)
                if grant is not None:
                    return made(*grant)
                reply = await guarded(
                    self._scripts.call(
                        "acquire_slot",
                        keys.all,
                        [
                            lease_id,
                            self.lease_ttl_ms,
                            holder.to_json(),
                            queue,
                            self._queue_entry_ttl_ms,
                            options.create_limit,
                            0,
                            options.keys_ttl_ms,
                            keys.channel,
                            waiter_json,
                        ],
                    )
                )
                status = int(reply[0])
                if status == -1:
                    raise SemaphoreNotFound(semaphore_id)
                if status == 1:
                    dispatcher.grants.pop(lease_id, None)
                    return made(int(reply[1]), _text(reply[2]), int(reply[4]))
                position, hint_ms, limit = int(reply[1]), int(reply[2]), int(reply[4])
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AcquireTimeout(
                        scope=options.scope,
                        limit_id=semaphore_id,
                        limit=limit,
                        waited_s=time.monotonic() - started,
                        retry_after_s=max(1.0, hint_ms / 1000),
                        position=position,
                    )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), min(hint_ms / 1000, remaining))
        except BaseException as exc:
            if not acquired:
                counter = "timed_out" if isinstance(exc, AcquireTimeout) else ""
                await shielded(self._release_id(keys, lease_id, counter))
            raise
        finally:
            dispatcher.unregister(lease_id)
            dispatcher.grants.pop(lease_id, None)

    sems._release_id = types.MethodType(release_id, sems)
    sems.acquire = types.MethodType(acquire, sems)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
