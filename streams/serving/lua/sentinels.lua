#!lua flags=no-writes,allow-cross-slot-keys
-- Counts the cache's per-slot sentinels that exist among those of one Cluster node's
-- slots (RedisCache.is_complete): one call per primary instead of one EXISTS per slot.
-- ARGV = the sentinel keys of the slots this node serves. They are not declared as KEYS
-- (a Cluster refuses declared keys of several slots in one call); a key of a slot this
-- node does not serve (a stale slot map) fails the script, and the caller falls back to
-- one EXISTS per slot through redis-py, which follows MOVED.
local present = 0
for _, key in ipairs(ARGV) do
    present = present + redis.call('EXISTS', key)
end
return present
