"""The usual hand-written Redis semaphore, as a baseline: one sorted set of holders scored by
expiry, a Lua check-and-add, and a client that retries every 10 ms until it gets a slot.

No queue, no wake-up: whoever polls first after a release wins.
"""

from __future__ import annotations

import asyncio
import secrets

import redis.asyncio as aioredis

POLL_S = 0.010

ACQUIRE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
  return 1
end
return 0
"""


class NaiveSemaphore:
    def __init__(self, client: aioredis.Redis, key: str, limit: int, ttl_ms: int = 30_000) -> None:
        self._client = client
        self._key = key
        self._limit = limit
        self._ttl_ms = ttl_ms
        self._script = client.register_script(ACQUIRE_LUA)

    async def try_acquire(self, holder_id: str) -> bool:
        reply = await self._script(keys=[self._key], args=[holder_id, self._limit, self._ttl_ms])
        return int(reply) == 1

    async def acquire(self) -> str:
        holder_id = secrets.token_hex(12)
        while not await self.try_acquire(holder_id):
            await asyncio.sleep(POLL_S)
        return holder_id

    async def release(self, holder_id: str) -> None:
        await self._client.zrem(self._key, holder_id)
