-- uses: common
-- Give back a slot, or leave the queue. Idempotent and scoped to one id: releasing an unknown,
-- expired or already released id changes nothing that belongs to anyone else. A freed slot is
-- granted at once to the queue head (grant_heads), whose process is told on its own channel.
--
-- KEYS: meta, holders, info, queue, qexp, qinfo, stats (see lib/common.lua)
-- ARGV[1] lease id (or waiter id; a waiter granted a slot it never learned of holds it: this
--         frees it for the next head)
-- ARGV[2] wake channel
-- ARGV[3] optional stats counter to increment when something was released or dequeued
--         ("timed_out", "force_released")
-- Returns: 1 a live slot was released, 2 a queue entry was removed, 0 nothing to do
local id = ARGV[1]
local now = now_ms()
local score = redis.call('ZSCORE', KEYS[2], id)
local result = 0
if score then
  redis.call('ZREM', KEYS[2], id)
  redis.call('HDEL', KEYS[3], id)
  if tonumber(score) > now then result = 1 end
end
if redis.call('ZREM', KEYS[4], id) == 1 then
  redis.call('ZREM', KEYS[5], id)
  redis.call('HDEL', KEYS[6], id)
  if result == 0 then result = 2 end
end
if result > 0 then
  if ARGV[3] and ARGV[3] ~= '' then redis.call('HINCRBY', KEYS[7], ARGV[3], 1) end
  purge(now, 64)
  grant_heads(now, ARGV[2], nil)
end
return result
