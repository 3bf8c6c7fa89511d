-- Shared helpers, prepended by service/coordination/scripts.py to the scripts that declare
-- `-- uses: common`. Semaphore scripts take their keys in this fixed order:
--   KEYS[1] meta (HASH limit, epoch, grace_until, created_ms, seq)
--   KEYS[2] holders (ZSET lease id -> expiry ms)     KEYS[3] info (HASH lease id -> holder JSON)
--   KEYS[4] queue (ZSET waiter id -> ticket)         KEYS[5] qexp (ZSET waiter id -> expiry ms)
--   KEYS[6] qinfo (HASH waiter id -> waiter JSON)    KEYS[7] stats (HASH counters)
-- All time comes from the Redis server, never from a client.

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Remove at most `batch` expired holders and expired waiters. Returns how many went.
local function purge(now, batch)
  local gone = 0
  local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, batch)
  if #expired > 0 then
    redis.call('ZREM', KEYS[2], unpack(expired))
    redis.call('HDEL', KEYS[3], unpack(expired))
    redis.call('HINCRBY', KEYS[7], 'expired', #expired)
    gone = gone + #expired
  end
  local stale = redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', now, 'LIMIT', 0, batch)
  if #stale > 0 then
    redis.call('ZREM', KEYS[4], unpack(stale))
    redis.call('ZREM', KEYS[5], unpack(stale))
    redis.call('HDEL', KEYS[6], unpack(stale))
    gone = gone + #stale
  end
  return gone
end

-- Free slots now: limit minus live holders, and none while a post-restart grace runs.
local function free_slots(now)
  local limit = tonumber(redis.call('HGET', KEYS[1], 'limit'))
  if not limit then return 0 end
  local grace_until = tonumber(redis.call('HGET', KEYS[1], 'grace_until') or '0')
  if now < grace_until then return 0 end
  return limit - redis.call('ZCARD', KEYS[2])
end

-- Wake the waiters now entitled to a slot: the first `free` of the queue, by id.
local function wake_heads(now, channel)
  local free = free_slots(now)
  if free <= 0 then return 0 end
  local heads = redis.call('ZRANGE', KEYS[4], 0, free - 1)
  if #heads > 0 then
    redis.call('PUBLISH', channel, table.concat(heads, ' '))
  end
  return #heads
end

-- Raise (never lower) a key's TTL to at least `ttl_ms`.
local function keep_for(key, ttl_ms)
  local pttl = redis.call('PTTL', key)
  if pttl >= 0 and pttl < ttl_ms then
    redis.call('PEXPIRE', key, ttl_ms)
  elseif pttl == -1 then
    redis.call('PEXPIRE', key, ttl_ms)
  end
end
