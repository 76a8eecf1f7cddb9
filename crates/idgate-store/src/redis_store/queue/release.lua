-- ARGV: [2] id, [3] now. 1 when a message that waited for its time (pushed for later, or
-- nacked) is claimable at once; 0 when it was not waiting. A message the group has not
-- taken in yet is taken in first, with every older one, to wait as a claim would have it
-- wait; then its time is now (parked behind an older message of its key, it still waits
-- its turn).
local n, now = ARGV[2], ARGV[3]
if redis.call('EXISTS', S) == 0 then
  return 0
end
local f = entry(n)
if not f then
  return 0
end
if tonumber(n) > tonumber(last_taken()) then
  if tonumber(f.r) <= tonumber(now) then
    return 0
  end
  repeat
    local got = redis.call('XREADGROUP', 'GROUP', GROUP, WAITING, 'COUNT', 100, 'STREAMS', S, '>')
    if not got then
      break
    end
    for _, e in ipairs(got[1][2]) do
      local m, g = string.sub(e[1], 1, -3), fields(e[2])
      give(m, WAITING, 0)
      hold(m, g.k, g.r)
    end
  until tonumber(last_taken()) >= tonumber(n)
end
if pending(n) ~= WAITING then
  return 0
end
for _, set in ipairs({WAIT, PARKED}) do
  local at = redis.call('ZSCORE', set, n)
  if at then
    if tonumber(at) <= tonumber(now) then
      return 0
    end
    redis.call('ZADD', set, now, n)
    return 1
  end
end
return 0
