-- uses: common semaphore
-- Take a slot of a semaphore, or join (or stay in) its first-come-first-served queue.
--
-- KEYS: the semaphore's nine keys (lib/semaphore.lua), then optionally
local WINDOW = KEYS[10]  -- a window log under the same hash tag, to take an entry of it with a
                         -- slot this call admits (an account's first create), see
                         -- take_from_window in lib/common.lua
-- ARGV:
local lease_id = ARGV[1]                -- "<random>-<process token>"; the waiter id while queued
local ttl = tonumber(ARGV[2])           -- lease TTL, ms
local pin_ms = tonumber(ARGV[3])        -- the lease guards a prediction that may run until now +
                                        -- pin_ms: expired unrenewed before then, it is orphaned,
                                        -- not freed (0: no pin)
local holder_json = ARGV[4]             -- holder JSON object for INFO, without acquired_at
local acquired_at = tonumber(ARGV[5])   -- Unix s (holder's clock, ms precision) of this attempt,
                                        -- put in the holder JSON if it admits
local queue = ARGV[6] == '1'            -- join the queue when no slot is free ('0': try once)
local queue_ttl = tonumber(ARGV[7])     -- ms: a waiter that stops calling this script vanishes
local replica = ARGV[8]                 -- the waiter's replica, for its waiter record
local since = tonumber(ARGV[9])         -- Unix s (waiter's clock, ms precision) it began to wait
local create_limit = tonumber(ARGV[10]) -- > 0: a configured semaphore, created if missing, its
                                        -- limit kept in step; 0: registered, it must exist
local grace = tonumber(ARGV[11])        -- ms of grace if this call creates the semaphore (after
                                        -- a suspected data loss)
local keys_ttl = tonumber(ARGV[12])     -- TTL (ms) of the semaphore's keys; 0 keeps them
local channel = ARGV[13]                -- wake channel (grants go to "<channel>:<token>")
local node_hint = ARGV[14]              -- the tag the caller last read for the node that serves
                                        -- this semaphore (node_tag): it vouches for `grace` only
                                        -- while that is still this node's tag
local window_limit, window_ms, window_request_id = tonumber(ARGV[15]), tonumber(ARGV[16]), ARGV[17]
-- Returns one shape:
--   {status, position, retry_hint_ms, in_use, limit, orphans, expiry_ms, epoch, window_taken,
--    window_wait_ms}
-- status 1: acquired, or already held (granted to this waiter by a release whose message it
--   missed; the lease is then extended to a full TTL): expiry_ms and epoch; with WINDOW,
--   window_taken 1, or 0 and window_wait_ms until the window has room.
-- status 0: not now: position in the queue (1-based; 0: not queued) and retry_hint_ms, the
--   longest the caller should wait before it asks again (no message comes when a lease expires).
-- status -1: no such semaphore.
-- `orphans`: how many orphaned leases wait for a replica to adopt them (adopt_orphans.lua).
local now = now_ms()

local limit = tonumber(redis.call('HGET', META, 'limit'))
if limit then
  if create_limit > 0 and limit ~= create_limit then
    -- Configured semaphores (accounts) follow the configuration of whoever acquires.
    limit = create_limit
    redis.call('HSET', META, 'limit', limit)
  end
else
  if create_limit <= 0 then return {-1, 0, 0, 0, 0, 0, 0, '', 0, 0} end
  -- Nothing of it is here. If this node lost it (restarted empty, or promoted without it), its
  -- holders may still run: the caller's `grace` says how long this node may still be missing
  -- leases, but only if the caller knows this node as it is now; one that does not may not
  -- have seen a restart or failover yet, so the grace is a full TTL.
  local node = node_tag()
  if node ~= node_hint then grace = math.max(grace, ttl) end
  limit = create_limit
  redis.call('HSET', META, 'limit', limit, 'epoch',
    epoch_on(now, string.sub(lease_id, 1, 12), node), 'created_ms', now,
    'grace_until', now + grace, 'node', node)
end
note_ttl(ttl)
if keys_ttl > 0 then redis.call('PEXPIRE', META, keys_ttl) end

-- Slots freed by expiry (or a raised limit) go to the queue heads first, this caller included
-- if it is one of them. (free_slots also makes sure the node did not change: a semaphore on a
-- restarted or promoted node opens a grace instead of admitting anyone.)
purge(now, 64)
grant_heads(now, channel, lease_id, '')
local free = free_slots(now)

local held = redis.call('ZSCORE', HOLDERS, lease_id)
local in_use = redis.call('ZCARD', HOLDERS)
local rank
local admitted = held and tonumber(held) > now
if admitted then
  -- Granted (by a release whose message it missed), and its holder is alive and takes it now:
  -- not an orphan, whatever a purge made of it. (A grant is unpinned until its waiter takes it,
  -- so a purge frees a lapsed one rather than orphaning it; this stays for a grant pinned by
  -- a script of an earlier version.)
  redis.call('ZREM', ORPHANS, lease_id)
else
  -- Admitted only if it is among the heads that fit in the free slots (no barging).
  rank = redis.call('ZRANK', QUEUE, lease_id)
  if rank then
    admitted = rank < free
  else
    admitted = redis.call('ZCARD', QUEUE) < free
  end
  if admitted then
    if rank then drop_waiters({lease_id}) end
    redis.call('HINCRBY', STATS, 'acquired', 1)
    if keys_ttl > 0 then keep_for(STATS, keys_ttl) end
    in_use = in_use + 1
  end
end

if admitted then
  -- A full TTL from now with this attempt's holder JSON, pinned when asked, and a window entry
  -- when one was asked for. For a grant too: the caller is alive, and this poll is how it takes
  -- the grant (no renewal confirms it), so the pin is written here, as for an admission.
  local expiry = now + ttl
  redis.call('ZADD', HOLDERS, expiry, lease_id)
  redis.call('HSET', INFO, lease_id, with_fields({acquired_at = acquired_at}, holder_json))
  keep_for(HOLDERS, ttl * 3)
  keep_for(INFO, ttl * 3)
  if pin_ms > 0 then
    redis.call('ZADD', PINS, now + pin_ms, lease_id)
    for _, key in ipairs({HOLDERS, INFO, PINS}) do keep_for(key, pin_ms + ttl) end
  end
  local orphans = redis.call('ZCARD', ORPHANS)
  local epoch = redis.call('HGET', META, 'epoch')
  local taken, wait_ms = 0, 0
  if WINDOW then
    local entry = take_from_window(WINDOW, window_limit, window_ms, window_request_id, now)
    taken, wait_ms = entry[1], entry[3]
  end
  return {1, 0, 0, in_use, limit, orphans, expiry, epoch, taken, wait_ms}
end

-- Not now: hint how long to sleep at most. A slot free but not ours means dead heads ahead.
local hint = retry_hint(now, queue_ttl, free > 0)

local orphans = redis.call('ZCARD', ORPHANS)
if not queue then
  return {0, 0, hint, in_use, limit, orphans, 0, '', 0, 0}
end
if not rank then
  local ticket = redis.call('HINCRBY', META, 'seq', 1)
  redis.call('ZADD', QUEUE, ticket, lease_id)
  rank = redis.call('ZCARD', QUEUE) - 1
end
-- Every attempt refreshes the record a grant is made from (lib/semaphore.lua).
redis.call('HSET', QINFO, lease_id, cjson.encode({
  replica = replica, since = since, ttl_ms = ttl, pin_ms = pin_ms, holder = holder_json}))
redis.call('ZADD', QEXP, now + queue_ttl, lease_id)
keep_for(QUEUE, queue_ttl * 3)
keep_for(QEXP, queue_ttl * 3)
keep_for(QINFO, queue_ttl * 3)
return {0, rank + 1, hint, in_use, limit, orphans, 0, '', 0, 0}
