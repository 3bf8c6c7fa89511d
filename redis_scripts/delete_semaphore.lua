-- uses: common semaphore
-- Delete a semaphore and everything under it; wake its waiters so they learn it is gone.
--
-- KEYS: the semaphore's nine keys (lib/semaphore.lua)
-- ARGV:
local channel = ARGV[1]  -- wake channel
-- Returns: 1 deleted, 0 did not exist
local existed = redis.call('EXISTS', META)
local waiters = redis.call('ZRANGE', QUEUE, 0, -1)
redis.call('DEL', META, HOLDERS, INFO, QUEUE, QEXP, QINFO, STATS, PINS, ORPHANS)
if #waiters > 0 then redis.call('PUBLISH', channel, table.concat(waiters, ' ')) end
return existed
