-- uses: common semaphore
-- Give back a slot, or leave the queue. Idempotent and scoped to one id: releasing an unknown,
-- expired or already released id changes nothing that belongs to anyone else. A freed slot is
-- granted at once to the queue head (grant_heads), whose process is told on its own channel, or
-- in this reply when it is the caller's process.
--
-- KEYS: the semaphore's nine keys (lib/semaphore.lua)
-- ARGV:
local id = ARGV[1]           -- lease id, or waiter id (a waiter granted a slot it never learned
                             -- of holds it: this frees it for the next head)
local channel = ARGV[2]      -- wake channel
local counter = ARGV[3]      -- stats counter to count when something was released or dequeued
                             -- ("timed_out", "force_released"; '' none)
local local_token = ARGV[4]  -- process token of the caller ('' none): grants to that process's
                             -- own waiters are returned instead of published (grant_heads)
-- Returns {outcome, message}: outcome 1 a live slot was released, 2 a queue entry was removed,
-- 0 nothing to do; message: the grants for the caller's process (see grant_heads), or ''.
local now = now_ms()
local score = redis.call('ZSCORE', HOLDERS, id)
local outcome = 0
if score then
  redis.call('ZREM', HOLDERS, id)
  redis.call('HDEL', INFO, id)
  redis.call('ZREM', PINS, id)
  redis.call('ZREM', ORPHANS, id)
  if tonumber(score) > now then outcome = 1 end
end
if redis.call('ZREM', QUEUE, id) == 1 then
  redis.call('ZREM', QEXP, id)
  redis.call('HDEL', QINFO, id)
  if outcome == 0 then outcome = 2 end
end
local message = ''
if outcome > 0 then
  if counter ~= '' then redis.call('HINCRBY', STATS, counter, 1) end
  purge(now, 64)
  local _
  _, message = grant_heads(now, channel, nil, local_token)
end
return {outcome, message}
