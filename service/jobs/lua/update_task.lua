-- update_task.lua: one task's new state and its event, written only by the job's current
-- runner (fence: the epoch it got from take_job).
-- KEYS[1] job hash, KEYS[2] tasks hash, KEYS[3] events stream   (one hash tag: {job:<id>})
-- ARGV[1] epoch, ARGV[2] task index, ARGV[3] task state JSON, ARGV[4] event JSON ('' = none),
-- ARGV[5] retention ms, ARGV[6] events max length
-- Returns 1 written, 0 refused (another runner took the job over, or it is gone).
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
if ARGV[4] ~= '' then
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[6], '*', 'type', 'task', 'data', ARGV[4])
end
for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ARGV[5]) end
return 1
