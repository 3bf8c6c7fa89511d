-- uses: common
-- Give back a slot, or leave the queue. Idempotent and scoped to one id: releasing an unknown,
-- expired or already released id changes nothing that belongs to anyone else. A freed slot is
-- granted at once to the queue head (grant_heads), whose process is told on its own channel (or
-- in this reply, when it is the caller's process: ARGV[4]).
--
-- KEYS: meta, holders, info, queue, qexp, qinfo, stats, pins, orphans (see lib/common.lua)
-- ARGV[1] lease id (or waiter id; a waiter granted a slot it never learned of holds it: this
--         frees it for the next head)
-- ARGV[2] wake channel
-- ARGV[3] optional stats counter to increment when something was released or dequeued
--         ("timed_out", "force_released")
-- ARGV[4] optional process token of the caller: grants to that process's own waiters are
--         returned instead of published (see grant_heads)
-- Returns: 1 a live slot was released, 2 a queue entry was removed, 0 nothing to do;
--          with ARGV[4], {that result, the grant message for the caller's process, or ''}
local id = ARGV[1]
local local_token = ARGV[4]
local now = now_ms()
local score = redis.call('ZSCORE', KEYS[2], id)
local result = 0
if score then
  redis.call('ZREM', KEYS[2], id)
  redis.call('HDEL', KEYS[3], id)
  redis.call('ZREM', KEYS[8], id)
  redis.call('ZREM', KEYS[9], id)
  if tonumber(score) > now then result = 1 end
end
if redis.call('ZREM', KEYS[4], id) == 1 then
  redis.call('ZREM', KEYS[5], id)
  redis.call('HDEL', KEYS[6], id)
  if result == 0 then result = 2 end
end
local kept = ''
if result > 0 then
  if ARGV[3] and ARGV[3] ~= '' then redis.call('HINCRBY', KEYS[7], ARGV[3], 1) end
  purge(now, 64)
  local _, _, message = grant_heads(now, ARGV[2], nil, local_token)
  kept = message
end
if local_token then return {result, kept} end
return result
