-- uses: common semaphore
-- Change a semaphore's limit. Holders above a lowered limit keep their slots until they release;
-- a raised limit grants the slots it adds to the queue heads at once (grant_heads).
--
-- KEYS: the semaphore's nine keys (lib/semaphore.lua)
-- ARGV:
local limit = tonumber(ARGV[1])  -- the new limit, >= 1
local channel = ARGV[2]          -- wake channel
-- Returns: the previous limit, or -1 when the semaphore does not exist
local old = tonumber(redis.call('HGET', META, 'limit'))
if not old then return -1 end
redis.call('HSET', META, 'limit', limit)
local now = now_ms()
purge(now, 64)
grant_heads(now, channel, nil, '')
return old
