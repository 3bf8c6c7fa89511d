-- Helpers any script may use: the clock, TTLs, sliding-window logs. service/coordination/
-- scripts.py prepends the libraries a script names on its first line (`-- uses: common
-- semaphore`): this one, and semaphore.lua (a semaphore's keys, purge and grants).
-- All time comes from the Redis server, never from a client.

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Raise (never lower) a key's TTL to at least `ttl_ms`; a key without a TTL (PTTL -1) gets it,
-- a missing one (PTTL -2) is left alone.
local function keep_for(key, ttl_ms)
  local pttl = redis.call('PTTL', key)
  if pttl == -1 or (pttl >= 0 and pttl < ttl_ms) then
    redis.call('PEXPIRE', key, ttl_ms)
  end
end

-- Take one entry of an exact sliding-window log (ZSET request id -> admitted at, server ms): at
-- most `limit` entries in any `window` ms. Used by take_window.lua, and by acquire_slot.lua to
-- take an entry together with a slot. Rejected attempts write nothing; a request id already in
-- the log is admitted again without a second entry (a retried call whose first reply was lost).
-- Cost: O(log n) plus the entries that left the window, each removed once, so the amortized
-- cost does not grow with the limit. Returns {1, remaining, 0} admitted, or {0, 0, wait_ms}:
-- the exact wait until an entry frees.
local function take_from_window(key, limit, window, request_id, now)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  local used = redis.call('ZCARD', key)
  if redis.call('ZSCORE', key, request_id) then return {1, limit - used, 0} end
  if used < limit then
    redis.call('ZADD', key, now, request_id)
    redis.call('PEXPIRE', key, window + 1000)
    return {1, limit - used - 1, 0}
  end
  -- The entry whose departure brings the count below the limit.
  local entry = redis.call('ZRANGE', key, used - limit, used - limit, 'WITHSCORES')
  return {0, 0, tonumber(entry[2]) + window - now + 1}
end
