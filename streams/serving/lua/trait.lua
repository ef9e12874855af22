-- Applies one trait change to a customer's hash <P>cust:<customer_id> (docs/serving.md).
-- KEYS[1] = <P>cust:<customer_id>
-- ARGV    = field ("trait:<name>", never a segment name), seq, value (JSON: a string or null)
-- The field value is "seq|value". A write applies only when its seq is newer than the
-- stored one, so repeated, replayed and out-of-order trait changes are no-ops; a null
-- value keeps its seq, so an older, late value can never come back.
-- Returns 1 when applied, 0 when ignored.
local stored = redis.call('HGET', KEYS[1], ARGV[1])
if stored then
  local stored_seq = tonumber(string.match(stored, '^(%d+)|'))
  if stored_seq and stored_seq >= tonumber(ARGV[2]) then
    return 0
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. '|' .. ARGV[3])
return 1
