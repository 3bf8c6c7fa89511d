-- uses: common semaphore
-- Renew every lease one replica holds on one semaphore, in one call.
-- A lease that expired is lost: it is removed and reported, never silently re-added. The one
-- exception is a node that lost data (restarted, or a replica promoted without the last
-- writes: check_node): the semaphore gets a new epoch and a grace period, or comes back with
-- them if it is gone, and a holder whose lease belongs to an older epoch re-asserts it.
-- A lease renewed with a pin left that has none yet is pinned now (NX: an existing pin never
-- moves): a slot granted by a release is pinned when its waiter confirms it with this renewal
-- (Semaphores._complete_grant), not at the grant (grant_heads in lib/semaphore.lua).
--
-- KEYS: the semaphore's nine keys (lib/semaphore.lua)
-- ARGV:
local ttl = tonumber(ARGV[1])             -- lease TTL, ms
local recreate_limit = tonumber(ARGV[2])  -- limit to re-create the semaphore with if its data
                                          -- is gone (0: never re-create)
local grace = tonumber(ARGV[3])           -- ms of grace when re-creating
local keys_ttl = tonumber(ARGV[4])        -- TTL (ms) of the semaphore's keys; 0 keeps them
local recreate_always = ARGV[5] == '1'    -- '1': re-create a missing semaphore (the caller
                                          -- suspects a loss); '0': only if a lease's epoch began
                                          -- on another node than this one (not a delete)
local FIRST_LEASE = 6                     -- ARGV[6..]: quadruples of lease id, the epoch it was
                                          -- last confirmed in ('' never re-asserts it: its holder
                                          -- no longer trusts it), holder JSON and ms left of its
                                          -- pin by its holder's clock (0: none), to pin it if
                                          -- it is not pinned yet (a grant being confirmed) or
                                          -- to re-assert it
-- Returns: {expiry_ms, epoch, code_1, code_2, ...} with code 1 renewed, 2 re-asserted, and for a
--          lost lease why: 0 it expired before this renewal, 3 the semaphore was deleted,
--          4 it was no longer there (released by an operator, or expired and purged)
local now = now_ms()
local expiry = now + ttl

local limit = tonumber(redis.call('HGET', META, 'limit'))
if limit then
  check_node(now, ttl)
elseif recreate_limit > 0 then
  local node = node_tag()
  local moved = recreate_always
  for i = FIRST_LEASE + 1, #ARGV, 4 do
    local began_on = string.match(ARGV[i], '@(%x*)$')
    if began_on and began_on ~= node then moved = true end
  end
  if moved then
    redis.call('HSET', META, 'limit', recreate_limit, 'epoch', epoch_on(now, 'renew', node),
      'created_ms', now, 'grace_until', now + grace, 'node', node)
    limit = recreate_limit
  end
end
if limit then
  note_ttl(ttl)
  if keys_ttl > 0 then redis.call('PEXPIRE', META, keys_ttl) end
end
local epoch = redis.call('HGET', META, 'epoch') or ''
local grace_until = tonumber(redis.call('HGET', META, 'grace_until') or '0')

local result = {expiry, epoch}
for i = FIRST_LEASE, #ARGV, 4 do
  local id, acquired_epoch, holder_json = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local pin_left = tonumber(ARGV[i + 3])
  local score = redis.call('ZSCORE', HOLDERS, id)
  local code = 0
  -- Expired but pinned (an orphan, or about to become one) is still this holder's: its slot
  -- was never freed, so its holder, back in time, simply renews it.
  local alive = score and (tonumber(score) > now
    or tonumber(redis.call('ZSCORE', PINS, id) or '0') > now)
  if limit and alive then
    redis.call('ZADD', HOLDERS, 'XX', expiry, id)
    redis.call('ZREM', ORPHANS, id)
    -- Pinned already (admitted by acquire_slot, confirmed before, adopted): one ZADD NX that
    -- adds nothing. Else a grant its waiter confirms now: pinned for what its waiter's clock
    -- says is left, counted from when it learned of the grant; its keys outlive the pin.
    if pin_left > 0 and redis.call('ZADD', PINS, 'NX', now + pin_left, id) == 1 then
      for _, key in ipairs({HOLDERS, INFO, PINS}) do keep_for(key, pin_left + ttl) end
    end
    code = 1
  elseif limit and not score and acquired_epoch ~= epoch and acquired_epoch ~= ''
    and now < grace_until then
    redis.call('ZADD', HOLDERS, expiry, id)
    redis.call('HSET', INFO, id, holder_json)
    -- The pin went with the lost data; its holder knows how long its work may still run.
    if pin_left > 0 then
      redis.call('ZADD', PINS, now + pin_left, id)
      for _, key in ipairs({HOLDERS, INFO, PINS}) do keep_for(key, pin_left + ttl) end
    end
    redis.call('HINCRBY', STATS, 'reasserted', 1)
    code = 2
  else
    if not limit then
      code = 3
    elseif not score then
      code = 4
    end
    if score then
      redis.call('ZREM', HOLDERS, id)
      redis.call('HDEL', INFO, id)
      redis.call('ZREM', PINS, id)
      redis.call('ZREM', ORPHANS, id)
    end
    if limit then redis.call('HINCRBY', STATS, 'lost', 1) end
  end
  result[#result + 1] = code
end
if limit then
  keep_for(HOLDERS, ttl * 3)
  keep_for(INFO, ttl * 3)
end
return result
