-- Replace a live lease's holder JSON (e.g. to add the prediction id once it is known).
--
-- KEYS[1] holders, KEYS[2] info
-- ARGV[1] lease id, ARGV[2] holder JSON
-- Returns: 1 updated, 0 the lease is not held
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
  return 1
end
return 0
