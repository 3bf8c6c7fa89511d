-- uses: common
-- Create a semaphore, or with mode "ensure" create it or set its limit (declarative config).
-- A raised limit grants the slots it adds to the queue heads at once (grant_heads).
--
-- KEYS: meta, holders, info, queue, qexp, qinfo, stats, pins, orphans (see lib/common.lua)
-- ARGV[1] limit (>= 1), ARGV[2] mode "create" | "ensure", ARGV[3] wake channel
-- ARGV[4] grace (ms) before the first acquisition, when Redis may have lost live leases
-- Returns: 1 created, 0 already existed (mode create: unchanged), 2 limit updated (mode ensure)
local limit = tonumber(ARGV[1])
local now = now_ms()
local existing = redis.call('HGET', KEYS[1], 'limit')
if existing then
  if ARGV[2] ~= 'ensure' then return 0 end
  redis.call('HSET', KEYS[1], 'limit', limit)
  purge(now, 64)
  grant_heads(now, ARGV[3], nil)
  return 2
end
redis.call('HSET', KEYS[1], 'limit', limit, 'epoch', now .. ':create', 'created_ms', now,
  'grace_until', now + tonumber(ARGV[4] or '0'))
return 1
