-- uses: common
-- Adopt orphans: pinned leases whose holder stopped renewing while their prediction may still
-- run (see purge in lib/common.lua and docs/slot-ownership.md). Each claimed orphan's lease id is
-- replaced, atomically, by one of the adopter's: same slot, same pin, a full lease TTL, renewed
-- from now on by the adopter like its own. The old id is gone, so its first holder, if it comes
-- back, finds its lease lost. The slot stays taken throughout: adoption never frees anything.
--
-- KEYS: meta, holders, info, queue, qexp, qinfo, stats, pins, orphans (see lib/common.lua)
-- ARGV[1] lease TTL (ms)
-- ARGV[2] the adopter's replica id (shown to operators)
-- ARGV[3..] new lease ids, one per orphan to claim at most
-- Returns: {now_ms, epoch, limit, claimed...} where each claimed orphan is five items:
--          new lease id, old lease id, its record (holder JSON as its holder wrote it),
--          pin (ms), orphaned at (ms)
local ttl = tonumber(ARGV[1])
local now = now_ms()
local limit = redis.call('HGET', KEYS[1], 'limit')
if not limit then return {now, '', 0} end
purge(now, 64)
local epoch = redis.call('HGET', KEYS[1], 'epoch') or ''
local result = {now, epoch, tonumber(limit)}
local wanted = #ARGV - 2
if wanted < 1 then return result end

local orphans = redis.call('ZRANGE', KEYS[9], 0, wanted - 1, 'WITHSCORES')
local claimed = 0
for i = 1, #orphans, 2 do
  local old, orphaned_at = orphans[i], orphans[i + 1]
  redis.call('ZREM', KEYS[9], old)
  local pin = tonumber(redis.call('ZSCORE', KEYS[8], old) or '0')
  if pin > now and redis.call('ZSCORE', KEYS[2], old) then
    claimed = claimed + 1
    local new = ARGV[2 + claimed]
    local record = redis.call('HGET', KEYS[3], old) or '{}'
    redis.call('ZREM', KEYS[2], old)
    redis.call('HDEL', KEYS[3], old)
    redis.call('ZREM', KEYS[8], old)
    redis.call('ZADD', KEYS[2], now + ttl, new)
    redis.call('ZADD', KEYS[8], pin, new)
    -- The record as its holder wrote it, with the adoption in front for operators' eyes.
    local adopted = '{"adopted_by":' .. cjson.encode(ARGV[2]) .. ',"adopted_from":'
      .. cjson.encode(old) .. ',"orphaned_at":' .. string.format('%.3f', orphaned_at / 1000)
    if record ~= '{}' then adopted = adopted .. ',' .. string.sub(record, 2) else
      adopted = adopted .. '}' end
    redis.call('HSET', KEYS[3], new, adopted)
    redis.call('HINCRBY', KEYS[7], 'adopted', 1)
    -- The keys may have just been emptied and re-created without a TTL: they must outlive the
    -- pin, or the slot would vanish with them while the prediction may run.
    for _, key in ipairs({KEYS[2], KEYS[3], KEYS[8]}) do keep_for(key, pin - now + ttl) end
    result[#result + 1] = new
    result[#result + 1] = old
    result[#result + 1] = record
    result[#result + 1] = pin
    result[#result + 1] = tonumber(orphaned_at)
  end
end
if claimed > 0 then
  keep_for(KEYS[2], ttl * 3)
  keep_for(KEYS[3], ttl * 3)
end
return result
