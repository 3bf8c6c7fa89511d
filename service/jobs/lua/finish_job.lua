-- finish_job.lua: the job's end (succeeded, failed or canceled), by its current runner.
-- KEYS[1] job hash, KEYS[2] tasks hash, KEYS[3] events stream   (one hash tag: {job:<id>})
-- ARGV[1] epoch, ARGV[2] status, ARGV[3] error ('' = none), ARGV[4] retention ms,
-- ARGV[5] events max length
-- Returns completed_ms (Redis time), or 0 when refused (not the current runner).
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1] then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], 'status', ARGV[2], 'completed_ms', now)
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'error', ARGV[3]) end
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[5], '*', 'type', 'job',
  'data', cjson.encode({type = 'job', status = ARGV[2], at_ms = now, final = true}))
for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ARGV[4]) end
return now
