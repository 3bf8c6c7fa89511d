-- Shared helpers, prepended by service/coordination/scripts.py to the scripts that declare
-- `-- uses: common`. Semaphore scripts take their keys in this fixed order:
--   KEYS[1] meta (HASH limit, epoch, grace_until, created_ms, seq)
--   KEYS[2] holders (ZSET lease id -> expiry ms)     KEYS[3] info (HASH lease id -> holder JSON)
--   KEYS[4] queue (ZSET waiter id -> ticket)         KEYS[5] qexp (ZSET waiter id -> expiry ms)
--   KEYS[6] qinfo (HASH waiter id -> waiter record)  KEYS[7] stats (HASH counters)
--   KEYS[8] pins (ZSET lease id -> ms after which its prediction cannot be running any more)
--   KEYS[9] orphans (ZSET lease id -> ms it was orphaned; see purge, docs/slot-ownership.md)
-- A waiter record (written by acquire_slot) is the waiter JSON with the lease TTL and pin
-- first and the holder JSON last:
--   {"ttl_ms":30000,"pin_ms":930000,"replica":"...","since":...,"holder":{...}}.
-- All time comes from the Redis server, never from a client.

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function drop_waiters(ids)
  redis.call('ZREM', KEYS[4], unpack(ids))
  redis.call('ZREM', KEYS[5], unpack(ids))
  redis.call('HDEL', KEYS[6], unpack(ids))
end

-- Raise (never lower) a key's TTL to at least `ttl_ms`.
local function keep_for(key, ttl_ms)
  local pttl = redis.call('PTTL', key)
  if pttl >= 0 and pttl < ttl_ms then
    redis.call('PEXPIRE', key, ttl_ms)
  elseif pttl == -1 then
    redis.call('PEXPIRE', key, ttl_ms)
  end
end

-- Remove at most `batch` expired holders and expired waiters. Returns how many went.
-- A holder whose lease is pinned (its prediction may still run at Replicate until the pin) is
-- not freed: it becomes an orphan, still counted, its score raised to the pin, until a replica
-- adopts it (adopt_orphans.lua) and releases it once the prediction is terminal, or the pin
-- passes.
local function purge(now, batch)
  local gone = 0
  local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, batch)
  if #expired > 0 then
    local freed = {}
    for _, id in ipairs(expired) do
      local pin = tonumber(redis.call('ZSCORE', KEYS[8], id) or '0')
      if pin > now then
        redis.call('ZADD', KEYS[2], pin, id)
        redis.call('ZADD', KEYS[9], 'NX', now, id)
        redis.call('HINCRBY', KEYS[7], 'orphaned', 1)
        for _, key in ipairs({KEYS[2], KEYS[3], KEYS[8], KEYS[9]}) do
          keep_for(key, pin - now + 1000)
        end
      else
        freed[#freed + 1] = id
      end
    end
    if #freed > 0 then
      redis.call('ZREM', KEYS[2], unpack(freed))
      redis.call('HDEL', KEYS[3], unpack(freed))
      redis.call('ZREM', KEYS[8], unpack(freed))
      redis.call('ZREM', KEYS[9], unpack(freed))
      redis.call('HINCRBY', KEYS[7], 'expired', #freed)
      gone = gone + #freed
    end
  end
  local stale = redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', now, 'LIMIT', 0, batch)
  if #stale > 0 then
    drop_waiters(stale)
    gone = gone + #stale
  end
  return gone
end

-- Free slots now: limit minus live holders, and none while a post-restart grace runs.
local function free_slots(now)
  local limit = tonumber(redis.call('HGET', KEYS[1], 'limit'))
  if not limit then return 0 end
  local grace_until = tonumber(redis.call('HGET', KEYS[1], 'grace_until') or '0')
  if now < grace_until then return 0 end
  return limit - redis.call('ZCARD', KEYS[2])
end

-- Grant on release: give the free slots straight to the queue heads, first come first served,
-- and tell their processes, so that a waiter gets its lease without asking again.
--
-- A grant is a lease like any other (holders + info), expiring at the earlier of now + the
-- waiter's lease TTL and its queue entry's expiry: a grant to a waiter whose process died lapses
-- no later than its queue entry would have (the grantee, alive, renews it to a full TTL at once).
-- Its holder JSON is the one the waiter sent with its last attempt, `acquired_at` set to now.
-- Heads whose queue entry already expired are dropped, never granted.
--
-- One message per process: a lease id "<random>-<token>" is announced on "<channel>:<token>",
-- any other id on `channel` itself:
--   grant <now ms> <limit> <epoch> <id>:<expiry ms> [<id>:<expiry ms> ...]
-- `caller` (acquire_slot's own id, or nil) is granted like the others but not announced: it
-- learns from the script's reply. So do the waiters of the process whose token is `local_token`
-- (the releasing process, or nil): their grant message is returned instead of published, and
-- that process hands it to its waiters straight from the reply, one hop sooner. A head whose
-- record has no "ttl_ms" was queued by an older version of these scripts (a rolling upgrade),
-- whose process expects a wake-up: its slot stays free for it and its id is published on
-- `channel`, as before grants. Returns how many were granted, the free slots left (free_slots
-- after the grants), and the message kept for `local_token` ('' if none).
local function grant_heads(now, channel, caller, local_token)
  local free = free_slots(now)
  if free <= 0 then return 0, free, '' end
  local granted, dead = {}, {}
  local offset = 0
  while #granted < free and #dead < 256 do
    local ids = redis.call('ZRANGE', KEYS[4], offset, offset + free - #granted - 1)
    if #ids == 0 then break end
    offset = offset + #ids
    for _, id in ipairs(ids) do
      local until_ms = tonumber(redis.call('ZSCORE', KEYS[5], id))
      if until_ms and until_ms > now then
        granted[#granted + 1] = {id, until_ms}
      else
        dead[#dead + 1] = id
      end
    end
  end
  if #dead > 0 then drop_waiters(dead) end
  if #granted == 0 then return 0, free, '' end

  local epoch = redis.call('HGET', KEYS[1], 'epoch') or '-'
  local head = 'grant ' .. string.format('%d', now) .. ' ' .. redis.call('HGET', KEYS[1], 'limit')
    .. ' ' .. epoch
  local stamp = '"acquired_at":' .. string.format('%.3f', now / 1000)
  local ids, woken, longest = {}, {}, 0
  local messages, order = {}, {}
  for _, entry in ipairs(granted) do
    local id, until_ms = entry[1], entry[2]
    local record = redis.call('HGET', KEYS[6], id) or '{}'
    local ttl = tonumber(string.match(record, '^{"ttl_ms":(%d+),'))
    local holder = string.match(record, ',"holder":(.*)}$')
    if not (ttl and holder) then
      woken[#woken + 1] = id
    else
      local expiry = math.min(now + ttl, until_ms)
      holder = (string.gsub(holder, '"acquired_at":[%d%.eE+%-]+', stamp, 1))
      redis.call('ZADD', KEYS[2], expiry, id)
      redis.call('HSET', KEYS[3], id, holder)
      local pin_ms = tonumber(string.match(record, '^{"ttl_ms":%d+,"pin_ms":(%d+),') or '0')
      if pin_ms > 0 then
        redis.call('ZADD', KEYS[8], now + pin_ms, id)
        longest = math.max(longest, pin_ms)
        keep_for(KEYS[8], pin_ms + ttl)
      end
      ids[#ids + 1] = id
      longest = math.max(longest, ttl)
      if id ~= caller then
        local token = string.match(id, '%-(%w+)$') or ''
        if not messages[token] then
          messages[token] = {head}
          order[#order + 1] = token
        end
        local parts = messages[token]
        parts[#parts + 1] = id .. ':' .. string.format('%d', expiry)
      end
    end
  end
  if #woken > 0 then redis.call('PUBLISH', channel, table.concat(woken, ' ')) end
  if #ids == 0 then return 0, free, '' end
  drop_waiters(ids)
  redis.call('HINCRBY', KEYS[7], 'acquired', #ids)
  keep_for(KEYS[2], longest * 3)
  keep_for(KEYS[3], longest * 3)
  local meta_ttl = redis.call('PTTL', KEYS[1])
  if meta_ttl > 0 then keep_for(KEYS[7], meta_ttl) end
  local kept = ''
  for _, token in ipairs(order) do
    if token ~= '' and token == local_token then
      kept = table.concat(messages[token], ' ')
    else
      local target = channel
      if token ~= '' then target = channel .. ':' .. token end
      redis.call('PUBLISH', target, table.concat(messages[token], ' '))
    end
  end
  return #ids, free - #ids, kept
end

-- Take one entry of an exact sliding-window log (ZSET request id -> admitted at, ms): at most
-- `limit` in any `window` ms. Rejected attempts write nothing; a request id already in the log is
-- admitted again without a second entry. Cost: O(log n) plus the entries
-- that left the window, each removed once, so the amortized cost does not grow with the limit.
-- Returns {1, remaining, 0} admitted, or {0, 0, wait_ms}: the exact wait until an entry frees.
local function take_from_window(key, limit, window, request_id, now)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  local used = redis.call('ZCARD', key)
  -- A retried call (its first reply lost) finds its own entry: admitted once, not twice.
  if redis.call('ZSCORE', key, request_id) then return {1, limit - used, 0} end
  if used < limit then
    redis.call('ZADD', key, now, request_id)
    redis.call('PEXPIRE', key, window + 1000)
    return {1, limit - used - 1, 0}
  end
  -- The entry whose departure brings the count below the limit.
  local entry = redis.call('ZRANGE', key, used - limit, used - limit, 'WITHSCORES')
  return {0, 0, tonumber(entry[2]) + window - now + 1}
end
