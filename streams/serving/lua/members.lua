-- Applies one segment change to a segment's member shard (SPEC section 5).
-- KEYS[1] = <P>segm:{<segment>:<shard>}   set of member customer ids
-- KEYS[2] = <P>segq:{<segment>:<shard>}   hash customer id -> last applied seq
-- ARGV    = customer_id, seq, member ("1"|"0")
-- Both keys share one hash tag, so this works on Redis Cluster. The seq of an exit stays in
-- segq, so a late, older "entered" is ignored. Returns 1 when applied, 0 when ignored.
local stored = tonumber(redis.call('HGET', KEYS[2], ARGV[1]))
if stored and stored >= tonumber(ARGV[2]) then
  return 0
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
if ARGV[3] == '1' then
  redis.call('SADD', KEYS[1], ARGV[1])
else
  redis.call('SREM', KEYS[1], ARGV[1])
end
return 1
