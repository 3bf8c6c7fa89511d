-- renew_entry.lua: a runner's heartbeat on the job it runs: resets the idle time of its
-- pending queue entry, so that no other replica claims it (XAUTOCLAIM after the idle time).
-- KEYS[1] queue stream ({jobs})
-- ARGV[1] group, ARGV[2] consumer, ARGV[3] entry id
-- Returns 1 renewed, 0 lost (the entry is another consumer's now, or gone).
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if #pending == 0 or pending[1][2] ~= ARGV[2] then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')
return 1
