-- Applies one segment change to a customer's hash <P>cust:<customer_id> (SPEC section 5).
-- KEYS[1] = <P>cust:<customer_id>
-- ARGV    = segment, seq, member ("1"|"0"), since
-- The field value is "seq|member|since". A write applies only when its seq is newer than
-- the stored one, so repeated, replayed and out-of-order writes are no-ops; an exit keeps
-- its seq, so an older, late "entered" can never resurrect it.
-- Returns {1, previous value or false} when applied, {0, stored value} when ignored.
local stored = redis.call('HGET', KEYS[1], ARGV[1])
if stored then
  local stored_seq = tonumber(string.match(stored, '^(%d+)|'))
  if stored_seq and stored_seq >= tonumber(ARGV[2]) then
    return {0, stored}
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. '|' .. ARGV[3] .. '|' .. ARGV[4])
return {1, stored}
