-- Take one request from an exact sliding window: at most `limit` in any `window` span.
-- A log of admitted requests in a sorted set (member: request id, score: admission ms).
-- Rejected attempts write nothing. Cost: O(log n) plus the entries that left the window,
-- each of which is removed once, so the amortized cost does not grow with the limit.
--
-- KEYS[1] log (ZSET request id -> admitted at, ms)
-- ARGV[1] limit (>= 1), ARGV[2] window (ms), ARGV[3] request id (unique)
-- Returns: {1, remaining, 0} admitted; {0, 0, wait_ms} full: the exact wait until a slot frees
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local used = redis.call('ZCARD', KEYS[1])
if used < limit then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], window + 1000)
  return {1, limit - used - 1, 0}
end
-- The entry whose departure brings the count below the limit.
local entry = redis.call('ZRANGE', KEYS[1], used - limit, used - limit, 'WITHSCORES')
return {0, 0, tonumber(entry[2]) + window - now + 1}
