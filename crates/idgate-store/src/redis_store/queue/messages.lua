-- ARGV: [2] after (an id, '0' for the start), [3] limit. The records of up to `limit`
-- messages after `after`, in id order, in every state: the stream holds each message that
-- is not acked, dead letters included.
local out = {}
if redis.call('EXISTS', S) == 0 then
  return out
end
local from = ARGV[2] == '0' and '-' or '(' .. sid(ARGV[2])
for _, e in ipairs(redis.call('XRANGE', S, from, '+', 'COUNT', ARGV[3])) do
  local r = record(string.sub(e[1], 1, -3))
  if r then
    table.insert(out, r)
  end
end
return out
