-- uses: common semaphore
-- Create a semaphore, or with mode "ensure" create it or set its limit (declarative config).
-- A raised limit grants the slots it adds to the queue heads at once (grant_heads).
--
-- KEYS: the semaphore's nine keys (lib/semaphore.lua)
-- ARGV:
local limit = tonumber(ARGV[1])  -- >= 1
local ensure = ARGV[2] == 'ensure'  -- 'create': leave an existing one alone
local channel = ARGV[3]          -- wake channel
local grace = tonumber(ARGV[4])  -- ms before the first acquisition (Redis may have lost leases)
-- Returns: 1 created, 0 already existed (mode create: unchanged), 2 limit updated (mode ensure)
local now = now_ms()
if redis.call('HGET', META, 'limit') then
  if not ensure then return 0 end
  redis.call('HSET', META, 'limit', limit)
  purge(now, 64)
  grant_heads(now, channel, nil, '')
  return 2
end
local node = node_tag()
redis.call('HSET', META, 'limit', limit, 'epoch', epoch_on(now, 'create', node),
  'created_ms', now, 'grace_until', now + grace, 'node', node)
return 1
