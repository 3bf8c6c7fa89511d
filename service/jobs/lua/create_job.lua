-- create_job.lua: write a new job (queued), its tasks (pending) and its first event.
-- KEYS[1] job hash, KEYS[2] tasks hash, KEYS[3] events stream   (one hash tag: {job:<id>})
-- ARGV[1] retention ms (TTL of every key), ARGV[2] events max length,
-- ARGV[3] task count, ARGV[4] initial task JSON,
-- ARGV[5..] job fields as name, value pairs
-- Returns created_ms (Redis time), or 0 if the job already exists.
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local fields = {'status', 'queued', 'created_ms', now, 'epoch', 0}
for i = 5, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(fields))
local count = tonumber(ARGV[3])
local batch = {}
for i = 0, count - 1 do
  batch[#batch + 1] = i
  batch[#batch + 1] = ARGV[4]
  if #batch >= 1000 then
    redis.call('HSET', KEYS[2], unpack(batch))
    batch = {}
  end
end
if #batch > 0 then redis.call('HSET', KEYS[2], unpack(batch)) end
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[2], '*', 'type', 'job',
  'data', cjson.encode({type = 'job', status = 'queued', at_ms = now}))
for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ARGV[1]) end
return now
