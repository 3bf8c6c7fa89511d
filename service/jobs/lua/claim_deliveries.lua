-- claim_deliveries.lua: the webhook deliveries due now, each moved CLAIM lease ahead so that
-- no other replica attempts it meanwhile (and, if this one dies, it is due again after that).
-- KEYS[1] due zset ({hooks})
-- ARGV[1] lease ms, ARGV[2] how many at most
-- Returns the claimed delivery ids.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
for _, id in ipairs(due) do
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), id)
end
return due
