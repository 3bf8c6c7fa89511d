-- uses: common semaphore
-- Read one semaphore for operators and metrics (SemaphoreRegistry.view): its counts, and with
-- `detail` its holders, waiters and counters, all as of one moment of the server's clock.
-- Read-only: it writes nothing, so expired holders and waiters still in the keys (until the next
-- acquire or release purges them) are left out here by Redis time.
--
-- KEYS: the semaphore's nine keys (lib/semaphore.lua)
-- ARGV:
local detail = ARGV[1] == '1'  -- also the holders and the first 100 waiters
-- Returns {now_ms, limit, grace_until, in_use, waiting, orphans, counters, holders, waiters}:
--   limit 0: no such semaphore (nothing else is read)
--   in_use: live holders, a pinned one whose lease expired included while its pin is ahead (the
--     next purge makes it an orphan rather than freeing it: docs/slot-ownership.md)
--   orphans: orphaned holders, and pinned holders expired but not orphaned yet
--   counters: {name, value, ...} (the stats hash)
--   holders (detail): {lease id, expiry ms, orphaned (1/0), holder JSON or ''} per live holder,
--     by expiry
--   waiters (detail): {waiter id, entry expiry ms, waiter record or ''} per live waiter among the
--     first 100 in the queue, in order
local now = now_ms()
local limit = redis.call('HGET', META, 'limit')
if not limit then return {now, 0, 0, 0, 0, 0, {}, {}, {}} end
local grace_until = redis.call('HGET', META, 'grace_until') or '0'

-- Live by score, plus those expired whose pin is still ahead (only these few are read one by one).
local in_use = redis.call('ZCOUNT', HOLDERS, '(' .. now, '+inf')
local orphans = redis.call('ZCARD', ORPHANS)
local function pinned(id)
  return tonumber(redis.call('ZSCORE', PINS, id) or '0') > now
end
for _, id in ipairs(redis.call('ZRANGEBYSCORE', HOLDERS, '-inf', now)) do
  if pinned(id) then
    in_use = in_use + 1
    if not redis.call('ZSCORE', ORPHANS, id) then orphans = orphans + 1 end
  end
end
local waiting = redis.call('ZCOUNT', QEXP, '(' .. now, '+inf')
local counters = redis.call('HGETALL', STATS)

local holders, waiters = {}, {}
if detail then
  local scored = redis.call('ZRANGE', HOLDERS, 0, -1, 'WITHSCORES')
  for i = 1, #scored, 2 do
    local id, expiry = scored[i], tonumber(scored[i + 1])
    if expiry > now or pinned(id) then
      local orphaned = 0
      if expiry <= now or redis.call('ZSCORE', ORPHANS, id) then orphaned = 1 end
      holders[#holders + 1] = id
      holders[#holders + 1] = scored[i + 1]
      holders[#holders + 1] = orphaned
      holders[#holders + 1] = redis.call('HGET', INFO, id) or ''
    end
  end
  for _, id in ipairs(redis.call('ZRANGE', QUEUE, 0, 99)) do
    local until_ms = redis.call('ZSCORE', QEXP, id)
    if until_ms and tonumber(until_ms) > now then
      waiters[#waiters + 1] = id
      waiters[#waiters + 1] = until_ms
      waiters[#waiters + 1] = redis.call('HGET', QINFO, id) or ''
    end
  end
end
return {now, tonumber(limit), grace_until, in_use, waiting, orphans, counters, holders, waiters}
