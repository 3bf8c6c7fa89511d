-- take_job.lua: a runner takes a job over (first run, or after its runner died): the job's
-- fence epoch goes up by one, so every write of an earlier runner is refused from now on.
-- KEYS[1] job hash, KEYS[2] tasks hash, KEYS[3] events stream   (one hash tag: {job:<id>})
-- ARGV[1] runner (consumer name), ARGV[2] retention ms, ARGV[3] events max length
-- Returns {0} gone; {1, status} already finished; {2, status, epoch, cancel requested 0|1}.
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {0} end
if status ~= 'queued' and status ~= 'running' then return {1, status} end
local epoch = redis.call('HINCRBY', KEYS[1], 'epoch', 1)
redis.call('HSET', KEYS[1], 'runner', ARGV[1])
if status == 'queued' then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('HSET', KEYS[1], 'status', 'running', 'started_ms', now)
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*', 'type', 'job',
    'data', cjson.encode({type = 'job', status = 'running', at_ms = now}))
  status = 'running'
end
local cancel = redis.call('HGET', KEYS[1], 'cancel') == '1' and 1 or 0
for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ARGV[2]) end
return {2, status, epoch, cancel}
