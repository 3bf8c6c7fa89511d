-- Replace a live lease's holder JSON (e.g. to add the prediction id once it is known).
--
-- KEYS:
local HOLDERS, INFO = KEYS[1], KEYS[2]  -- the semaphore's holders and info (lib/semaphore.lua)
-- ARGV:
local lease_id, holder_json = ARGV[1], ARGV[2]
-- Returns: 1 updated, 0 the lease is not held
if redis.call('ZSCORE', HOLDERS, lease_id) then
  redis.call('HSET', INFO, lease_id, holder_json)
  return 1
end
return 0
