-- uses: common
-- Take a slot of a semaphore, or join (or stay in) its first-come-first-served queue.
--
-- KEYS: meta, holders, info, queue, qexp, qinfo, stats, pins, orphans (see lib/common.lua)
-- ARGV[1] lease id (random, "<random>-<process token>"; also the waiter id while queued)
-- ARGV[2] lease TTL (ms)
-- ARGV[3] holder JSON (replica, purpose, ...) shown to operators
-- ARGV[4] "1" to queue when no slot is free, "0" to try once
-- ARGV[5] queue entry TTL (ms): a waiter that stops re-running this script vanishes after it
-- ARGV[6] limit of a configured semaphore (created if missing, limit kept in step);
--         "0": a registered semaphore, which must exist
-- ARGV[7] grace (ms) to set when this call creates the semaphore (after a suspected data loss)
-- ARGV[8] TTL (ms) of the semaphore's keys; "0" keeps them (registered semaphores)
-- ARGV[9] wake channel (grants go to "<channel>:<token>", see grant_heads)
-- ARGV[10] waiter JSON object (replica, since)
-- ARGV[11] pin (ms): the lease guards a prediction that may run until now + pin at the latest;
--          expired unrenewed before then, it becomes an orphan instead of being freed ("0": none)
-- Optional, to take a rate-window entry together with the slot (an account's first create):
-- KEYS[10] window log (same hash tag); ARGV[12] window limit, ARGV[13] window (ms),
-- ARGV[14] request id (see take_from_window)
-- Returns:
--   {1, expiry_ms, epoch, in_use, limit, orphans}   acquired, or already held: granted to this
--                                                   waiter by a release whose message it
--                                                   missed (the lease is then extended to a
--                                                   full TTL); with KEYS[10], two more items:
--                                                   the window's admitted (1/0) and wait_ms
--   {0, position, retry_hint_ms, in_use, limit, orphans}
--                                                   queued at 1-based position (0: not queued)
--   {-1}                                            no such semaphore
-- `orphans`: how many orphaned leases wait for a replica to adopt them (adopt_orphans.lua).
local lease_id = ARGV[1]
local ttl = tonumber(ARGV[2])
local queue_ttl = tonumber(ARGV[5])
local keys_ttl = tonumber(ARGV[8])
local pin_ms = tonumber(ARGV[11])
local now = now_ms()

-- The acquired reply (the lease pinned when asked), with a window entry when one was asked for.
local function acquired(expiry, epoch, in_use, limit)
  if pin_ms > 0 then
    redis.call('ZADD', KEYS[8], now + pin_ms, lease_id)
    for _, key in ipairs({KEYS[2], KEYS[3], KEYS[8]}) do keep_for(key, pin_ms + ttl) end
  end
  local orphans = redis.call('ZCARD', KEYS[9])
  if not KEYS[10] then return {1, expiry, epoch, in_use, limit, orphans} end
  local w = take_from_window(KEYS[10], tonumber(ARGV[12]), tonumber(ARGV[13]), ARGV[14], now)
  return {1, expiry, epoch, in_use, limit, orphans, w[1], w[3]}
end

local limit = tonumber(redis.call('HGET', KEYS[1], 'limit'))
local create_limit = tonumber(ARGV[6])
if limit and create_limit > 0 and limit ~= create_limit then
  -- Configured semaphores (accounts) follow the configuration of whoever acquires.
  limit = create_limit
  redis.call('HSET', KEYS[1], 'limit', limit)
elseif not limit then
  if create_limit <= 0 then return {-1} end
  limit = create_limit
  redis.call('HSET', KEYS[1], 'limit', limit, 'epoch', now .. ':' .. string.sub(lease_id, 1, 12),
    'created_ms', now, 'grace_until', now + tonumber(ARGV[7]))
end
if keys_ttl > 0 then redis.call('PEXPIRE', KEYS[1], keys_ttl) end
local epoch = redis.call('HGET', KEYS[1], 'epoch')

-- Slots freed by expiry (or a raised limit) go to the queue heads first, this caller included
-- if it is one of them.
purge(now, 64)
local _, free = grant_heads(now, ARGV[9], lease_id)

local held = redis.call('ZSCORE', KEYS[2], lease_id)
local in_use = redis.call('ZCARD', KEYS[2])
if held and tonumber(held) > now then
  -- Granted: the caller is alive, so its lease runs a full TTL from now, with this attempt's
  -- holder JSON (a purge may have raised an unclaimed grant's score to its pin: back to a TTL).
  local expiry = now + ttl
  redis.call('ZADD', KEYS[2], expiry, lease_id)
  -- Its holder is alive and takes it now: not an orphan, whatever a purge made of it.
  redis.call('ZREM', KEYS[9], lease_id)
  redis.call('HSET', KEYS[3], lease_id, ARGV[3])
  keep_for(KEYS[2], ttl * 3)
  keep_for(KEYS[3], ttl * 3)
  return acquired(expiry, epoch, in_use, limit)
end

local rank = redis.call('ZRANK', KEYS[4], lease_id)
local eligible
if rank then
  eligible = rank < free
else
  eligible = redis.call('ZCARD', KEYS[4]) < free
end

if eligible then
  if rank then drop_waiters({lease_id}) end
  local expiry = now + ttl
  redis.call('ZADD', KEYS[2], expiry, lease_id)
  redis.call('HSET', KEYS[3], lease_id, ARGV[3])
  redis.call('HINCRBY', KEYS[7], 'acquired', 1)
  keep_for(KEYS[2], ttl * 3)
  keep_for(KEYS[3], ttl * 3)
  if keys_ttl > 0 then keep_for(KEYS[7], keys_ttl) end
  return acquired(expiry, epoch, in_use + 1, limit)
end

-- Not now: hint how long to sleep at most (the nearest lease expiry sends no message).
local hint = math.floor(queue_ttl / 3)
local nearest = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
if #nearest == 2 then
  hint = math.min(hint, math.max(1, tonumber(nearest[2]) - now + 1))
end
local grace_until = tonumber(redis.call('HGET', KEYS[1], 'grace_until') or '0')
if now < grace_until then hint = math.min(hint, grace_until - now + 1) end

local orphans = redis.call('ZCARD', KEYS[9])
if ARGV[4] ~= '1' then
  return {0, 0, hint, in_use, limit, orphans}
end
if not rank then
  local ticket = redis.call('HINCRBY', KEYS[1], 'seq', 1)
  redis.call('ZADD', KEYS[4], ticket, lease_id)
  rank = redis.call('ZCARD', KEYS[4]) - 1
end
-- Every attempt refreshes the record a grant is made from (lease TTL, waiter, holder JSON).
local fields = string.sub(ARGV[10], 2, -2)
if fields ~= '' then fields = fields .. ',' end
redis.call('HSET', KEYS[6], lease_id,
  '{"ttl_ms":' .. string.format('%d', ttl) .. ',"pin_ms":' .. string.format('%d', pin_ms) .. ','
  .. fields .. '"holder":' .. ARGV[3] .. '}')
redis.call('ZADD', KEYS[5], now + queue_ttl, lease_id)
keep_for(KEYS[4], queue_ttl * 3)
keep_for(KEYS[5], queue_ttl * 3)
keep_for(KEYS[6], queue_ttl * 3)
return {0, rank + 1, hint, in_use, limit, orphans}
