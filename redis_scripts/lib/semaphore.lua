-- A semaphore's keys and the steps its scripts share: purge, free slots, grant on release.
-- Every semaphore script takes the nine keys of one semaphore, in this order
-- (SemaphoreKeys.all in service/coordination/keys.py; docs/redis-keys.md says what each holds):
local META = KEYS[1]     -- HASH limit, epoch, created_ms, grace_until, seq, node, ttl_ms
local HOLDERS = KEYS[2]  -- ZSET lease id -> expiry ms
local INFO = KEYS[3]     -- HASH lease id -> holder JSON (operators', adopters'; never decoded here)
local QUEUE = KEYS[4]    -- ZSET waiter id -> ticket (order of arrival)
local QEXP = KEYS[5]     -- ZSET waiter id -> queue entry expiry ms
local QINFO = KEYS[6]    -- HASH waiter id -> waiter record (below)
local STATS = KEYS[7]    -- HASH counters
local PINS = KEYS[8]     -- ZSET lease id -> ms after which its prediction cannot be running
local ORPHANS = KEYS[9]  -- ZSET lease id -> ms it was orphaned (purge, docs/slot-ownership.md)

-- A waiter record (QINFO) is a cjson object, written by acquire_slot: `replica`, `since` (who
-- waits, since when: for operators), `ttl_ms` (the lease TTL it asked for), `pin_ms` (the pin
-- it asked for; not read here any more, since a grant is pinned when its waiter confirms it,
-- see grant_heads, but kept for the grants of a replica still running an earlier version,
-- which require it) and `holder`, the holder JSON its lease will carry in INFO, as a string,
-- without `acquired_at` (a grant stamps it). Holder JSON is never decoded by a script:
-- a prediction's input in it may hold numbers that cjson would round.

-- The JSON object `object` (text) with the fields of the Lua table `head` (not empty, encoded by
-- cjson) in front of its own.
local function with_fields(head, object)
  local first = cjson.encode(head)
  if object == '{}' then return first end
  return string.sub(first, 1, -2) .. ',' .. string.sub(object, 2)
end

-- The identity of the node this script runs on (a semaphore's keys all live on one node): the
-- start of its run_id, new at every start of the process, and of its replication id, new at
-- every start and whenever a replica is promoted. '' when INFO is refused (an ACL user without
-- +info): then no node change is ever seen. docs/redis-ha.md, "Per-node loss detection".
local function node_tag()
  local server = redis.pcall('INFO', 'server')
  local replication = redis.pcall('INFO', 'replication')
  if type(server) ~= 'string' or type(replication) ~= 'string' then return '' end
  local run_id = string.match(server, 'run_id:(%x+)')
  local replid = string.match(replication, 'master_replid:(%x+)')
  if not run_id or not replid then return '' end
  return string.sub(run_id, 1, 8) .. string.sub(replid, 1, 8)
end

-- An epoch names the node it began on: "<ms>:<what>@<node tag>". A lease remembers the epoch it
-- was last confirmed in, so a renewal that finds the semaphore gone can tell a node that lost it
-- (the lease's node is another) from a delete (the same node).
local function epoch_on(now, what, node)
  return string.format('%d', now) .. ':' .. what .. '@' .. node
end

-- The lease TTL a script without one of its own uses for a grace: the longest any acquire or
-- renewal of this semaphore asked for (30 s, the default, before any did).
local function meta_ttl()
  return tonumber(redis.call('HGET', META, 'ttl_ms') or '30000')
end

local function note_ttl(ttl)
  if ttl > tonumber(redis.call('HGET', META, 'ttl_ms') or '0') then
    redis.call('HSET', META, 'ttl_ms', ttl)
  end
end

-- Whether this script call has compared the nodes yet (check_node runs at most once per call).
local node_checked = false

-- Call on an existing semaphore before anything is admitted, granted or re-asserted (free_slots
-- does, and renew_leases). If its meta was last checked on another node (this one restarted,
-- or is a replica a failover promoted), writes acknowledged there may be missing here: a
-- lease, a grant. The semaphore then gets a new epoch and a grace of one lease TTL from now,
-- in which nothing new is admitted while holders whose leases are missing re-assert them
-- (renew_leases). Returns this node's tag.
local function check_node(now, ttl)
  node_checked = true
  local node = node_tag()
  local recorded = redis.call('HGET', META, 'node')
  if recorded == node then return node end
  if recorded then  -- (none: a meta written before nodes were recorded; recorded from now on)
    local grace_until = math.max(tonumber(redis.call('HGET', META, 'grace_until') or '0'),
      now + ttl)
    redis.call('HSET', META, 'epoch', epoch_on(now, 'node', node), 'grace_until', grace_until)
    redis.call('HINCRBY', STATS, 'node_changed', 1)
  end
  redis.call('HSET', META, 'node', node)
  return node
end

local function drop_waiters(ids)
  redis.call('ZREM', QUEUE, unpack(ids))
  redis.call('ZREM', QEXP, unpack(ids))
  redis.call('HDEL', QINFO, unpack(ids))
end

-- Remove at most `batch` expired holders and expired waiters. Returns how many went.
-- A holder whose lease is pinned (its prediction may still run at Replicate until the pin) is
-- not freed: it becomes an orphan, still counted, its score raised to the pin, until a replica
-- adopts it (adopt_orphans.lua) and releases it once the prediction is terminal, or the pin
-- passes.
local function purge(now, batch)
  local gone = 0
  local expired = redis.call('ZRANGEBYSCORE', HOLDERS, '-inf', now, 'LIMIT', 0, batch)
  if #expired > 0 then
    local freed = {}
    for _, id in ipairs(expired) do
      local pin = tonumber(redis.call('ZSCORE', PINS, id) or '0')
      if pin > now then
        redis.call('ZADD', HOLDERS, pin, id)
        redis.call('ZADD', ORPHANS, 'NX', now, id)
        redis.call('HINCRBY', STATS, 'orphaned', 1)
        for _, key in ipairs({HOLDERS, INFO, PINS, ORPHANS}) do
          keep_for(key, pin - now + 1000)
        end
      else
        freed[#freed + 1] = id
      end
    end
    if #freed > 0 then
      redis.call('ZREM', HOLDERS, unpack(freed))
      redis.call('HDEL', INFO, unpack(freed))
      redis.call('ZREM', PINS, unpack(freed))
      redis.call('ZREM', ORPHANS, unpack(freed))
      redis.call('HINCRBY', STATS, 'expired', #freed)
      gone = gone + #freed
    end
  end
  local stale = redis.call('ZRANGEBYSCORE', QEXP, '-inf', now, 'LIMIT', 0, batch)
  if #stale > 0 then
    drop_waiters(stale)
    gone = gone + #stale
  end
  return gone
end

local function in_grace(now)
  return now < tonumber(redis.call('HGET', META, 'grace_until') or '0')
end

-- Free slots now: limit minus live holders, and none while a data-loss grace runs. Before it
-- calls a slot free, it makes sure the node did not change (check_node): a slot whose lease the
-- node forgot looks free. So the node is compared exactly when something could be given away;
-- a waiter's poll that finds nothing free, or a release nobody waits for, reads no INFO.
local function free_slots(now)
  local limit = tonumber(redis.call('HGET', META, 'limit'))
  if not limit or in_grace(now) then return 0 end
  local free = limit - redis.call('ZCARD', HOLDERS)
  if free > 0 and not node_checked then
    check_node(now, meta_ttl())
    if in_grace(now) then return 0 end
  end
  return free
end

-- How long (ms) a waiter, or its process's keeper, may wait before it calls again: queue_ttl / 3
-- (to keep its queue entry), sooner the nearest lease expiry or the end of a grace (neither sends
-- a message), and 1 when `slot_free` (a slot still free with waiters queued after grant_heads:
-- dead heads stopped it at its cap before it reached a live one, and each call drops a batch).
local function retry_hint(now, queue_ttl, slot_free)
  if slot_free then return 1 end
  local hint = math.floor(queue_ttl / 3)
  local nearest = redis.call('ZRANGE', HOLDERS, 0, 0, 'WITHSCORES')
  if #nearest == 2 then
    hint = math.min(hint, math.max(1, tonumber(nearest[2]) - now + 1))
  end
  local grace_until = tonumber(redis.call('HGET', META, 'grace_until') or '0')
  if now < grace_until then hint = math.min(hint, grace_until - now + 1) end
  return hint
end

-- A waiter's record, decoded; nil if it has none a grant can be made from.
local function waiter_record(id)
  local ok, record = pcall(cjson.decode, redis.call('HGET', QINFO, id) or '')
  if ok and type(record) == 'table' and type(record.ttl_ms) == 'number'
    and type(record.holder) == 'string' then
    return record
  end
  return nil
end

-- Grant on release: give the free slots straight to the queue heads, first come first served,
-- and tell their processes, so that a waiter gets its lease without asking again. The protocol,
-- with a worked timeline, is in service/coordination/semaphore.py.
--
-- A grant is a lease like any other (holders + info), expiring at the earlier of now + the
-- waiter's lease TTL and its queue entry's expiry. Its holder JSON is the one the waiter sent
-- with its last attempt, `acquired_at` set to now. Heads whose queue entry already expired, or
-- without a record, are dropped, never granted.
--
-- A grant is never pinned here, even for a waiter that asked for a pin: nothing can follow it
-- until its waiter confirms it (Semaphores._complete_grant: a renewal, and renew_leases pins it
-- then, for what the waiter's clock says is left of its pin), or learns of it by its own poll
-- (acquire_slot pins it then). A waiter whose process died never does: its grant guards no
-- work, and the purge frees it at its expiry like any unpinned lease, for the next head. (Pinned
-- here, it became an orphan, held until a replica adopted it and made sure no prediction ran:
-- docs/slot-ownership.md, "When a lease is pinned".)
--
-- One message per process: a lease id "<random>-<token>" is announced on "<channel>:<token>",
-- any other id on `channel` itself:
--   grant <now ms> <limit> <epoch> <id>:<expiry ms> [<id>:<expiry ms> ...]
-- `caller` (acquire_slot's own id, or nil) is granted like the others but not announced: it
-- learns from the script's reply. So do the waiters of the process whose token is `local_token`
-- (the releasing process, or ''): their message is returned instead of published. Returns how
-- many were granted, and the message kept for `local_token` ('' if none).
local function grant_heads(now, channel, caller, local_token)
  if redis.call('ZCARD', QUEUE) == 0 then return 0, '' end
  local free = free_slots(now)
  if free <= 0 then return 0, '' end
  local granted, dead = {}, {}
  local offset = 0
  while #granted < free and #dead < 256 do
    local ids = redis.call('ZRANGE', QUEUE, offset, offset + free - #granted - 1)
    if #ids == 0 then break end
    offset = offset + #ids
    for _, id in ipairs(ids) do
      local until_ms = tonumber(redis.call('ZSCORE', QEXP, id))
      local record = until_ms and until_ms > now and waiter_record(id)
      if record then
        granted[#granted + 1] = {id = id, until_ms = until_ms, record = record}
      else
        dead[#dead + 1] = id
      end
    end
  end
  if #dead > 0 then drop_waiters(dead) end
  if #granted == 0 then return 0, '' end

  local head = 'grant ' .. string.format('%d', now) .. ' ' .. redis.call('HGET', META, 'limit')
    .. ' ' .. (redis.call('HGET', META, 'epoch') or '-')
  local stamp = {acquired_at = now / 1000}
  local ids, longest = {}, 0
  local messages, order = {}, {}
  for _, grant in ipairs(granted) do
    local id, ttl = grant.id, grant.record.ttl_ms
    local expiry = math.min(now + ttl, grant.until_ms)
    redis.call('ZADD', HOLDERS, expiry, id)
    redis.call('HSET', INFO, id, with_fields(stamp, grant.record.holder))
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
  drop_waiters(ids)
  redis.call('HINCRBY', STATS, 'acquired', #ids)
  keep_for(HOLDERS, longest * 3)
  keep_for(INFO, longest * 3)
  local meta_ttl = redis.call('PTTL', META)
  if meta_ttl > 0 then keep_for(STATS, meta_ttl) end
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
  return #ids, kept
end
