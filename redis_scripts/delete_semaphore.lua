-- Delete a semaphore and everything under it; wake its waiters so they learn it is gone.
--
-- KEYS: meta, holders, info, queue, qexp, qinfo, stats, pins, orphans (see lib/common.lua)
-- ARGV[1] wake channel
-- Returns: 1 deleted, 0 did not exist
local existed = redis.call('EXISTS', KEYS[1])
local waiters = redis.call('ZRANGE', KEYS[4], 0, -1)
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8],
  KEYS[9])
if #waiters > 0 then redis.call('PUBLISH', ARGV[1], table.concat(waiters, ' ')) end
return existed
