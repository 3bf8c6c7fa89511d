-- uses: common
-- Renew every lease one replica holds on one semaphore, in one call.
-- A lease that expired is lost: it is removed and reported, never silently re-added. The one
-- exception is a Redis restart that lost data: the semaphore comes back with a new epoch and a
-- grace period, and a holder whose lease belongs to an older epoch re-asserts it.
--
-- KEYS: meta, holders, info, queue, qexp, qinfo, stats, pins, orphans (see lib/common.lua)
-- ARGV[1] lease TTL (ms)
-- ARGV[2] limit to recreate the semaphore with if its data is gone ("0": do not recreate)
-- ARGV[3] grace (ms) when recreating
-- ARGV[4] TTL (ms) of the semaphore's keys; "0" keeps them
-- ARGV[5..] triples: lease id, epoch it was acquired in, holder JSON
-- Returns: {expiry_ms, epoch, code_1, code_2, ...} with code 1 renewed, 2 re-asserted, and for a
--          lost lease why: 0 it expired before this renewal, 3 the semaphore was deleted,
--          4 it was no longer there (released by an operator, or expired and purged)
local ttl = tonumber(ARGV[1])
local keys_ttl = tonumber(ARGV[4])
local now = now_ms()
local expiry = now + ttl

local limit = tonumber(redis.call('HGET', KEYS[1], 'limit'))
if not limit and tonumber(ARGV[2]) > 0 then
  redis.call('HSET', KEYS[1], 'limit', tonumber(ARGV[2]), 'epoch', now .. ':renew',
    'created_ms', now, 'grace_until', now + tonumber(ARGV[3]))
  limit = tonumber(ARGV[2])
end
if limit and keys_ttl > 0 then redis.call('PEXPIRE', KEYS[1], keys_ttl) end
local epoch = redis.call('HGET', KEYS[1], 'epoch') or ''
local grace_until = tonumber(redis.call('HGET', KEYS[1], 'grace_until') or '0')

local result = {expiry, epoch}
for i = 5, #ARGV, 3 do
  local id = ARGV[i]
  local score = redis.call('ZSCORE', KEYS[2], id)
  local code = 0
  -- Expired but pinned (an orphan, or about to become one) is still this holder's: its slot
  -- was never freed, so its holder, back in time, simply renews it.
  local alive = score and (tonumber(score) > now
    or tonumber(redis.call('ZSCORE', KEYS[8], id) or '0') > now)
  if limit and alive then
    redis.call('ZADD', KEYS[2], 'XX', expiry, id)
    redis.call('ZREM', KEYS[9], id)
    code = 1
  elseif limit and not score and ARGV[i + 1] ~= epoch and now < grace_until then
    redis.call('ZADD', KEYS[2], expiry, id)
    redis.call('HSET', KEYS[3], id, ARGV[i + 2])
    redis.call('HINCRBY', KEYS[7], 'reasserted', 1)
    code = 2
  else
    if not limit then
      code = 3
    elseif not score then
      code = 4
    end
    if score then
      redis.call('ZREM', KEYS[2], id)
      redis.call('HDEL', KEYS[3], id)
      redis.call('ZREM', KEYS[8], id)
      redis.call('ZREM', KEYS[9], id)
    end
    if limit then redis.call('HINCRBY', KEYS[7], 'lost', 1) end
  end
  result[#result + 1] = code
end
if limit then
  keep_for(KEYS[2], ttl * 3)
  keep_for(KEYS[3], ttl * 3)
end
return result
