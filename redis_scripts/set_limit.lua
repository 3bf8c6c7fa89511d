-- uses: common
-- Change a semaphore's limit. Holders above a lowered limit keep their slots until they release;
-- a raised limit grants the slots it adds to the queue heads at once (grant_heads).
--
-- KEYS: meta, holders, info, queue, qexp, qinfo, stats, pins, orphans (see lib/common.lua)
-- ARGV[1] new limit (>= 1), ARGV[2] wake channel
-- Returns: the previous limit, or -1 when the semaphore does not exist
local old = tonumber(redis.call('HGET', KEYS[1], 'limit'))
if not old then return -1 end
redis.call('HSET', KEYS[1], 'limit', tonumber(ARGV[1]))
local now = now_ms()
purge(now, 64)
grant_heads(now, ARGV[2], nil)
return old
