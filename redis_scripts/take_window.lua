-- uses: common
-- Take one request from an exact sliding window: at most `limit` in any `window` span
-- (take_from_window in lib/common.lua).
--
-- KEYS:
local LOG = KEYS[1]                -- ZSET request id -> admitted at, ms
-- ARGV:
local limit = tonumber(ARGV[1])    -- >= 1
local window = tonumber(ARGV[2])   -- ms
local request_id = ARGV[3]         -- unique; a retry with the same id is admitted once
-- Returns: {1, remaining, 0} admitted; {0, 0, wait_ms} full: the exact wait until a slot frees
return take_from_window(LOG, limit, window, request_id, now_ms())
