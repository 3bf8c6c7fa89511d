-- uses: common semaphore
-- Adopt orphans: pinned leases whose holder stopped renewing while their prediction may still
-- run (see purge in lib/semaphore.lua and docs/slot-ownership.md). Each claimed orphan's lease
-- id is replaced, atomically, by one of the adopter's: same slot, same pin, a full lease TTL,
-- renewed from now on by the adopter like its own. The old id is gone, so its first holder, if it
-- comes back, finds its lease lost. The slot stays taken throughout: adoption never frees anything.
--
-- KEYS: the semaphore's nine keys (lib/semaphore.lua)
-- ARGV:
local ttl = tonumber(ARGV[1])  -- lease TTL, ms
local adopter = ARGV[2]        -- the adopter's replica id (shown to operators)
local FIRST_NEW_ID = 3         -- ARGV[3..]: new lease ids, one per orphan to claim at most
-- Returns: {now_ms, epoch, limit, claimed...} where each claimed orphan is five items:
--          new lease id, old lease id, its record (holder JSON as its holder wrote it),
--          pin (ms), orphaned at (ms); limit 0: no such semaphore
local now = now_ms()
local limit = redis.call('HGET', META, 'limit')
if not limit then return {now, '', 0} end
purge(now, 64)
local epoch = redis.call('HGET', META, 'epoch') or ''
local result = {now, epoch, tonumber(limit)}
local wanted = #ARGV - FIRST_NEW_ID + 1
if wanted < 1 then return result end

local orphans = redis.call('ZRANGE', ORPHANS, 0, wanted - 1, 'WITHSCORES')
local claimed = 0
for i = 1, #orphans, 2 do
  local old, orphaned_at = orphans[i], tonumber(orphans[i + 1])
  redis.call('ZREM', ORPHANS, old)
  local pin = tonumber(redis.call('ZSCORE', PINS, old) or '0')
  if pin > now and redis.call('ZSCORE', HOLDERS, old) then
    local new = ARGV[FIRST_NEW_ID + claimed]
    claimed = claimed + 1
    local record = redis.call('HGET', INFO, old) or '{}'
    redis.call('ZREM', HOLDERS, old)
    redis.call('HDEL', INFO, old)
    redis.call('ZREM', PINS, old)
    redis.call('ZADD', HOLDERS, now + ttl, new)
    redis.call('ZADD', PINS, pin, new)
    -- The record as its holder wrote it, with the adoption in front for operators' eyes.
    local adoption = {adopted_by = adopter, adopted_from = old, orphaned_at = orphaned_at / 1000}
    redis.call('HSET', INFO, new, with_fields(adoption, record))
    redis.call('HINCRBY', STATS, 'adopted', 1)
    -- The keys may have just been emptied and re-created without a TTL: they must outlive the
    -- pin, or the slot would vanish with them while the prediction may run.
    for _, key in ipairs({HOLDERS, INFO, PINS}) do keep_for(key, pin - now + ttl) end
    result[#result + 1] = new
    result[#result + 1] = old
    result[#result + 1] = record
    result[#result + 1] = pin
    result[#result + 1] = orphaned_at
  end
end
if claimed > 0 then
  keep_for(HOLDERS, ttl * 3)
  keep_for(INFO, ttl * 3)
end
return result
