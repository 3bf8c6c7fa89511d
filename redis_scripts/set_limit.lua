-- uses: common
-- Change a semaphore's limit. Holders above a lowered limit keep their slots until they release;
-- a raised limit wakes the waiters it lets in at once.
--
-- KEYS: meta, holders, info, queue, qexp, qinfo, stats (see lib/common.lua)
-- ARGV[1] new limit (>= 1), ARGV[2] wake channel
-- Returns: the previous limit, or -1 when the semaphore does not exist
local old = tonumber(redis.call('HGET', KEYS[1], 'limit'))
if not old then return -1 end
redis.call('HSET', KEYS[1], 'limit', tonumber(ARGV[1]))
wake_heads(now_ms(), ARGV[2])
return old
