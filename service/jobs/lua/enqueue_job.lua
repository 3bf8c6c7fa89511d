-- enqueue_job.lua: the step that makes a new job exist for everyone: the Idempotency-Key's
-- decision, the job's queue entry and its line in the listing, in one atomic call. The job's
-- own keys were written just before (create_job.lua, another slot), unseen until this runs.
-- KEYS[1] queue stream, KEYS[2] listing zset, KEYS[3] idempotency key (optional)
--   (one hash tag: {jobs})
-- ARGV[1] job id, ARGV[2] created ms (the listing's score), ARGV[3] listing trim (ms: members
-- scored at or below it are dropped), ARGV[4] "<job id> <body digest>" and ARGV[5] its TTL in
-- seconds (with KEYS[3])
-- Returns {1, entry id} queued; {0, "<job id> <body digest>"} the key's earlier job: nothing
-- written.
if KEYS[3] then
  local previous = redis.call('GET', KEYS[3])
  if previous then return {0, previous} end
  redis.call('SET', KEYS[3], ARGV[4], 'EX', ARGV[5])
end
local entry = redis.call('XADD', KEYS[1], '*', 'job', ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[3])
return {1, entry}
