-- uses: common
-- Note the nodes a process talks to, and say for each how long it may still be missing leases
-- that it lost. A semaphore that exists notices a node change itself (check_node in
-- lib/semaphore.lua); this is for one that is gone: created again on a node that lost it
-- (restarted empty, or a replica promoted without it), it must wait out that node's youth
-- while the holders it forgot re-assert their leases. docs/redis-ha.md, "Per-node loss
-- detection".
--
-- A node is known by its tag (node_tag in lib/semaphore.lua: new at every restart and every
-- promotion). The first time any process notes a tag, the tag is written with the moment it
-- was first seen; it is young until one lease TTL after that, or after the node started if
-- the whole store is new (below). A tag trusted by an operator is never young.
--
-- KEYS:
local EPOCH = KEYS[1]  -- <prefix>:epoch (string: a random token; the operator's 'new' on a
                       -- brand-new deployment)
local NODES = KEYS[2]  -- {<prefix>:epoch}:nodes (hash: node tag -> first seen, server ms; 0 for
                       -- a node trusted from the start). The same slot as EPOCH.
-- ARGV:
local token = ARGV[1]          -- a random token, the new epoch if it is missing or 'new'
local ttl = tonumber(ARGV[2])  -- lease TTL, ms
local FIRST_NODE = 3           -- ARGV[3..]: pairs of node tag, the node's uptime (ms)
-- Returns: {epoch, created, young_ms...}: the epoch, as it is after this call; created 1 if
--          this call set a missing one (the store, or the node that holds EPOCH, is new);
--          then for each node given, in order, how long (ms) it is still young (0: not).
--
-- Which nodes are trusted, the first time a deployment is noted (NODES empty):
--   EPOCH is 'new' (the operator's word that nothing can hold a lease yet): all of them;
--   EPOCH exists: all of them (an intact store, first seen by this version);
--   EPOCH missing: none; each is young until one TTL after it started (its uptime), as a
--     Redis that restarted empty under live holders would be.
-- Later, a tag not yet in NODES is a node that restarted or was promoted since: young for one
-- TTL from now (it may have changed at any moment since the last process noted its nodes,
-- which they do every TTL/3: a grace from now is never shorter than one from the change).
local now = now_ms()
local epoch = redis.call('GET', EPOCH)
local created, trusted = 0, false
if not epoch or epoch == 'new' then
  trusted = epoch == 'new'
  if not epoch then created = 1 end
  epoch = token
  redis.call('SET', EPOCH, epoch)
  redis.call('DEL', NODES)
end
local first_time = redis.call('EXISTS', NODES) == 0

local result = {epoch, created}
for i = FIRST_NODE, #ARGV, 2 do
  local tag, uptime = ARGV[i], tonumber(ARGV[i + 1])
  local first = tonumber(redis.call('HGET', NODES, tag) or '-1')
  if first < 0 then
    if not first_time then
      first = now
    elseif trusted or created == 0 then
      first = 0
    else
      first = math.max(1, now - uptime)
    end
    redis.call('HSET', NODES, tag, first)
  end
  local young = 0
  if first > 0 then young = math.max(0, first + ttl - now) end
  result[#result + 1] = young
end
return result
