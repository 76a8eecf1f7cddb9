-- ARGV: [2] id. The message's record (see `record`) and its payload last; nil once acked.
if redis.call('EXISTS', S) == 0 then
  return nil
end
local r = record(ARGV[2])
if not r then
  return nil
end
table.insert(r, entry(ARGV[2]).p)
return r
