-- enqueue_delivery.lua: keep one webhook delivery, due now, unless it was ever kept before:
-- a delivery id is made once per (job, event), and its record outlives its last attempt (as
-- a tombstone without a body), so queuing it again, after a crash or a takeover, sends
-- nothing twice.
-- KEYS[1] delivery record hash, KEYS[2] due zset   (one hash tag: {hooks})
-- ARGV[1] url, ARGV[2] body, ARGV[3] job id, ARGV[4] event, ARGV[5] record TTL ms,
-- ARGV[6] delivery id
-- Returns 1 kept (due now), 0 already known.
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], 'url', ARGV[1], 'body', ARGV[2], 'job', ARGV[3], 'event', ARGV[4],
  'first_ms', now, 'attempts', 0)
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('ZADD', KEYS[2], 'NX', now, ARGV[6])
return 1
