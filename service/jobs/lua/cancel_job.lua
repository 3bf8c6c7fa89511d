-- cancel_job.lua: ask for a job's cancellation. A queued job ends canceled at once; a running
-- one is marked, and its runner cancels its tasks and ends it.
-- KEYS[1] job hash, KEYS[2] tasks hash, KEYS[3] events stream   (one hash tag: {job:<id>})
-- ARGV[1] retention ms, ARGV[2] events max length
-- Returns {0} gone; {1, status} already finished; {2, status after} accepted.
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {0} end
if status ~= 'queued' and status ~= 'running' then return {1, status} end
redis.call('HSET', KEYS[1], 'cancel', '1')
if status == 'queued' then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('HSET', KEYS[1], 'status', 'canceled', 'completed_ms', now)
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[2], '*', 'type', 'job',
    'data', cjson.encode({type = 'job', status = 'canceled', at_ms = now, final = true}))
  status = 'canceled'
end
for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ARGV[1]) end
return {2, status}
