-- uses: common
-- Take one request from an exact sliding window: at most `limit` in any `window` span.
-- A log of admitted requests in a sorted set (member: request id, score: admission ms); see
-- take_from_window in lib/common.lua.
--
-- KEYS[1] log (ZSET request id -> admitted at, ms)
-- ARGV[1] limit (>= 1), ARGV[2] window (ms), ARGV[3] request id (unique)
-- Returns: {1, remaining, 0} admitted; {0, 0, wait_ms} full: the exact wait until a slot frees
return take_from_window(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], now_ms())
