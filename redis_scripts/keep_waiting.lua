-- uses: common semaphore
-- Keep one process's waiters in a semaphore's queue, in one call for all of them, instead of each
-- waiter re-polling acquire_slot to keep its queue entry alive; and do for the queue what such a
-- poll does: purge expired holders and waiters, and grant the slots that frees (or that a grace
-- ending frees) to the queue heads, first come first served, with their grant messages. The
-- process's keeper (Semaphores in service/coordination/semaphore.py) calls it at the hint.
--
-- KEYS: the semaphore's nine keys (lib/semaphore.lua)
-- ARGV:
local queue_ttl = tonumber(ARGV[1])  -- ms: each live entry of these waiters now expires at
                                     -- now + queue_ttl (as an acquire_slot poll would set it)
local channel = ARGV[2]              -- wake channel (grants go to "<channel>:<token>")
local local_token = ARGV[3]          -- the caller's process token: grants to its own waiters are
                                     -- returned instead of published (grant_heads)
local keys_ttl = tonumber(ARGV[4])   -- TTL (ms) of the semaphore's keys; 0 keeps them
-- ARGV[5], ...: waiter ids of the caller's process
-- Returns {retry_hint_ms, orphans, message, gone id, ...}: the longest the caller may wait
-- before it calls again (as acquire_slot's hint: queue_ttl / 3, or sooner the nearest lease
-- expiry or the end of a grace, which send no message; 1 when a slot is still free behind dead
-- heads this call could not all drop); how many orphaned leases wait for a replica to adopt them
-- (as acquire_slot reports it: a purge here may have made some); the grants to the caller's
-- process (grant_heads' kept message, '' if none); and the given ids no longer queued: granted
-- (by this call or earlier), dropped or released, or expired (not refreshed here, whether or not
-- a purge removed them yet): their waiters must poll acquire_slot now. An entry already expired
-- is never revived here. If the semaphore does not exist, every id given is gone.
local now = now_ms()
local first = 5

if not redis.call('HGET', META, 'limit') then
  local gone = {math.floor(queue_ttl / 3), 0, ''}
  for i = first, #ARGV do gone[#gone + 1] = ARGV[i] end
  return gone
end
if keys_ttl > 0 then redis.call('PEXPIRE', META, keys_ttl) end

-- The given ids in chunks (unpack has a limit), each with its QEXP score (false if none).
local function each_chunk(visit)
  local chunk = 1000
  for start = first, #ARGV, chunk do
    local ids = {}
    for i = start, math.min(start + chunk - 1, #ARGV) do ids[#ids + 1] = ARGV[i] end
    visit(ids, redis.call('ZMSCORE', QEXP, unpack(ids)))
  end
end

-- Purge first, as acquire_slot does: an entry that already expired loses its place.
purge(now, 64)
local refreshed = false
each_chunk(function(ids, scores)
  local args = {}
  for i, id in ipairs(ids) do
    local score = scores[i] and tonumber(scores[i])
    if score and score > now then
      args[#args + 1] = now + queue_ttl
      args[#args + 1] = id
    end
  end
  if #args > 0 then
    redis.call('ZADD', QEXP, 'XX', unpack(args))
    refreshed = true
  end
end)
if refreshed then
  keep_for(QUEUE, queue_ttl * 3)
  keep_for(QEXP, queue_ttl * 3)
  keep_for(QINFO, queue_ttl * 3)
end

-- Slots freed by expiry (or a grace that ended) go to the heads, as at any acquire_slot poll.
local _, message = grant_heads(now, channel, nil, local_token)
-- A slot still free with waiters queued: dead heads (a process that died with many waiters)
-- stopped grant_heads at its cap before it reached a live one (retry_hint).
local dead_ahead = redis.call('ZCARD', QUEUE) > 0 and free_slots(now) > 0

local reply = {0, redis.call('ZCARD', ORPHANS), message}  -- the hint last, below
each_chunk(function(ids, scores)
  for i, id in ipairs(ids) do
    -- Gone: granted, dropped or released; or expired, not yet purged (never refreshed here).
    if not scores[i] or tonumber(scores[i]) <= now then reply[#reply + 1] = id end
  end
end)

reply[1] = retry_hint(now, queue_ttl, dead_ahead)  -- as acquire_slot's
return reply
